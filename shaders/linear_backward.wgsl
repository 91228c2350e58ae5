// linear_backward.wgsl: a strided dense f32 product with accumulation, the backward forms
// of a linear layer y = x·Wᵀ (and every other small product the transformer ops need):
//
//     C[r, c] = alpha · Σ_i A(r, i) · B(i, c)  (+ C[r, c] when accumulate = 1)
//     A(r, i) = a[a_off + r·a_rs + i·a_cs]     B(i, c) = b[b_off + i·b_rs + c·b_cs]
//     C[r, c] lives at c[c_off + r·c_rs + c]
//
// Strides pick the form: matmul_nn  dX[m×k] += dY[m×n]·W[n×k]   (A = dY, B = W)
//                        matmul_tn  dW[n×k] += dY[m×n]ᵀ·X[m×k]  (A = dYᵀ via strides)
//                        and x·Wᵀ, scaled LoRA products, LM-head chunks at row offsets.
//
// CPU twins:    edge_llm::reference::ops::matmul_nn_acc, matmul_tn_acc (and matmul_nt).
// Rust wrapper: src/kernels/ops/linear.rs (Gemm, matmul_nn, matmul_tn).
//
// Bindings (group 0):
//   0  a       storage, read        f32
//   1  b       storage, read        f32
//   2  c       storage, read_write  f32
//   3  params  uniform: Params
//
// Variants (entry points):
//   gemm   one TILE×TILE output tile per workgroup of TILE×TILE invocations; A and B are
//          staged through workgroup memory TILE columns of the inner dimension at a time.
//          Every load and store is bounds-checked, so no size need divide TILE.
//
// Dispatch: tiles_m·tiles_n workgroups on the folded grid, tile g = (g / tiles_n, g % tiles_n).

const TILE: u32 = 16u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    tiles_n: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    c_off: u32,
    c_rs: u32,
    accumulate: u32,
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

var<workgroup> a_tile: array<array<f32, TILE>, TILE>;
var<workgroup> b_tile: array<array<f32, TILE>, TILE>;

@compute @workgroup_size(TILE, TILE, 1)
fn gemm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    let tiles_m = (p.m + TILE - 1u) / TILE;
    if (g >= tiles_m * p.tiles_n) {
        return;
    }
    let row = (g / p.tiles_n) * TILE + lid.y;
    let col = (g % p.tiles_n) * TILE + lid.x;
    // The A row and B column this invocation stages.
    let a_row = (g / p.tiles_n) * TILE + lid.y;
    let b_col = (g % p.tiles_n) * TILE + lid.x;

    var acc = 0.0;
    for (var t = 0u; t < p.k; t += TILE) {
        var av = 0.0;
        let ai = t + lid.x;
        if (a_row < p.m && ai < p.k) {
            av = a[p.a_off + a_row * p.a_rs + ai * p.a_cs];
        }
        a_tile[lid.y][lid.x] = av;
        var bv = 0.0;
        let bi = t + lid.y;
        if (b_col < p.n && bi < p.k) {
            bv = b[p.b_off + bi * p.b_rs + b_col * p.b_cs];
        }
        b_tile[lid.y][lid.x] = bv;
        workgroupBarrier();
        for (var j = 0u; j < TILE; j++) {
            acc += a_tile[lid.y][j] * b_tile[j][lid.x];
        }
        workgroupBarrier();
    }
    if (row < p.m && col < p.n) {
        let at = p.c_off + row * p.c_rs + col;
        var v = p.alpha * acc;
        if (p.accumulate != 0u) {
            v += c[at];
        }
        c[at] = v;
    }
}
