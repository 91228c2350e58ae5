// matmul.wgsl: dense f32 matrix product with the weight transposed ("NT"), the baseline of
// `edge-llm bench kernels` (the engine's dense path is qmatmul.wgsl with BITS = 32),
//
//     y[m×n] = x[m×k] · w[n×k]ᵀ        y[r, c] = Σ_i x[r, i] · w[c, i]
//
// all row-major, the layout of a linear layer (x: activations, w: [out × in] weights).
//
// CPU twin:     edge_llm::reference::ops::matmul_nt
// Rust wrapper: src/kernels/matmul.rs (MatmulNt), which owns the bind group layout.
//
// Bindings (group 0):
//   0  x       storage, read        m·k f32
//   1  w       storage, read        n·k f32
//   2  y       storage, read_write  m·n f32
//   3  params  uniform, dynamic offset: Params (m, k, n, row0, col0)
//
// Variants (entry points):
//   matmul_nt  one 16×16 output tile per workgroup of 16×16 invocations; x and w are
//              staged through workgroup memory TILE columns of k at a time. Every load
//              and store is bounds-checked, so m, k and n need not be multiples of TILE.
//
// Dispatch: (ceil(n'/TILE), ceil(m'/TILE), 1) workgroups for the block of y that starts
// at (row0, col0); the wrapper splits a product into such blocks when a grid would
// exceed max_compute_workgroups_per_dimension.

const TILE: u32 = 16u;

struct Params {
    m: u32,
    k: u32,
    n: u32,
    // First row and column of y covered by this dispatch.
    row0: u32,
    col0: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

// x_tile[r][i] = x[row0 + r, t + i];  w_tile[i][c] = w[col0 + c, t + i] (stored transposed
// so the inner loop reads consecutive words across the invocations of a row).
var<workgroup> x_tile: array<array<f32, TILE>, TILE>;
var<workgroup> w_tile: array<array<f32, TILE>, TILE>;

@compute @workgroup_size(TILE, TILE, 1)
fn matmul_nt(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let tile_row = p.row0 + wg.y * TILE;
    let tile_col = p.col0 + wg.x * TILE;
    let row = tile_row + lid.y;      // the y element this invocation computes
    let col = tile_col + lid.x;
    let w_row = tile_col + lid.y;    // the row of w this invocation stages

    var acc = 0.0;
    for (var t = 0u; t < p.k; t += TILE) {
        let i = t + lid.x;
        var xv = 0.0;
        if (row < p.m && i < p.k) {
            xv = x[row * p.k + i];
        }
        x_tile[lid.y][lid.x] = xv;
        var wv = 0.0;
        if (w_row < p.n && i < p.k) {
            wv = w[w_row * p.k + i];
        }
        w_tile[lid.x][lid.y] = wv;
        workgroupBarrier();
        for (var j = 0u; j < TILE; j++) {
            acc += x_tile[lid.y][j] * w_tile[j][lid.x];
        }
        workgroupBarrier();
    }
    if (row < p.m && col < p.n) {
        y[row * p.n + col] = acc;
    }
}
