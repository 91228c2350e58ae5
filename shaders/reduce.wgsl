// reduce.wgsl: two-pass reductions without atomics (each pass writes disjoint words).
//
// CPU twins:    edge_llm::reference::optim::sum_squares (sumsq_partial + sum_partials);
//               col_sums_add is the second half of a column reduction, e.g. the weight
//               gradient of rmsnorm (edge_llm::reference::ops::rmsnorm_backward, dw).
// Rust wrapper: src/kernels/ops/reduce.rs
//
// Bindings (group 0):
//   0  src     storage, read        f32
//   1  dst     storage, read_write  f32
//   2  params  uniform: Params (n, cols, rows, dst_off)
//
// Variants (entry points):
//   sumsq_partial  dst[dst_off + g] = Σ src[i]² over the slice of ITEMS·WG elements of
//                  workgroup g (n elements in all); a tree reduction in workgroup memory.
//   sum_partials   one workgroup: dst[dst_off] = Σ src[0..n] (the second pass).
//   col_sums_add   dst[c] += Σ_r src[r·cols + c] for r < rows, one invocation per column
//                  (the second pass over per-chunk partial rows).
//
// Dispatch: sumsq_partial ceil(n / (ITEMS·WG)); sum_partials 1; col_sums_add
// ceil(cols / WG), all on the folded grid.

const WG: u32 = 256u;
const ITEMS: u32 = 16u;

struct Params {
    n: u32,
    cols: u32,
    rows: u32,
    dst_off: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> red: array<f32, WG>;

// Tree reduction of red[0..WG] into red[0]; every invocation must call it.
fn tree_sum(l: u32) {
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (l < s) {
            red[l] += red[l + s];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn sumsq_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    if (g * ITEMS * WG >= p.n) {
        return;
    }
    var acc = 0.0;
    for (var j = 0u; j < ITEMS; j++) {
        let i = (g * ITEMS + j) * WG + lid.x;
        if (i < p.n) {
            let v = src[i];
            acc += v * v;
        }
    }
    red[lid.x] = acc;
    tree_sum(lid.x);
    if (lid.x == 0u) {
        dst[p.dst_off + g] = red[0];
    }
}

@compute @workgroup_size(WG)
fn sum_partials(@builtin(local_invocation_id) lid: vec3<u32>) {
    var acc = 0.0;
    for (var i = lid.x; i < p.n; i += WG) {
        acc += src[i];
    }
    red[lid.x] = acc;
    tree_sum(lid.x);
    if (lid.x == 0u) {
        dst[p.dst_off] = red[0];
    }
}

@compute @workgroup_size(WG)
fn col_sums_add(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let c = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if (c >= p.cols) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        acc += src[r * p.cols + c];
    }
    dst[c] += acc;
}
