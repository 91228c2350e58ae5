// lora.wgsl: the elementwise pieces of a LoRA adapter with dropout; its products
// (u = drop(x)·Aᵀ, y += scale·u·Bᵀ and the backward ones) run on linear_backward.wgsl's
// strided gemm, composed by the Rust wrapper.
//
// CPU twins:    edge_llm::reference::ops::lora_forward, lora_backward (the dropout parts)
// Rust wrapper: src/kernels/ops/lora.rs
//
// Bindings (group 0):
//   0  src     storage, read        f32
//   1  mask    storage, read        f32 (dropout mask, already scaled by 1/(1−p))
//   2  dst     storage, read_write  f32
//   3  params  uniform: Params (n)
//
// Variants (entry points):
//   lora_mask      dst[i] = src[i]·mask[i]   (drop(x) in forward)
//   lora_mask_acc  dst[i] += src[i]·mask[i]  (dx += (du·A)⊙mask in backward)
//
// Dispatch: ceil(n / WG) workgroups on the folded grid.

const WG: u32 = 256u;

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read> mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn lora_mask(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if (i < p.n) {
        dst[i] = src[i] * mask[i];
    }
}

@compute @workgroup_size(WG)
fn lora_mask_acc(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if (i < p.n) {
        dst[i] += src[i] * mask[i];
    }
}
