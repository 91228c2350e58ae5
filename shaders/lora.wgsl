// lora.wgsl: the dropout pieces of a LoRA adapter; its products (u = drop(x)·Aᵀ,
// y += scale·u·Bᵀ and the backward ones) run on linear_backward.wgsl's strided gemm,
// composed by the Rust wrapper.
//
// The dropout mask is a counter-based function of the element index, never stored:
// element i is dropped when hash32(hash32(i) ^ key) < threshold (threshold = p·2³²), kept
// values are scaled by 1/(1−p). Backward recomputes the forward's mask from the same key.
//
// CPU twins:    edge_llm::reference::ops::Dropout (the mask), lora_forward, lora_backward
// Rust wrapper: src/kernels/ops/lora.rs
//
// Bindings (group 0):
//   0  src     storage, read        f32
//   1  dst     storage, read_write  f32
//   2  params  uniform: Params (n, key, threshold, keep scale)
//
// Variants (entry points):
//   lora_dropout      dst[i] = src[i]·mask(i)   (drop(x) in forward and backward)
//   lora_dropout_acc  dst[i] += src[i]·mask(i)  (dx += (du·A)⊙mask in backward)
//
// Dispatch: ceil(n / WG) workgroups on the folded grid.

const WG: u32 = 256u;

struct Params {
    n: u32,
    key: u32,
    threshold: u32,
    keep_scale: f32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

// lowbias32; the same constants as reference::ops::hash32.
fn hash32(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

fn mask(i: u32) -> f32 {
    if (hash32(hash32(i) ^ p.key) < p.threshold) {
        return 0.0;
    }
    return p.keep_scale;
}

@compute @workgroup_size(WG)
fn lora_dropout(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if (i < p.n) {
        dst[i] = src[i] * mask(i);
    }
}

@compute @workgroup_size(WG)
fn lora_dropout_acc(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if (i < p.n) {
        dst[i] += src[i] * mask(i);
    }
}
