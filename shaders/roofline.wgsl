// roofline.wgsl: the adapter's arithmetic ceiling for `edge-llm bench kernels`. Each
// invocation runs CHAIN steps of eight independent vec4 multiply-adds, a = a·M + C (32
// lanes of 2 flops a step, enough independent chains to hide the FMA latency), from a
// start that depends on its index, and writes the sum of its lanes so nothing is dead code.
// M < 1 makes the recurrence contract towards C / (1 − M), so rounding never grows.
//
// CPU twin:     edge_llm::kernels::roofline::fma_chain_twin
// Rust wrapper: src/kernels/roofline.rs
//
// Bindings (group 0): 0 out (read_write), one f32 per invocation.
// Variants: WG (workgroup size), CHAIN (steps). Dispatch: the folded grid of
// ceil(n / WG) workgroups; invocation i < n writes out[i].

override WG: u32 = 64u;
override CHAIN: u32 = 256u;

const M: f32 = 0.9990234375; // 1 − 2⁻¹⁰: exact in f32
const C: f32 = 0.0009765625; // 2⁻¹⁰

@group(0) @binding(0) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn fma_chain(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= arrayLength(&out)) {
        return;
    }
    let s = f32(i % 1024u) / 1024.0;
    let m = vec4<f32>(M);
    let c = vec4<f32>(C);
    var a0 = vec4<f32>(s, s + 0.125, s + 0.25, s + 0.375);
    var a1 = a0 + 0.5;
    var a2 = a0 + 1.0;
    var a3 = a0 + 1.5;
    var a4 = a0 + 2.0;
    var a5 = a0 + 2.5;
    var a6 = a0 + 3.0;
    var a7 = a0 + 3.5;
    for (var t = 0u; t < CHAIN; t++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
    }
    let sum = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
    out[i] = dot(sum, vec4<f32>(1.0));
}
