// embedding.wgsl: the token embedding gather and its gradient, a scatter-add written as a
// gather (no atomics): the CPU groups the token positions by token id (it knows the tokens),
// and one invocation per (distinct token, column) sums the rows of dout of that token.
// The GPU trainer also runs both with row positions for tokens: the forward gathers the
// rows with a target for the LM head, the backward scatters their gradient back.
//
// CPU twins:    edge_llm::reference::ops::embedding_forward, embedding_backward
// Rust wrapper: src/kernels/ops/embedding.rs (Segments, encode_embedding_*)
//
// Variants (entry points) and bindings (group 0, per entry point):
//   embedding_forward   0 tokens (read, u32)  1 table (read)  2 out (read_write)  3 params
//                       out[i·d + c] = table[tokens[i]·d + c]; one invocation per element.
//   embedding_backward  0 uniq (read, u32: distinct tokens)  1 starts (read, u32: U + 1
//                       segment bounds into order)  2 order (read, u32: positions sorted by
//                       token)  3 dout (read)  4 dtable (read_write)  5 params
//                       dtable[uniq[u]·d + c] += Σ_{p in segment u} dout[order[p]·d + c].
//
// Dispatch (folded grid): forward ceil(n·d / WG); backward U · ceil(d / WG).

const WG: u32 = 256u;

struct Params {
    n: u32,
    d: u32,
    col_blocks: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> f_tokens: array<u32>;
@group(0) @binding(1) var<storage, read> f_table: array<f32>;
@group(0) @binding(2) var<storage, read_write> f_out: array<f32>;
@group(0) @binding(3) var<uniform> f_p: Params;

@compute @workgroup_size(WG)
fn embedding_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if (i >= f_p.n * f_p.d) {
        return;
    }
    let row = i / f_p.d;
    let c = i % f_p.d;
    f_out[i] = f_table[f_tokens[row] * f_p.d + c];
}

@group(0) @binding(0) var<storage, read> b_uniq: array<u32>;
@group(0) @binding(1) var<storage, read> b_starts: array<u32>;
@group(0) @binding(2) var<storage, read> b_order: array<u32>;
@group(0) @binding(3) var<storage, read> b_dout: array<f32>;
@group(0) @binding(4) var<storage, read_write> b_dtable: array<f32>;
@group(0) @binding(5) var<uniform> b_p: Params;

@compute @workgroup_size(WG)
fn embedding_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    let u = g / b_p.col_blocks;
    let c = (g % b_p.col_blocks) * WG + lid.x;
    // n = number of distinct tokens here
    if (u >= b_p.n || c >= b_p.d) {
        return;
    }
    var acc = 0.0;
    for (var q = b_starts[u]; q < b_starts[u + 1u]; q++) {
        acc += b_dout[b_order[q] * b_p.d + c];
    }
    let at = b_uniq[u] * b_p.d + c;
    b_dtable[at] += acc;
}
