// spmatmul.wgsl: sparse weight products that skip the zeros, for frozen weights
// (formats: src/compress/sparse.rs, whose module doc describes the layouts).
//
//     y[m×n] = x[m×k] · Wᵀ        W: [n][k] sparse (2:4 or unstructured), values f32/int8/int4
//
// The input gradient dx = dy·W is the same NT product with the transposed copy of W
// (an unstructured matrix [k][n] built at pack time: W is frozen), so every output column
// gathers the weights that touch it; no scatter, no atomics.
//
// CPU twins:    edge_llm::compress::sparse::{sparse24_matmul_nt, sparse24_matmul_nn,
//               unstructured_matmul_nt, unstructured_matmul_nn}
// Rust wrapper: src/kernels/spmatmul.rs, which owns the bind group layouts.
//
// Bindings (group 0):
//   0  x        storage, read        m·k f32 (dy for the input gradient)
//   1  vals     storage, read        packed values (f32 bits, 4 int8 or 8 int4 per u32)
//   2  scales   storage, read        f16 pairs (a dummy word for f32 values)
//   3  pattern  storage, read        sparse24_nt: in-group offsets, group g of a row in
//                                    nibble g%8 of its word g/8 as i0 | i1 << 2;
//                                    unstructured_nt: block bitmasks [n][nb]
//   4  y        storage, read_write  m·n f32
//   5  params   uniform              Params
//   6  row_ptr  storage, read        unstructured_nt only: n+1 value positions
//
// Variants:
//   entry points  sparse24_nt, unstructured_nt
//   VALUES        override: 0 f32, 1 int8, 2 int4 (code · f16 scale, scale per original
//                 row and 64 original columns)
//   TM            override: rows of x per workgroup (1, 4, 8 or 16, chosen from m)
//   SCALE_T       override (unstructured_nt): the matrix is a transposed copy, so the
//                 scale of entry (row, col) is that of original entry (col, row)
//
// Tiling: a workgroup of WG_N invocations computes a TM × WG_N tile of y. It stages TM rows
// of x, KC columns at a time, in workgroup memory; each invocation walks its own weight
// row's compressed entries over those columns, decoding each weight once and using it for
// TM rows from registers. 2:4 reads one vec4 of x per group of 4 columns and does 2
// multiply-adds per row where dense does 4. Dispatch: tiles_n · ceil(m/TM) workgroups,
// folded into a 2-D grid (g = wid.x + wid.y · nwg.x).

const WG_N: u32 = 64u;
// Rows of x per workgroup: an override (1, 4, 8 or 16) so one-token products do not pay
// for 16; workgroup and register arrays are sized for the largest.
const TM_MAX: u32 = 16u;
override TM: u32 = 16u;
const KC: u32 = 128u;
const KC4: u32 = KC / 4u;
const QCOLS: u32 = 64u;

override VALUES: u32 = 0u;
override SCALE_T: bool = false;

struct Params {
    m: u32,
    k: u32,
    n: u32,
    tiles_n: u32,
    // sparse24_nt: value positions and index words per row, groups of 4 per row
    value_stride: u32,
    idx_stride: u32,
    groups: u32,
    // scales per ORIGINAL row (ceil(original k / 64))
    gpr: u32,
    // unstructured_nt: bitmask blocks per row
    nb: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> vals: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> pattern: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;
@group(0) @binding(6) var<storage, read> row_ptr: array<u32>;

var<workgroup> xt4: array<vec4<f32>, TM_MAX * KC4>;
var<workgroup> xt: array<f32, TM_MAX * KC>;

// f16 scale number i.
fn scale_at(i: u32) -> f32 {
    return unpack2x16float(scales[i / 2u])[i % 2u];
}

// The integer code at value position pos (int8 or int4), as f32.
fn code_at(pos: u32) -> f32 {
    if (VALUES == 1u) {
        return f32(extractBits(bitcast<i32>(vals[pos / 4u]), 8u * (pos % 4u), 8u));
    }
    return f32(extractBits(bitcast<i32>(vals[pos / 8u]), 4u * (pos % 8u), 4u));
}

struct Tile {
    live: bool,
    row0: u32,
    col: u32,
}

// Whether this workgroup has a tile. Kept apart from tile_of so it depends only on
// workgroup-uniform values: the early return must be uniform control flow, or WGSL's
// uniformity analysis (Tint, in browsers) rejects the barriers after it.
fn tile_live(wid: vec3<u32>, nwg: vec3<u32>) -> bool {
    let g = wid.x + wid.y * nwg.x;
    return g < p.tiles_n * ((p.m + TM - 1u) / TM);
}

fn tile_of(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Tile {
    let g = wid.x + wid.y * nwg.x;
    let tiles_m = (p.m + TM - 1u) / TM;
    var t: Tile;
    t.live = g < p.tiles_n * tiles_m;
    t.row0 = (g / p.tiles_n) * TM;
    t.col = (g % p.tiles_n) * WG_N + lid;
    return t;
}

fn store(acc: array<f32, TM_MAX>, row0: u32, col: u32) {
    if (col < p.n) {
        for (var r = 0u; r < TM; r++) {
            if (row0 + r < p.m) {
                y[(row0 + r) * p.n + col] = acc[r];
            }
        }
    }
}

@compute @workgroup_size(WG_N)
fn sparse24_nt(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (!tile_live(wid, nwg)) {
        return; // the whole workgroup: g is uniform
    }
    let t = tile_of(wid, nwg, lid);
    let wr = min(t.col, p.n - 1u); // the weight row this invocation walks
    let vbase = wr * p.value_stride;
    var acc: array<f32, TM_MAX>;
    for (var k0 = 0u; k0 < p.k; k0 += KC) {
        for (var s = lid; s < TM * KC4; s += WG_N) {
            let xr = t.row0 + s / KC4;
            let col = k0 + 4u * (s % KC4);
            var v = vec4<f32>(0.0);
            if (xr < p.m) {
                let b = xr * p.k + col;
                if (col + 3u < p.k) {
                    v = vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]);
                } else {
                    for (var i = 0u; i < 4u; i++) {
                        if (col + i < p.k) {
                            v[i] = x[b + i];
                        }
                    }
                }
            }
            xt4[s] = v;
        }
        workgroupBarrier();
        let g0 = k0 / 4u;
        let gn = min(KC4, p.groups - g0);
        // 8 groups (32 columns) share one index word and one scale.
        for (var gw = 0u; gw < gn; gw += 8u) {
            let word = pattern[wr * p.idx_stride + (g0 + gw) / 8u];
            var scale = 1.0;
            if (VALUES != 0u) {
                scale = scale_at(wr * p.gpr + (g0 + gw) * 4u / QCOLS);
            }
            for (var j = 0u; j < min(8u, gn - gw); j++) {
                let gi = gw + j;
                let nib = word >> (4u * j);
                let i0 = nib & 3u;
                let i1 = (nib >> 2u) & 3u;
                let pos = vbase + 2u * (g0 + gi);
                var v0: f32;
                var v1: f32;
                if (VALUES == 0u) {
                    v0 = bitcast<f32>(vals[pos]);
                    v1 = bitcast<f32>(vals[pos + 1u]);
                } else {
                    v0 = code_at(pos) * scale;
                    v1 = code_at(pos + 1u) * scale;
                }
                for (var r = 0u; r < TM; r++) {
                    let xv = xt4[r * KC4 + gi];
                    acc[r] += v0 * xv[i0] + v1 * xv[i1];
                }
            }
        }
        workgroupBarrier();
    }
    store(acc, t.row0, t.col);
}

@compute @workgroup_size(WG_N)
fn unstructured_nt(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if (!tile_live(wid, nwg)) {
        return;
    }
    let t = tile_of(wid, nwg, lid);
    let wr = min(t.col, p.n - 1u);
    var pos = row_ptr[wr];
    var acc: array<f32, TM_MAX>;
    for (var k0 = 0u; k0 < p.k; k0 += KC) {
        for (var s = lid; s < TM * KC; s += WG_N) {
            let xr = t.row0 + s / KC;
            let col = k0 + s % KC;
            var v = 0.0;
            if (xr < p.m && col < p.k) {
                v = x[xr * p.k + col];
            }
            xt[s] = v;
        }
        workgroupBarrier();
        for (var b = 0u; b < KC / 32u; b++) {
            let blk = k0 / 32u + b;
            if (blk >= p.nb) {
                break;
            }
            var mask = pattern[wr * p.nb + blk];
            var scale = 1.0;
            if (VALUES != 0u && !SCALE_T) {
                scale = scale_at(wr * p.gpr + blk * 32u / QCOLS);
            }
            while (mask != 0u) {
                let c = b * 32u + firstTrailingBit(mask);
                mask &= mask - 1u;
                var v: f32;
                if (VALUES == 0u) {
                    v = bitcast<f32>(vals[pos]);
                } else {
                    if (SCALE_T) {
                        // original entry (k0 + c, wr)
                        scale = scale_at((k0 + c) * p.gpr + wr / QCOLS);
                    }
                    v = code_at(pos) * scale;
                }
                pos += 1u;
                for (var r = 0u; r < TM; r++) {
                    acc[r] += v * xt[r * KC + c];
                }
            }
        }
        workgroupBarrier();
    }
    store(acc, t.row0, t.col);
}
