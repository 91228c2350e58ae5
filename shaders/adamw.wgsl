// adamw.wgsl: one AdamW step (PyTorch's torch.optim.AdamW: decoupled weight decay, bias
// correction) on one parameter tensor, with the gradient scaled by the global-norm clipping
// factor min(1, max_norm / (‖g‖ + 1e-6)) read from the GPU (no readback between the norm
// and the step). The squared norm comes from reduce.wgsl (sumsq_partial + sum_partials).
//
// CPU twins:    edge_llm::reference::optim::adamw_step (after optim::clip_grad_norm)
// Rust wrapper: src/kernels/ops/adamw.rs
//
// Bindings (group 0):
//   0  param   storage, read_write  f32, updated in place
//   1  grad    storage, read        f32 (not modified; the clipped value is used on the fly)
//   2  m       storage, read_write  f32, first moment
//   3  v       storage, read_write  f32, second moment
//   4  norm2   storage, read        f32 [1]: Σ g² over all clipped tensors
//   5  params  uniform: Params (bias corrections of step t precomputed on the CPU in f64)
//
// Variants: one entry point `adamw`; max_norm ≤ 0 disables clipping.
// Dispatch: ceil(n / WG) workgroups on the folded grid.

const WG: u32 = 256u;

struct Params {
    n: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    // 1 − lr·weight_decay
    decay: f32,
    // lr / (1 − β1ᵗ)
    step: f32,
    // √(1 − β2ᵗ)
    bc2_sqrt: f32,
    max_norm: f32,
}

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> m1: array<f32>;
@group(0) @binding(3) var<storage, read_write> m2: array<f32>;
@group(0) @binding(4) var<storage, read> norm2: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn adamw(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if (i >= p.n) {
        return;
    }
    var coef = 1.0;
    if (p.max_norm > 0.0) {
        coef = min(1.0, p.max_norm / (sqrt(norm2[0]) + 1e-6));
    }
    let g = grad[i] * coef;
    let m = p.beta1 * m1[i] + (1.0 - p.beta1) * g;
    let v = p.beta2 * m2[i] + (1.0 - p.beta2) * g * g;
    m1[i] = m;
    m2[i] = v;
    let denom = sqrt(v) / p.bc2_sqrt + p.eps;
    param[i] = param[i] * p.decay - p.step * m / denom;
}
