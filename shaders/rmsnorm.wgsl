// rmsnorm.wgsl: RMSNorm over the rows of x[m×d], y = x · r · w with r = 1/√(mean(x²) + eps),
// and its backward pass.
//
// CPU twins:    edge_llm::reference::ops::rmsnorm_forward, rmsnorm_backward
// Rust wrapper: src/kernels/ops/rmsnorm.rs
//
// Variants (entry points) and their bindings (group 0; binding numbers are per entry point):
//   rmsnorm_forward   0 x (read)  1 w (read)  2 y (read_write)  3 rstd (read_write)  4 params
//                     one workgroup per row: y and r (saved for backward).
//   rmsnorm_backward  0 x  1 w  2 dy  3 rstd (read)  4 dx (read_write)  5 params
//                     one workgroup per row: dx += r·w⊙dy − x·r³/d·Σ(dy⊙w⊙x).
//   rmsnorm_dw_partial 0 x  1 dy  2 rstd (read)  3 partial (read_write)  4 params
//                     first pass of dw = Σ_rows dy⊙x·r: workgroup (chunk, column block)
//                     writes partial[chunk·d + j] = Σ over its ROWS rows; the second pass is
//                     reduce.wgsl's col_sums_add into dw. No atomics.
//
// Dispatch (folded grid): forward/backward m workgroups; dw_partial
// ceil(m / ROWS) · ceil(d / WG).

const WG: u32 = 256u;
const ROWS: u32 = 32u;

struct Params {
    m: u32,
    d: u32,
    eps: f32,
    col_blocks: u32,
}

var<workgroup> red: array<f32, WG>;

fn tree_sum(l: u32) {
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (l < s) {
            red[l] += red[l + s];
        }
    }
    workgroupBarrier();
}

// ---- forward ----
@group(0) @binding(0) var<storage, read> f_x: array<f32>;
@group(0) @binding(1) var<storage, read> f_w: array<f32>;
@group(0) @binding(2) var<storage, read_write> f_y: array<f32>;
@group(0) @binding(3) var<storage, read_write> f_rstd: array<f32>;
@group(0) @binding(4) var<uniform> f_p: Params;

@compute @workgroup_size(WG)
fn rmsnorm_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= f_p.m) {
        return;
    }
    let d = f_p.d;
    var acc = 0.0;
    for (var j = lid.x; j < d; j += WG) {
        let v = f_x[row * d + j];
        acc += v * v;
    }
    red[lid.x] = acc;
    tree_sum(lid.x);
    let r = 1.0 / sqrt(red[0] / f32(d) + f_p.eps);
    for (var j = lid.x; j < d; j += WG) {
        f_y[row * d + j] = f_x[row * d + j] * r * f_w[j];
    }
    if (lid.x == 0u) {
        f_rstd[row] = r;
    }
}

// ---- backward: dx ----
@group(0) @binding(0) var<storage, read> b_x: array<f32>;
@group(0) @binding(1) var<storage, read> b_w: array<f32>;
@group(0) @binding(2) var<storage, read> b_dy: array<f32>;
@group(0) @binding(3) var<storage, read> b_rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> b_dx: array<f32>;
@group(0) @binding(5) var<uniform> b_p: Params;

@compute @workgroup_size(WG)
fn rmsnorm_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= b_p.m) {
        return;
    }
    let d = b_p.d;
    var acc = 0.0;
    for (var j = lid.x; j < d; j += WG) {
        let i = row * d + j;
        acc += b_dy[i] * b_w[j] * b_x[i];
    }
    red[lid.x] = acc;
    tree_sum(lid.x);
    let r = b_rstd[row];
    let c = r * r * r * red[0] / f32(d);
    for (var j = lid.x; j < d; j += WG) {
        let i = row * d + j;
        b_dx[i] += r * b_w[j] * b_dy[i] - b_x[i] * c;
    }
}

// ---- backward: dw, first pass ----
@group(0) @binding(0) var<storage, read> w_x: array<f32>;
@group(0) @binding(1) var<storage, read> w_dy: array<f32>;
@group(0) @binding(2) var<storage, read> w_rstd: array<f32>;
@group(0) @binding(3) var<storage, read_write> w_partial: array<f32>;
@group(0) @binding(4) var<uniform> w_p: Params;

@compute @workgroup_size(WG)
fn rmsnorm_dw_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    let chunk = g / w_p.col_blocks;
    let j = (g % w_p.col_blocks) * WG + lid.x;
    let d = w_p.d;
    if (chunk * ROWS >= w_p.m || j >= d) {
        return;
    }
    let end = min(w_p.m, (chunk + 1u) * ROWS);
    var acc = 0.0;
    for (var row = chunk * ROWS; row < end; row++) {
        let i = row * d + j;
        acc += w_dy[i] * w_x[i] * w_rstd[row];
    }
    w_partial[chunk * d + j] = acc;
}
