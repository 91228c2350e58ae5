// rope.wgsl: rotary position embedding in place on x[m][n_heads·head_dim], rows at positions
// pos0, pos0+1, …; pair (a, b) of frequency i in each head is rotated by pos·θ^(−2i/head_dim).
// Backward rotates the gradient back (sign = −1: a rotation's transpose is its inverse).
//
// CPU twins:    edge_llm::reference::ops::rope_forward, rope_backward
// Rust wrapper: src/kernels/ops/rope.rs (RopeTable, encode_rope)
//
// Bindings (group 0):
//   0  x       storage, read_write  f32, rotated in place
//   1  table   storage, read        (cos, sin) pairs, table[2·(pos·half + i) + {0,1}],
//              computed on the CPU in f64 (exactly the twin's angles; GPU sin/cos of large
//              arguments are not accurate enough on every WebGPU implementation)
//   2  params  uniform: Params
//
// Variants: one entry point `rope`; `style` (uniform) 0 = interleaved pairs (2i, 2i+1)
// (RopeStyle::Interleaved, GGUF llama), 1 = half-split pairs (i, i + half); `sign` +1
// forward, −1 backward.
//
// Dispatch: ceil(m·n_heads·half / WG) workgroups on the folded grid, one invocation per pair.

const WG: u32 = 256u;

struct Params {
    m: u32,
    n_heads: u32,
    head_dim: u32,
    pos0: u32,
    style: u32,
    sign: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn rope(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let idx = (wid.x + wid.y * nwg.x) * WG + lid.x;
    let half = p.head_dim / 2u;
    if (idx >= p.m * p.n_heads * half) {
        return;
    }
    let i = idx % half;
    let h = (idx / half) % p.n_heads;
    let row = idx / (half * p.n_heads);
    var a = 2u * i;
    var b = 2u * i + 1u;
    if (p.style == 1u) {
        a = i;
        b = i + half;
    }
    let t = 2u * ((p.pos0 + row) * half + i);
    let c = table[t];
    let s = p.sign * table[t + 1u];
    let base = row * p.n_heads * p.head_dim + h * p.head_dim;
    let x0 = x[base + a];
    let x1 = x[base + b];
    x[base + a] = x0 * c - x1 * s;
    x[base + b] = x0 * s + x1 * c;
}
