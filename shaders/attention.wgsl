// attention.wgsl: causal grouped-query attention, forward and backward, without the
// [H][t][s] probability matrix: forward keeps the log-sum-exp of each query row, backward
// recomputes the probabilities from it (the FlashAttention scheme, written plainly).
//
//   q [t][H·hd], k and v [s][Hkv·hd]; query row i sits at position s − t + i and attends to
//   keys 0 ..= s − t + i (t < s when a KV cache holds earlier positions); query head h reads
//   KV head h / (H / Hkv); scores are q·k / √hd.
//
// CPU twins:    edge_llm::reference::ops::attention_forward, attention_backward
// Rust wrapper: src/kernels/ops/attention.rs
//
// Variants (entry points) and bindings (group 0, per entry point):
//   attention_forward  0 q  1 k  2 v (read)  3 out (read_write)  4 lse (read_write, [H][t])
//                      5 params. One workgroup per (head, query row): keys in blocks of
//                      BLK, one invocation per key for the scores, then one per output
//                      dimension for the online-softmax weighted sum of v.
//   attention_delta    0 dout  1 out (read)  2 delta (read_write, [H][t])  3 params.
//                      delta = Σ_d dout⊙out per (head, row) = Σ_j p_j·dP_j of the softmax
//                      backward. One invocation per (head, row).
//   attention_dq       0 q  1 k  2 v  3 dout  4 lse  5 delta (read)  6 dq (read_write)
//                      7 params. One workgroup per (head, query row), gathering over keys:
//                      dq_i = Σ_j p_ij (dout_i·v_j − delta_i)/√hd · k_j.
//   attention_dkv      0 q  1 k  2 v  3 dout  4 lse  5 delta (read)  6 dk  7 dv (read_write)
//                      8 params. One workgroup per (KV head, key row), gathering over the
//                      query heads that share it and the query rows that see the key:
//                      dv_j = Σ p_ij·dout_i, dk_j = Σ ds_ij·q_i. No atomics.
//   dq, dk, dv are written (not added): the twin returns fresh gradients.
//
// Limits: head_dim ≤ MAX_HD. Dispatch (folded grid): forward and dq H·t workgroups,
// delta ceil(H·t / BLK), dkv Hkv·s.

const BLK: u32 = 64u;
const MAX_HD: u32 = 256u;
// Output dimensions per invocation (MAX_HD / BLK).
const DPT: u32 = 4u;
const NEG: f32 = -3.0e38;

struct Params {
    t: u32,
    s: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    group: u32,
    scale: f32,
    _pad: u32,
}

var<workgroup> sh_a: array<f32, MAX_HD>;
var<workgroup> sh_b: array<f32, MAX_HD>;
var<workgroup> sc: array<f32, BLK>;
var<workgroup> sc2: array<f32, BLK>;

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;

// ---- forward ----
@group(0) @binding(3) var<storage, read_write> f_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> f_lse: array<f32>;
@group(0) @binding(5) var<uniform> f_p: Params;

@compute @workgroup_size(BLK)
fn attention_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    let t = f_p.t;
    if (g >= f_p.n_heads * t) {
        return;
    }
    let lid = lid3.x;
    let h = g / t;
    let i = g % t;
    let hd = f_p.head_dim;
    let qw = f_p.n_heads * hd;
    let kw = f_p.n_kv_heads * hd;
    let kbase = (h / f_p.group) * hd;
    let last = f_p.s - t + i;
    for (var d = lid; d < hd; d += BLK) {
        sh_a[d] = q[i * qw + h * hd + d];
    }
    workgroupBarrier();
    var m = NEG;
    var l = 0.0;
    var acc: array<f32, DPT>;
    for (var j0 = 0u; j0 <= last; j0 += BLK) {
        let j = j0 + lid;
        var sv = NEG;
        if (j <= last) {
            var dot = 0.0;
            for (var d = 0u; d < hd; d++) {
                dot += sh_a[d] * k[j * kw + kbase + d];
            }
            sv = dot * f_p.scale;
        }
        sc[lid] = sv;
        workgroupBarrier();
        let n_here = min(BLK, last + 1u - j0);
        var bm = m;
        for (var jj = 0u; jj < n_here; jj++) {
            bm = max(bm, sc[jj]);
        }
        let corr = exp(m - bm);
        l *= corr;
        for (var c = 0u; c < DPT; c++) {
            acc[c] *= corr;
        }
        for (var jj = 0u; jj < n_here; jj++) {
            let pj = exp(sc[jj] - bm);
            l += pj;
            let vrow = (j0 + jj) * kw + kbase;
            for (var c = 0u; c < DPT; c++) {
                let d = lid + c * BLK;
                if (d < hd) {
                    acc[c] += pj * v[vrow + d];
                }
            }
        }
        m = bm;
        workgroupBarrier();
    }
    for (var c = 0u; c < DPT; c++) {
        let d = lid + c * BLK;
        if (d < hd) {
            f_out[i * qw + h * hd + d] = acc[c] / l;
        }
    }
    if (lid == 0u) {
        f_lse[g] = m + log(l);
    }
}

// ---- backward: delta = rowsum(dout ⊙ out) ----
@group(0) @binding(0) var<storage, read> e_dout: array<f32>;
@group(0) @binding(1) var<storage, read> e_out: array<f32>;
@group(0) @binding(2) var<storage, read_write> e_delta: array<f32>;
@group(0) @binding(3) var<uniform> e_p: Params;

@compute @workgroup_size(BLK)
fn attention_delta(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    let idx = (wid.x + wid.y * nwg.x) * BLK + lid3.x;
    let t = e_p.t;
    if (idx >= e_p.n_heads * t) {
        return;
    }
    let h = idx / t;
    let i = idx % t;
    let hd = e_p.head_dim;
    let base = i * e_p.n_heads * hd + h * hd;
    var acc = 0.0;
    for (var d = 0u; d < hd; d++) {
        acc += e_dout[base + d] * e_out[base + d];
    }
    e_delta[idx] = acc;
}

// ---- backward: shared inputs ----
@group(0) @binding(3) var<storage, read> dout: array<f32>;
@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read> delta: array<f32>;

// ---- backward: dq ----
@group(0) @binding(6) var<storage, read_write> g_dq: array<f32>;
@group(0) @binding(7) var<uniform> g_p: Params;

@compute @workgroup_size(BLK)
fn attention_dq(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    let t = g_p.t;
    if (g >= g_p.n_heads * t) {
        return;
    }
    let lid = lid3.x;
    let h = g / t;
    let i = g % t;
    let hd = g_p.head_dim;
    let qw = g_p.n_heads * hd;
    let kw = g_p.n_kv_heads * hd;
    let kbase = (h / g_p.group) * hd;
    let last = g_p.s - t + i;
    for (var d = lid; d < hd; d += BLK) {
        sh_a[d] = q[i * qw + h * hd + d];
        sh_b[d] = dout[i * qw + h * hd + d];
    }
    workgroupBarrier();
    let row_lse = lse[g];
    let row_delta = delta[g];
    var acc: array<f32, DPT>;
    for (var j0 = 0u; j0 <= last; j0 += BLK) {
        let j = j0 + lid;
        var ds = 0.0;
        if (j <= last) {
            var qk = 0.0;
            var dp = 0.0;
            for (var d = 0u; d < hd; d++) {
                qk += sh_a[d] * k[j * kw + kbase + d];
                dp += sh_b[d] * v[j * kw + kbase + d];
            }
            let p = exp(qk * g_p.scale - row_lse);
            ds = p * (dp - row_delta) * g_p.scale;
        }
        sc[lid] = ds;
        workgroupBarrier();
        let n_here = min(BLK, last + 1u - j0);
        for (var jj = 0u; jj < n_here; jj++) {
            let krow = (j0 + jj) * kw + kbase;
            for (var c = 0u; c < DPT; c++) {
                let d = lid + c * BLK;
                if (d < hd) {
                    acc[c] += sc[jj] * k[krow + d];
                }
            }
        }
        workgroupBarrier();
    }
    for (var c = 0u; c < DPT; c++) {
        let d = lid + c * BLK;
        if (d < hd) {
            g_dq[i * qw + h * hd + d] = acc[c];
        }
    }
}

// ---- backward: dk, dv ----
@group(0) @binding(6) var<storage, read_write> g_dk: array<f32>;
@group(0) @binding(7) var<storage, read_write> g_dv: array<f32>;
@group(0) @binding(8) var<uniform> h_p: Params;

@compute @workgroup_size(BLK)
fn attention_dkv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    let s = h_p.s;
    let t = h_p.t;
    if (g >= h_p.n_kv_heads * s) {
        return;
    }
    let lid = lid3.x;
    let kh = g / s;
    let j = g % s;
    let hd = h_p.head_dim;
    let qw = h_p.n_heads * hd;
    let kw = h_p.n_kv_heads * hd;
    let krow = j * kw + kh * hd;
    for (var d = lid; d < hd; d += BLK) {
        sh_a[d] = k[krow + d];
        sh_b[d] = v[krow + d];
    }
    workgroupBarrier();
    // Query row i sees key j when j ≤ s − t + i.
    var first = 0u;
    if (j > s - t) {
        first = j - (s - t);
    }
    var acc_k: array<f32, DPT>;
    var acc_v: array<f32, DPT>;
    for (var hh = 0u; hh < h_p.group; hh++) {
        let h = kh * h_p.group + hh;
        for (var i0 = first; i0 < t; i0 += BLK) {
            let i = i0 + lid;
            var p = 0.0;
            var ds = 0.0;
            if (i < t) {
                var qk = 0.0;
                var dp = 0.0;
                for (var d = 0u; d < hd; d++) {
                    qk += q[i * qw + h * hd + d] * sh_a[d];
                    dp += dout[i * qw + h * hd + d] * sh_b[d];
                }
                p = exp(qk * h_p.scale - lse[h * t + i]);
                ds = p * (dp - delta[h * t + i]) * h_p.scale;
            }
            sc[lid] = p;
            sc2[lid] = ds;
            workgroupBarrier();
            let n_here = min(BLK, t - i0);
            for (var ii = 0u; ii < n_here; ii++) {
                let qrow = (i0 + ii) * qw + h * hd;
                for (var c = 0u; c < DPT; c++) {
                    let d = lid + c * BLK;
                    if (d < hd) {
                        acc_v[c] += sc[ii] * dout[qrow + d];
                        acc_k[c] += sc2[ii] * q[qrow + d];
                    }
                }
            }
            workgroupBarrier();
        }
    }
    for (var c = 0u; c < DPT; c++) {
        let d = lid + c * BLK;
        if (d < hd) {
            g_dk[krow + d] = acc_k[c];
            g_dv[krow + d] = acc_v[c];
        }
    }
}
