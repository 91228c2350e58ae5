// cross_entropy.wgsl: softmax cross-entropy over the vocabulary, fused with the LM head and
// computed in vocabulary chunks, so the [T × vocab] logits never exist: for each chunk the
// wrapper computes logits = hidden·E[v0 .. v0+cw]ᵀ into a [T][cw] scratch (with
// qmatmul.wgsl / qmatmul_gguf.wgsl reading the head chunk as the file stores it: f32,
// quantized or GGUF blocks), then these kernels fold the chunk into a running
// max / sum-exp per row (online softmax), or, in backward, turn it into dlogits.
//
// CPU twins:    edge_llm::reference::ops::cross_entropy_forward, cross_entropy_backward
//               (on full logits from ops::linear_forward)
// Rust wrapper: src/kernels/ops/cross_entropy.rs
//
// Variants (entry points) and bindings (group 0, per entry point):
//   ce_chunk_stats  0 logits (read, [T][cw])  1 targets (read, i32, −1 = ignored)
//                   2 stats (read_write, [T][3]: running max m, sum l = Σ exp(z − m), target
//                   logit)  3 params. One workgroup per row: tree max and sum over the chunk,
//                   merged with the running values (first chunk: replaced).
//   ce_finish       0 stats (read)  1 targets  2 loss (read_write, [T])  3 lse (read_write,
//                   [T])  4 params. One invocation per row: lse = m + ln l; loss = lse − z_t
//                   for counted rows, 0 for ignored ones.
//   ce_dlogits      0 logits (read_write, in place)  1 targets  2 lse (read)  3 params.
//                   dz = (exp(z − lse) − [col = target])·g on counted rows, 0 elsewhere,
//                   with g = dloss / (counted rows). One invocation per element.
//
// Dispatch (folded grid): stats T; finish ceil(T / WG); dlogits ceil(T·cw / WG).

const WG: u32 = 256u;

struct Params {
    t: u32,
    cw: u32,
    v0: u32,
    first: u32,
    g: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

var<workgroup> red: array<f32, WG>;

@group(0) @binding(0) var<storage, read> s_logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<i32>;
@group(0) @binding(2) var<storage, read_write> s_stats: array<f32>;
@group(0) @binding(3) var<uniform> s_p: Params;

@compute @workgroup_size(WG)
fn ce_chunk_stats(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= s_p.t) {
        return;
    }
    let l = lid3.x;
    let cw = s_p.cw;
    let base = row * cw;
    var mx = -3.0e38;
    for (var c = l; c < cw; c += WG) {
        mx = max(mx, s_logits[base + c]);
    }
    red[l] = mx;
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (l < s) {
            red[l] = max(red[l], red[l + s]);
        }
    }
    workgroupBarrier();
    var m = red[0];
    let m_old = s_stats[row * 3u];
    let l_old = s_stats[row * 3u + 1u];
    if (s_p.first == 0u) {
        m = max(m, m_old);
    }
    workgroupBarrier();
    var acc = 0.0;
    for (var c = l; c < cw; c += WG) {
        acc += exp(s_logits[base + c] - m);
    }
    red[l] = acc;
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (l < s) {
            red[l] += red[l + s];
        }
    }
    workgroupBarrier();
    if (l == 0u) {
        var sum = red[0];
        if (s_p.first == 0u) {
            sum += l_old * exp(m_old - m);
        }
        s_stats[row * 3u] = m;
        s_stats[row * 3u + 1u] = sum;
        let tg = targets[row];
        if (tg >= 0 && u32(tg) >= s_p.v0 && u32(tg) < s_p.v0 + cw) {
            s_stats[row * 3u + 2u] = s_logits[base + u32(tg) - s_p.v0];
        }
    }
}

@group(0) @binding(0) var<storage, read> f_stats: array<f32>;
@group(0) @binding(2) var<storage, read_write> f_loss: array<f32>;
@group(0) @binding(3) var<storage, read_write> f_lse: array<f32>;
@group(0) @binding(4) var<uniform> f_p: Params;

@compute @workgroup_size(WG)
fn ce_finish(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    let row = (wid.x + wid.y * nwg.x) * WG + lid3.x;
    if (row >= f_p.t) {
        return;
    }
    let lse = f_stats[row * 3u] + log(f_stats[row * 3u + 1u]);
    f_lse[row] = lse;
    var loss = 0.0;
    if (targets[row] >= 0) {
        loss = lse - f_stats[row * 3u + 2u];
    }
    f_loss[row] = loss;
}

@group(0) @binding(0) var<storage, read_write> d_logits: array<f32>;
@group(0) @binding(2) var<storage, read> d_lse: array<f32>;
@group(0) @binding(3) var<uniform> d_p: Params;

@compute @workgroup_size(WG)
fn ce_dlogits(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid3.x;
    if (i >= d_p.t * d_p.cw) {
        return;
    }
    let row = i / d_p.cw;
    let col = d_p.v0 + i % d_p.cw;
    let tg = targets[row];
    var dz = 0.0;
    if (tg >= 0) {
        dz = exp(d_logits[i] - d_lse[row]);
        if (u32(tg) == col) {
            dz -= 1.0;
        }
        dz *= d_p.g;
    }
    d_logits[i] = dz;
}
