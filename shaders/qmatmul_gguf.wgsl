// qmatmul_gguf.wgsl: matmuls with a frozen GGUF block weight W[n×k] read in place from its
// raw bytes (Q4_0: f16 d + 16 B nibbles = 18 B; Q4_1: f16 d, f16 m + 16 B = 20 B; Q8_0:
// f16 d + 32 × i8 = 34 B per block of 32 weights; nibble j holds weight j low and j + 16
// high). Blocks are not u32-aligned: every block starts on an even byte, so an f16 is one
// half of a word and a 32-bit run of codes is funnel-shifted out of two words.
//
//     forward         y[m×n]  = x[m×k] · Wᵀ
//     input gradient  dx[m×k] = dy[m×n] · W
//
// A weight value is s·code + z: Q4_0 (d, −8d), Q4_1 (d, m), Q8_0 (d, 0) with signed codes.
//
// CPU twins:    edge_llm::compress::quant::{gguf_matmul_nt, gguf_matmul_nn}
// Rust wrapper: src/kernels/qmatmul.rs (same bind group layout as shaders/qmatmul.wgsl).
//
// Bindings (group 0):
//   0  w       storage, read        the tensor's bytes, little-endian u32 words
//   1  unused  storage, read        (keeps one layout for both families)
//   2  x       storage, read        x (m·k f32) for *_nt, dy (m·n f32) for *_nn
//   3  y       storage, read_write  y (m·n f32) for *_nt, dx (m·k f32) for *_nn
//   4  params  uniform              Params (k is a multiple of 32)
//
// Variants (override constants): TYPE ∈ {2 = Q4_0, 3 = Q4_1, 8 = Q8_0} (ggml type ids),
// WG, SPLIT as in shaders/qmatmul.wgsl. Entry points and grids: gemv_nt, gemv_nn, tiled_nt,
// tiled_nn exactly as in shaders/qmatmul.wgsl.

override TYPE: u32 = 2u;
override WG: u32 = 64u;
override SPLIT: u32 = 1u;

const BLOCK: u32 = 32u;
const MAX_WG: u32 = 256u;

struct Params {
    m: u32,
    k: u32,
    n: u32,
    bpr: u32,
    _unused: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> unused: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> part: array<f32, MAX_WG>;
var<workgroup> a_tile: array<array<f32, 33>, 16>;
var<workgroup> b_tile: array<array<f32, 17>, 32>;

fn block_bytes() -> u32 {
    if (TYPE == 2u) {
        return 18u;
    }
    if (TYPE == 3u) {
        return 20u;
    }
    return 34u;
}

// Byte offset of block b of W's row `row`.
fn block_offset(row: u32, b: u32) -> u32 {
    return (row * p.bpr + b) * block_bytes();
}

// The f16 at even byte offset o.
fn half_at(o: u32) -> f32 {
    return unpack2x16float(w[o >> 2u] >> ((o & 2u) * 8u)).x;
}

// The 32 bits starting at even byte offset o.
fn word_at(o: u32) -> u32 {
    let i = o >> 2u;
    if ((o & 3u) == 0u) {
        return w[i];
    }
    return extractBits(w[i], 16u, 16u) | (extractBits(w[i + 1u], 0u, 16u) << 16u);
}

// (s, z) of the block at byte o.
fn block_head(o: u32) -> vec2<f32> {
    let d = half_at(o);
    if (TYPE == 2u) {
        return vec2<f32>(d, -8.0 * d);
    }
    if (TYPE == 3u) {
        return vec2<f32>(d, half_at(o + 2u));
    }
    return vec2<f32>(d, 0.0);
}

fn codes_offset(o: u32) -> u32 {
    return select(o + 2u, o + 4u, TYPE == 3u);
}

// Code of weight c (0..32) of a block whose codes start at byte q (signed for Q8_0).
fn code_at(q: u32, c: u32) -> f32 {
    if (TYPE == 8u) {
        let o = q + c;
        return f32(extractBits(bitcast<i32>(w[o >> 2u]), (o & 3u) * 8u, 8u));
    }
    let o = q + c % 16u;
    return f32(extractBits(w[o >> 2u], (o & 3u) * 8u + (c / 16u) * 4u, 4u));
}

fn weight_at(row: u32, b: u32, c: u32) -> f32 {
    let o = block_offset(row, b);
    let h = block_head(o);
    return fma(h.x, code_at(codes_offset(o), c), h.y);
}

// Σ_c x[xb + c] · W[row, b·32 + c].
fn block_dot(row: u32, b: u32, xb: u32) -> f32 {
    let o = block_offset(row, b);
    let h = block_head(o);
    let q = codes_offset(o);
    var acc = 0.0;
    if (TYPE == 8u) {
        for (var t = 0u; t < 8u; t++) {
            let word = bitcast<i32>(word_at(q + 4u * t));
            for (var e = 0u; e < 4u; e++) {
                let v = h.x * f32(extractBits(word, 8u * e, 8u));
                acc = fma(x[xb + 4u * t + e], v, acc);
            }
        }
        return acc;
    }
    for (var t = 0u; t < 4u; t++) {
        let word = word_at(q + 4u * t);
        for (var e = 0u; e < 4u; e++) {
            let lo = fma(h.x, f32(extractBits(word, 8u * e, 4u)), h.y);
            let hi = fma(h.x, f32(extractBits(word, 8u * e + 4u, 4u)), h.y);
            acc = fma(x[xb + 4u * t + e], lo, acc);
            acc = fma(x[xb + 16u + 4u * t + e], hi, acc);
        }
    }
    return acc;
}

@compute @workgroup_size(WG)
fn gemv_nt(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = wid.x + wid.y * nwg.x;
    let rows_per_wg = WG / SPLIT;
    let groups_per_x = (p.n + rows_per_wg - 1u) / rows_per_wg;
    let xr = g / groups_per_x;
    if (xr >= p.m) {
        return; // uniform
    }
    let row = (g % groups_per_x) * rows_per_wg + lid / SPLIT;
    let slice = lid % SPLIT;
    var acc = 0.0;
    if (row < p.n) {
        let xb = xr * p.k;
        for (var b = slice; b < p.bpr; b += SPLIT) {
            acc += block_dot(row, b, xb + b * BLOCK);
        }
    }
    if (SPLIT > 1u) {
        part[lid] = acc;
        workgroupBarrier();
        for (var s = SPLIT / 2u; s > 0u; s >>= 1u) {
            if (slice < s) {
                part[lid] += part[lid + s];
            }
            workgroupBarrier();
        }
        acc = part[lid];
    }
    if (slice == 0u && row < p.n) {
        y[xr * p.n + row] = acc;
    }
}

@compute @workgroup_size(WG)
fn gemv_nn(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = wid.x + wid.y * nwg.x;
    let groups_per_row = (p.bpr + WG - 1u) / WG;
    let r = g / groups_per_row;
    let b = (g % groups_per_row) * WG + lid;
    if (r >= p.m || b >= p.bpr) {
        return;
    }
    var acc: array<f32, 32>;
    var zacc = 0.0;
    for (var j = 0u; j < p.n; j++) {
        let a = x[r * p.n + j];
        let o = block_offset(j, b);
        let h = block_head(o);
        let q = codes_offset(o);
        let ds = a * h.x;
        zacc = fma(a, h.y, zacc);
        if (TYPE == 8u) {
            for (var t = 0u; t < 8u; t++) {
                let word = bitcast<i32>(word_at(q + 4u * t));
                for (var e = 0u; e < 4u; e++) {
                    acc[4u * t + e] = fma(ds, f32(extractBits(word, 8u * e, 8u)), acc[4u * t + e]);
                }
            }
        } else {
            for (var t = 0u; t < 4u; t++) {
                let word = word_at(q + 4u * t);
                for (var e = 0u; e < 4u; e++) {
                    let c = 4u * t + e;
                    acc[c] = fma(ds, f32(extractBits(word, 8u * e, 4u)), acc[c]);
                    acc[c + 16u] = fma(ds, f32(extractBits(word, 8u * e + 4u, 4u)), acc[c + 16u]);
                }
            }
        }
    }
    let kb = b * BLOCK;
    for (var c = 0u; c < BLOCK; c++) {
        y[r * p.k + kb + c] = acc[c] + zacc;
    }
}

@compute @workgroup_size(16, 16, 1)
fn tiled_nt(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    let tn = (p.n + 15u) / 16u;
    if (g >= tn * ((p.m + 15u) / 16u)) {
        return; // uniform
    }
    let row0 = (g / tn) * 16u;
    let col0 = (g % tn) * 16u;
    let li = lid.y * 16u + lid.x;
    var acc = 0.0;
    for (var b = 0u; b < p.bpr; b++) {
        let kb = b * BLOCK;
        for (var q = 0u; q < 2u; q++) {
            let e = li + q * 256u;
            let r = e / BLOCK;
            let c = e % BLOCK;
            var xv = 0.0;
            if (row0 + r < p.m) {
                xv = x[(row0 + r) * p.k + kb + c];
            }
            a_tile[r][c] = xv;
            var wv = 0.0;
            if (col0 + r < p.n) {
                wv = weight_at(col0 + r, b, c);
            }
            b_tile[c][r] = wv;
        }
        workgroupBarrier();
        for (var c = 0u; c < BLOCK; c++) {
            acc = fma(a_tile[lid.y][c], b_tile[c][lid.x], acc);
        }
        workgroupBarrier();
    }
    let row = row0 + lid.y;
    let col = col0 + lid.x;
    if (row < p.m && col < p.n) {
        y[row * p.n + col] = acc;
    }
}

@compute @workgroup_size(16, 16, 1)
fn tiled_nn(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.bpr * ((p.m + 15u) / 16u)) {
        return; // uniform
    }
    let row0 = (g / p.bpr) * 16u;
    let b = g % p.bpr;
    let kb = b * BLOCK;
    let li = lid.y * 16u + lid.x;
    var acc0 = 0.0;
    var acc1 = 0.0;
    for (var j0 = 0u; j0 < p.n; j0 += 16u) {
        var dv = 0.0;
        if (row0 + lid.y < p.m && j0 + lid.x < p.n) {
            dv = x[(row0 + lid.y) * p.n + j0 + lid.x];
        }
        b_tile[lid.y][lid.x] = dv;
        for (var q = 0u; q < 2u; q++) {
            let e = li + q * 256u;
            let j = e / BLOCK;
            let c = e % BLOCK;
            var wv = 0.0;
            if (j0 + j < p.n) {
                wv = weight_at(j0 + j, b, c);
            }
            a_tile[j][c] = wv;
        }
        workgroupBarrier();
        for (var j = 0u; j < 16u; j++) {
            let d = b_tile[lid.y][j];
            acc0 = fma(d, a_tile[j][lid.x], acc0);
            acc1 = fma(d, a_tile[j][lid.x + 16u], acc1);
        }
        workgroupBarrier();
    }
    let row = row0 + lid.y;
    if (row < p.m) {
        y[row * p.k + kb + lid.x] = acc0;
        y[row * p.k + kb + lid.x + 16u] = acc1;
    }
}
