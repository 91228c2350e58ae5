// stats.wgsl: the calibration statistics of LUC profiling, accumulated over rows t of
// one calibration row's activations (both are a product Aᵀ·B over t with an epilogue):
//
//   gram_acc    H[i][j] += Σ_t X[t][i]·X[t][j]               (XᵀX of a projection input)
//   fisher_acc  F[r][c] += s·(Σ_t dY[t][r]·X[t][c])²          (the squared base-weight
//               gradient dW = dYᵀ·X of one row, summed into the Fisher diagonal)
//
// CPU twins:    edge_llm::compress::profile::gram_acc, fisher_acc
// Rust wrapper: src/kernels/ops/stats.rs
//
// Bindings (group 0):
//   0  a       storage, read        f32 [t][rows]   (gram: X; fisher: dY)
//   1  b       storage, read        f32 [t][cols]   (X; gram binds X here too)
//   2  out     storage, read_write  f32 [rows][cols]
//   3  params  uniform: Params (t, rows, cols, tiles_c, scale)
//
// Variants (entry points):
//   gram_acc    only tiles on or above the diagonal work (H is symmetric); an
//               off-diagonal tile adds its sums at (i, j) and (j, i).
//   fisher_acc  every tile.
//   Each workgroup of WG×WG invocations owns a TILE×TILE output tile (R×R outputs per
//   invocation, strided by WG so stores are coalesced); A and B are staged STEP rows of t
//   at a time through workgroup memory. Every load and store is bounds-checked, so no
//   size need divide TILE or STEP.
//
// Dispatch: tiles_r·tiles_c workgroups on the folded grid, tile g = (g / tiles_c,
// g % tiles_c).

const WG: u32 = 16u;
const R: u32 = 4u;
const TILE: u32 = 64u; // WG·R
const STEP: u32 = 16u;

struct Params {
    t: u32,
    rows: u32,
    cols: u32,
    tiles_c: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

var<workgroup> a_s: array<array<f32, TILE>, STEP>;
var<workgroup> b_s: array<array<f32, TILE>, STEP>;

// This workgroup's output tile (row, column) on the folded grid, and the number of tile
// rows (a row index at or past it: a spare workgroup with nothing to do).
fn tile_of(wid: vec3<u32>, nwg: vec3<u32>) -> vec3<u32> {
    let g = wid.x + wid.y * nwg.x;
    return vec3<u32>(g / p.tiles_c, g % p.tiles_c, (p.rows + TILE - 1u) / TILE);
}

// Σ_t a[t][r0 + ly + WG·i]·b[t][c0 + lx + WG·j] for i, j < R (0 outside the matrices).
// Every invocation of the workgroup must call it (it synchronises).
fn tile_sums(r0: u32, c0: u32, lx: u32, ly: u32) -> array<array<f32, R>, R> {
    var acc: array<array<f32, R>, R>;
    let flat = ly * WG + lx;
    for (var t0 = 0u; t0 < p.t; t0 += STEP) {
        for (var q = 0u; q < STEP * TILE / (WG * WG); q++) {
            let e = flat + q * WG * WG;
            let row = e / TILE;
            let col = e % TILE;
            let tt = t0 + row;
            var av = 0.0;
            var bv = 0.0;
            if (tt < p.t) {
                if (r0 + col < p.rows) {
                    av = a[tt * p.rows + r0 + col];
                }
                if (c0 + col < p.cols) {
                    bv = b[tt * p.cols + c0 + col];
                }
            }
            a_s[row][col] = av;
            b_s[row][col] = bv;
        }
        workgroupBarrier();
        for (var s = 0u; s < STEP; s++) {
            var av: array<f32, R>;
            var bv: array<f32, R>;
            for (var i = 0u; i < R; i++) {
                av[i] = a_s[s][ly + WG * i];
                bv[i] = b_s[s][lx + WG * i];
            }
            for (var i = 0u; i < R; i++) {
                for (var j = 0u; j < R; j++) {
                    acc[i][j] += av[i] * bv[j];
                }
            }
        }
        workgroupBarrier();
    }
    return acc;
}

@compute @workgroup_size(WG, WG, 1)
fn gram_acc(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let tile = tile_of(wid, nwg);
    let ti = tile.x;
    let tj = tile.y;
    if (ti >= tile.z || ti > tj) {
        return;
    }
    let acc = tile_sums(ti * TILE, tj * TILE, lid.x, lid.y);
    for (var i = 0u; i < R; i++) {
        let r = ti * TILE + lid.y + WG * i;
        for (var j = 0u; j < R; j++) {
            let c = tj * TILE + lid.x + WG * j;
            if (r < p.rows && c < p.cols) {
                out[r * p.cols + c] += acc[i][j];
                if (ti != tj) {
                    out[c * p.cols + r] += acc[i][j];
                }
            }
        }
    }
}

@compute @workgroup_size(WG, WG, 1)
fn fisher_acc(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let tile = tile_of(wid, nwg);
    let ti = tile.x;
    let tj = tile.y;
    if (ti >= tile.z) {
        return;
    }
    let acc = tile_sums(ti * TILE, tj * TILE, lid.x, lid.y);
    for (var i = 0u; i < R; i++) {
        let r = ti * TILE + lid.y + WG * i;
        for (var j = 0u; j < R; j++) {
            let c = tj * TILE + lid.x + WG * j;
            if (r < p.rows && c < p.cols) {
                let v = acc[i][j];
                out[r * p.cols + c] += p.scale * v * v;
            }
        }
    }
}
