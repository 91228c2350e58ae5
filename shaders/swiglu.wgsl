// swiglu.wgsl: the gated activation of the LLaMA MLP, h = silu(gate) ⊙ up with
// silu(g) = g·σ(g), and its backward pass; elementwise over n values.
//
// CPU twins:    edge_llm::reference::ops::swiglu_forward, swiglu_backward
// Rust wrapper: src/kernels/ops/swiglu.rs
//
// Variants (entry points) and bindings (group 0, per entry point):
//   swiglu_forward   0 gate (read)  1 up (read)  2 h (read_write)  3 params
//   swiglu_backward  0 gate  1 up  2 dh (read)  3 dgate (read_write)  4 dup (read_write)
//                    5 params; dgate = dh·up·σ(g)·(1 + g·(1 − σ(g))), dup = dh·g·σ(g)
//                    (written, not added: the twin returns fresh gradients).
//
// Dispatch: ceil(n / WG) workgroups on the folded grid.

const WG: u32 = 256u;

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

fn sigmoid(g: f32) -> f32 {
    return 1.0 / (1.0 + exp(-g));
}

@group(0) @binding(0) var<storage, read> gate: array<f32>;
@group(0) @binding(1) var<storage, read> up: array<f32>;
@group(0) @binding(2) var<storage, read_write> f_h: array<f32>;
@group(0) @binding(3) var<uniform> f_p: Params;

@compute @workgroup_size(WG)
fn swiglu_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if (i >= f_p.n) {
        return;
    }
    let g = gate[i];
    f_h[i] = g * sigmoid(g) * up[i];
}

@group(0) @binding(2) var<storage, read> b_dh: array<f32>;
@group(0) @binding(3) var<storage, read_write> b_dgate: array<f32>;
@group(0) @binding(4) var<storage, read_write> b_dup: array<f32>;
@group(0) @binding(5) var<uniform> b_p: Params;

@compute @workgroup_size(WG)
fn swiglu_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if (i >= b_p.n) {
        return;
    }
    let g = gate[i];
    let u = up[i];
    let d = b_dh[i];
    let sg = sigmoid(g);
    b_dup[i] = d * g * sg;
    b_dgate[i] = d * u * sg * (1.0 + g * (1.0 - sg));
}
