// qmatmul.wgsl: matmuls with a frozen packed weight W[n×k], read in place and dequantized
// in registers or into the tile as it is loaded:
//
//     forward         y[m×n]  = x[m×k] · Wᵀ
//     input gradient  dx[m×k] = dy[m×n] · W
//
// One body for every weight format: the Rust wrapper (src/kernels/qmatmul.rs, which owns
// layouts, uniforms and dispatch sizes) prepends a decoder, shaders/qmatmul_packed.wgsl
// (the packed 2/3/4/8-bit codes and dense f32) or shaders/qmatmul_gguf.wgsl (GGUF Q4_0,
// Q4_1, Q8_0 blocks), which defines, for block b (32 columns) of W's row `row`:
//   weight_at(row, b, c)             W[row, b·32 + c]
//   block_dot(row, b, xb, lim)       Σ_{c < lim} x[xb + c] · W[row, b·32 + c]
//   block_axpy(j, b, a, lim, &acc)   acc[c] += a·s·code_c for c < lim; returns z (w = s·code + z)
// and its own override constants.
//
// Bindings (group 0):
//   0  w       storage, read        the weight's words (dense: the n·k f32 bits)
//   1  scales  storage, read        packed f16 scales/zeros (the packed decoder's only)
//   2  x       storage, read        x (m·k f32) for *_nt, dy (m·n f32) for *_nn
//   3  y       storage, read_write  y (m·n f32) for *_nt, dx (m·k f32) for *_nn
//   4  params  uniform              Params
//
// Overrides: WG (GEMV workgroup size), SPLIT (gemv_nt invocations per output row, a power
// of two dividing WG). Entry points:
//   gemv_nt   small m: WG/SPLIT rows of W per workgroup; the SPLIT invocations of a row
//             take every SPLIT-th block of 32 columns and reduce in workgroup memory
//             (SPLIT = 1: one row per invocation). Any k.
//             Grid: ceil(n / (WG/SPLIT)) · m workgroups, folded.
//   gemv_nn   small m: one block of 32 columns of dx per invocation, looping over the n rows
//             of W. Grid: ceil(blocks / WG) · m workgroups, folded.
//   tiled_nt  large m: 16×16 outputs per 16×16 workgroup, k in steps of one block; the
//             W tile is dequantized into workgroup memory. Grid: ceil(m/16)·ceil(n/16).
//   tiled_nn  large m: 16 rows × 32 columns of dx per 16×16 workgroup, n in steps of 16.
//             Grid: ceil(m/16) · blocks.
//   reg_nt    large m, register tiles: 64×64 outputs per 16×16 workgroup, 4×4 per
//             invocation (rows ly + 16i, columns lx + 16j, so neighbouring invocations
//             take neighbouring columns and share their rows' x), k in steps of 16 staged
//             through workgroup memory with W dequantized as it is loaded: 8 workgroup
//             loads per 16 FMAs, against 2 per FMA in tiled_nt. Grid: ceil(m/64)·ceil(n/64).
//   reg_nn    the same for dx: 64 rows × 64 columns of dx, n in steps of 16.
//             Grid: ceil(m/64) · ceil(k/64).
// Every load is bounds-checked against k, n and m, so no size need divide a tile.

override WG: u32 = 64u;
override SPLIT: u32 = 1u;

const BLOCK: u32 = 32u;
const MAX_WG: u32 = 256u;

struct Params {
    m: u32,
    k: u32,
    n: u32,
    // Blocks of 32 columns per row of W, and scale words per row (packed only).
    bpr: u32,
    swpr: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> scales: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> part: array<f32, MAX_WG>;
var<workgroup> a_tile: array<array<f32, 33>, 16>;
var<workgroup> b_tile: array<array<f32, 17>, 32>;

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
        return; // uniform: g is the same for the whole workgroup
    }
    let row = (g % groups_per_x) * rows_per_wg + lid / SPLIT;
    let slice = lid % SPLIT;
    var acc = 0.0;
    if (row < p.n) {
        let xb = xr * p.k;
        for (var b = slice; b < p.bpr; b += SPLIT) {
            let kb = b * BLOCK;
            acc += block_dot(row, b, xb + kb, min(BLOCK, p.k - kb));
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
    let kb = b * BLOCK;
    let lim = min(BLOCK, p.k - kb);
    var acc: array<f32, 32>;
    // Σ_j dy[r, j]·z_j, added to every column at the end (w = s·code + z).
    var zacc = 0.0;
    for (var j = 0u; j < p.n; j++) {
        let a = x[r * p.n + j];
        zacc = fma(a, block_axpy(j, b, a, lim, &acc), zacc);
    }
    for (var c = 0u; c < lim; c++) {
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
        // a_tile[r][c] = x[row0 + r, kb + c]; b_tile[c][j] = W[col0 + j, kb + c].
        for (var q = 0u; q < 2u; q++) {
            let e = li + q * 256u;
            let r = e / BLOCK;
            let c = e % BLOCK;
            var xv = 0.0;
            if (row0 + r < p.m && kb + c < p.k) {
                xv = x[(row0 + r) * p.k + kb + c];
            }
            a_tile[r][c] = xv;
            var wv = 0.0;
            if (col0 + r < p.n && kb + c < p.k) {
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
        // b_tile[r][j] = dy[row0 + r, j0 + j] (first 16 columns used);
        // a_tile[j][c] = W[j0 + j, kb + c].
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
            if (j0 + j < p.n && kb + c < p.k) {
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
        if (kb + lid.x < p.k) {
            y[row * p.k + kb + lid.x] = acc0;
        }
        if (kb + lid.x + 16u < p.k) {
            y[row * p.k + kb + lid.x + 16u] = acc1;
        }
    }
}

// Register tiles (reg_nt, reg_nn): RT×RT outputs per workgroup, RK of the reduced dimension
// per stage; rs[r][c] holds the x (or dy) tile, ws[c][j] the W tile, both padded by one
// column.
const RT: u32 = 64u;
const RK: u32 = 16u;
var<workgroup> rs: array<array<f32, 17>, 64>;
var<workgroup> ws: array<array<f32, 65>, 16>;

// acc[i][j] += Σ_c rs[ly + 16i][c] · ws[c][lx + 16j] over one stage.
fn reg_stage(lx: u32, ly: u32, acc: ptr<function, array<vec4<f32>, 4>>) {
    for (var c = 0u; c < RK; c++) {
        let bv = vec4(ws[c][lx], ws[c][lx + 16u], ws[c][lx + 32u], ws[c][lx + 48u]);
        for (var i = 0u; i < 4u; i++) {
            (*acc)[i] = fma(vec4(rs[ly + 16u * i][c]), bv, (*acc)[i]);
        }
    }
}

// out[(row0 + ly + 16i)·width + col0 + lx + 16j] = acc[i][j] within rows × width.
fn reg_store(row0: u32, col0: u32, lx: u32, ly: u32, rows: u32, width: u32, acc: array<vec4<f32>, 4>) {
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + ly + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lx + 16u * j;
            if (row < rows && col < width) {
                y[row * width + col] = acc[i][j];
            }
        }
    }
}

@compute @workgroup_size(16, 16, 1)
fn reg_nt(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    let tn = (p.n + RT - 1u) / RT;
    if (g >= tn * ((p.m + RT - 1u) / RT)) {
        return; // uniform
    }
    let row0 = (g / tn) * RT;
    let col0 = (g % tn) * RT;
    let li = lid.y * 16u + lid.x;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += RK) {
        // rs[r][c] = x[row0 + r, k0 + c]; ws[c][j] = W[col0 + j, k0 + c].
        for (var q = 0u; q < 4u; q++) {
            let e = li + q * 256u;
            let r = e / RK;
            let c = e % RK;
            let kc = k0 + c;
            var xv = 0.0;
            if (row0 + r < p.m && kc < p.k) {
                xv = x[(row0 + r) * p.k + kc];
            }
            rs[r][c] = xv;
            var wv = 0.0;
            if (col0 + r < p.n && kc < p.k) {
                wv = weight_at(col0 + r, kc / BLOCK, kc % BLOCK);
            }
            ws[c][r] = wv;
        }
        workgroupBarrier();
        reg_stage(lid.x, lid.y, &acc);
        workgroupBarrier();
    }
    reg_store(row0, col0, lid.x, lid.y, p.m, p.n, acc);
}

@compute @workgroup_size(16, 16, 1)
fn reg_nn(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    let tk = (p.k + RT - 1u) / RT;
    if (g >= tk * ((p.m + RT - 1u) / RT)) {
        return; // uniform
    }
    let row0 = (g / tk) * RT;
    let col0 = (g % tk) * RT;
    let li = lid.y * 16u + lid.x;
    var acc: array<vec4<f32>, 4>;
    for (var j0 = 0u; j0 < p.n; j0 += RK) {
        // rs[r][j] = dy[row0 + r, j0 + j]; ws[j][c] = W[j0 + j, col0 + c].
        for (var q = 0u; q < 4u; q++) {
            let e = li + q * 256u;
            let r = e / RK;
            let j = e % RK;
            var dv = 0.0;
            if (row0 + r < p.m && j0 + j < p.n) {
                dv = x[(row0 + r) * p.n + j0 + j];
            }
            rs[r][j] = dv;
            let wj = e / RT;
            let c = col0 + e % RT;
            var wv = 0.0;
            if (j0 + wj < p.n && c < p.k) {
                wv = weight_at(j0 + wj, c / BLOCK, c % BLOCK);
            }
            ws[wj][e % RT] = wv;
        }
        workgroupBarrier();
        reg_stage(lid.x, lid.y, &acc);
        workgroupBarrier();
    }
    reg_store(row0, col0, lid.x, lid.y, p.m, p.k, acc);
}
