// qmatmul_packed.wgsl: the packed-format decoder of the quantized matmuls (prepended to
// shaders/qmatmul.wgsl, which holds the entry points; see there). W[n×k] holds codes along
// k (layout in src/formats/quant.rs), read in place and dequantized in registers. A weight
// value is s·code + z with (s, z) per (row, group of GROUP columns): symmetric codes are
// offset by 2^(BITS−1) and z = −2^(BITS−1)·s; asymmetric store (s, z) as f16.
//
// CPU twins: edge_llm::formats::quant::{qmatmul_nt, qmatmul_nn}
//            (BITS = 32: edge_llm::reference::ops::matmul_nt / matmul_nn_acc)
//
// Binding 1 holds the packed f16 scales/zeros (unused when BITS = 32).
// Overrides: BITS ∈ {2, 3, 4, 8, 32 = dense f32}, GROUP ∈ {32, 64, 128}, SYMMETRIC, SPREAD
// (gemv_nt_vec4's row assignment, below). One more entry point than the template:
//   gemv_nt_vec4  small m, BITS ∈ {4, 8, 32} and k a multiple of 32 only: 8 rows of W per
//             invocation, whole blocks read as vec4<u32> (scales too, 4 words at a time)
//             and x as vec4<f32>, each x block loaded once for the 8 rows, through vec4
//             aliases of bindings 0, 1 and 2 (w4, s4, x4). Grid: ceil(n / (WG·8)) · m.

override BITS: u32 = 4u;
override GROUP: u32 = 32u;
override SYMMETRIC: bool = true;
override SPREAD: bool = true;

// The same buffers seen as vec4 (gemv_nt_vec4 only): a CPU adapter pays per load
// instruction, not per byte, so four words per load is what makes it fast there.
@group(0) @binding(0) var<storage, read> w4: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> s4: array<vec4<u32>>;

// (s, z) of group g of W's row `row`.
fn scale_zero(row: u32, g: u32) -> vec2<f32> {
    if (SYMMETRIC) {
        let v = unpack2x16float(scales[row * p.swpr + g / 2u]);
        let s = select(v.x, v.y, (g & 1u) == 1u);
        return vec2<f32>(s, -f32(1u << (BITS - 1u)) * s);
    }
    return unpack2x16float(scales[row * p.swpr + g]);
}

// The vec4 of scale words number `c` of W's row `row` (rows are padded to whole vec4s).
fn w4_scales(row: u32, c: u32) -> vec4<u32> {
    return s4[row * (p.swpr / 4u) + c];
}

// First word of block b of W's row `row` (dense: the first f32 of the block).
fn block_base(row: u32, b: u32) -> u32 {
    if (BITS == 32u) {
        return row * p.k + b * BLOCK;
    }
    return (row * p.bpr + b) * BITS;
}

// The code of column c (0..32) of a block starting at word `base`.
fn code_at(base: u32, c: u32) -> u32 {
    if (BITS == 3u) {
        let lo = (w[base + c / 16u] >> (2u * (c % 16u))) & 3u;
        let hi = (w[base + 2u] >> c) & 1u;
        return lo | (hi << 2u);
    }
    let per = 32u / BITS;
    return (w[base + c / per] >> ((c % per) * BITS)) & (0xFFFFFFFFu >> (32u - BITS));
}

// The value of W[row, b·32 + c]; the caller checks that the column is below k.
fn weight_at(row: u32, b: u32, c: u32) -> f32 {
    let base = block_base(row, b);
    if (BITS == 32u) {
        return bitcast<f32>(w[base + c]);
    }
    let sz = scale_zero(row, b * BLOCK / GROUP);
    return fma(sz.x, f32(code_at(base, c)), sz.y);
}

// Σ_c x[xb + c] · W[row, b·32 + c] over the first `lim` columns of block b.
fn block_dot(row: u32, b: u32, xb: u32, lim: u32) -> f32 {
    let base = block_base(row, b);
    var acc = 0.0;
    if (BITS == 32u) {
        for (var c = 0u; c < BLOCK; c++) {
            if (c < lim) {
                acc = fma(x[xb + c], bitcast<f32>(w[base + c]), acc);
            }
        }
        return acc;
    }
    let sz = scale_zero(row, b * BLOCK / GROUP);
    if (BITS == 3u) {
        let hi = w[base + 2u];
        for (var h = 0u; h < 2u; h++) {
            let lo = w[base + h];
            for (var e = 0u; e < 16u; e++) {
                let c = 16u * h + e;
                let code = ((lo >> (2u * e)) & 3u) | (((hi >> c) & 1u) << 2u);
                let xv = select(0.0, x[xb + c], c < lim);
                acc = fma(xv, fma(sz.x, f32(code), sz.y), acc);
            }
        }
        return acc;
    }
    let per = 32u / BITS;
    let mask = 0xFFFFFFFFu >> (32u - BITS);
    for (var t = 0u; t < BITS; t++) {
        let word = w[base + t];
        for (var e = 0u; e < per; e++) {
            let c = t * per + e;
            let code = (word >> (e * BITS)) & mask;
            let xv = select(0.0, x[xb + c], c < lim);
            acc = fma(xv, fma(sz.x, f32(code), sz.y), acc);
        }
    }
    return acc;
}

// acc[c] += a·s·code_c over the first `lim` columns of block b of W's row j (dense:
// a·W[j, b·32 + c]); returns the block's zero z, which the caller adds once as a·z.
fn block_axpy(j: u32, b: u32, a: f32, lim: u32, acc: ptr<function, array<f32, 32>>) -> f32 {
    let base = block_base(j, b);
    if (BITS == 32u) {
        for (var c = 0u; c < BLOCK; c++) {
            if (c < lim) {
                (*acc)[c] = fma(a, bitcast<f32>(w[base + c]), (*acc)[c]);
            }
        }
        return 0.0;
    }
    let sz = scale_zero(j, b * BLOCK / GROUP);
    let ds = a * sz.x;
    if (BITS == 3u) {
        let hi = w[base + 2u];
        for (var h = 0u; h < 2u; h++) {
            let lo = w[base + h];
            for (var e = 0u; e < 16u; e++) {
                let c = 16u * h + e;
                let code = ((lo >> (2u * e)) & 3u) | (((hi >> c) & 1u) << 2u);
                (*acc)[c] = fma(ds, f32(code), (*acc)[c]);
            }
        }
    } else {
        let per = 32u / BITS;
        let mask = 0xFFFFFFFFu >> (32u - BITS);
        for (var t = 0u; t < BITS; t++) {
            let word = w[base + t];
            for (var e = 0u; e < per; e++) {
                (*acc)[t * per + e] = fma(ds, f32((word >> (e * BITS)) & mask), (*acc)[t * per + e]);
            }
        }
    }
    return sz.y;
}

// Σ_c x·W[row, b·32 + c] for one full block, x given as 8 vec4 with Σ x = xs, the row's
// scale words of the current chunk in scw and the block's group within the chunk gl.
fn row_dot(row: u32, b: u32, xv: array<vec4<f32>, 8>, xs: f32, scw: vec4<u32>, gl: u32) -> f32 {
    var a = vec4<f32>(0.0);
    if (BITS == 32u) {
        let base4 = (row * p.k + b * BLOCK) / 4u;
        for (var i = 0u; i < 8u; i++) {
            a = fma(xv[i], bitcast<vec4<f32>>(w4[base4 + i]), a);
        }
        return dot(a, vec4<f32>(1.0));
    }
    var sz: vec2<f32>;
    if (SYMMETRIC) {
        let v = unpack2x16float(scw[gl / 2u]);
        let sv = select(v.x, v.y, (gl & 1u) == 1u);
        sz = vec2<f32>(sv, -f32(1u << (BITS - 1u)) * sv);
    } else {
        sz = unpack2x16float(scw[gl]);
    }
    let mask = vec4<u32>(0xFFFFFFFFu >> (32u - BITS));
    let per = 32u / BITS;
    let base4 = (row * p.bpr + b) * BITS / 4u;
    for (var t4 = 0u; t4 < BITS / 4u; t4++) {
        let wv = w4[base4 + t4];
        for (var q = 0u; q < 4u; q++) {
            let word = vec4<u32>(wv[q]);
            for (var e = 0u; e < per; e += 4u) {
                let c = (t4 * 4u + q) * per + e;
                let shifts = vec4<u32>(e, e + 1u, e + 2u, e + 3u) * BITS;
                // Codes are < 2^8: the signed conversion is one x86 instruction, the
                // unsigned one a sequence.
                let codes = vec4<f32>(bitcast<vec4<i32>>((word >> shifts) & mask));
                a = fma(xv[c / 4u], codes, a);
            }
        }
    }
    // Σ x·(s·code + z) = s·Σ x·code + z·Σ x.
    return fma(sz.x, dot(a, vec4<f32>(1.0)), sz.y * xs);
}

// 8 rows per invocation, written out (not a loop over an array): a CPU adapter keeps
// scalars in registers but spills arrays indexed by a loop counter.
@compute @workgroup_size(WG)
fn gemv_nt_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = wid.x + wid.y * nwg.x;
    let rows_per_wg = WG * 8u;
    let groups_per_x = (p.n + rows_per_wg - 1u) / rows_per_wg;
    let xr = g / groups_per_x;
    if (xr >= p.m) {
        return;
    }
    // SPREAD: invocation lid takes rows row0 + j·WG (j < 8), so neighbouring invocations
    // read neighbouring rows at the same time; else rows 8·lid + j.
    let stride = select(1u, WG, SPREAD);
    let row0 = (g % groups_per_x) * rows_per_wg + select(lid * 8u, lid, SPREAD);
    // Rows past n recompute the last row (no divergent branch) and are not stored.
    let last = p.n - 1u;
    let r0 = min(row0, last);
    let r1 = min(row0 + stride, last);
    let r2 = min(row0 + 2u * stride, last);
    let r3 = min(row0 + 3u * stride, last);
    let r4 = min(row0 + 4u * stride, last);
    let r5 = min(row0 + 5u * stride, last);
    let r6 = min(row0 + 6u * stride, last);
    let r7 = min(row0 + 7u * stride, last);
    var a0 = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    var a3 = 0.0;
    var a4 = 0.0;
    var a5 = 0.0;
    var a6 = 0.0;
    var a7 = 0.0;
    var s0: vec4<u32>;
    var s1: vec4<u32>;
    var s2: vec4<u32>;
    var s3: vec4<u32>;
    var s4_: vec4<u32>;
    var s5: vec4<u32>;
    var s6: vec4<u32>;
    var s7: vec4<u32>;
    let xb4 = xr * (p.k / 4u);
    // Scale rows are padded to whole vec4s: one load brings the scales of 8 (symmetric) or
    // 4 groups, so blocks go in chunks that share one scale vector per row.
    let groups_per_chunk = select(4u, 8u, SYMMETRIC);
    let chunk = select(groups_per_chunk * GROUP / BLOCK, 8u, BITS == 32u);
    for (var b0 = 0u; b0 < p.bpr; b0 += chunk) {
        if (BITS != 32u) {
            let c = b0 / chunk;
            s0 = w4_scales(r0, c);
            s1 = w4_scales(r1, c);
            s2 = w4_scales(r2, c);
            s3 = w4_scales(r3, c);
            s4_ = w4_scales(r4, c);
            s5 = w4_scales(r5, c);
            s6 = w4_scales(r6, c);
            s7 = w4_scales(r7, c);
        }
        for (var bb = 0u; bb < chunk; bb++) {
            let b = b0 + bb;
            if (b >= p.bpr) {
                break;
            }
            var xv: array<vec4<f32>, 8>;
            var xsum = vec4<f32>(0.0);
            for (var i = 0u; i < 8u; i++) {
                xv[i] = x4[xb4 + b * 8u + i];
                xsum += xv[i];
            }
            let xs = dot(xsum, vec4<f32>(1.0));
            let gl = bb * BLOCK / GROUP; // group within the chunk
            a0 += row_dot(r0, b, xv, xs, s0, gl);
            a1 += row_dot(r1, b, xv, xs, s1, gl);
            a2 += row_dot(r2, b, xv, xs, s2, gl);
            a3 += row_dot(r3, b, xv, xs, s3, gl);
            a4 += row_dot(r4, b, xv, xs, s4_, gl);
            a5 += row_dot(r5, b, xv, xs, s5, gl);
            a6 += row_dot(r6, b, xv, xs, s6, gl);
            a7 += row_dot(r7, b, xv, xs, s7, gl);
        }
    }
    let yb = xr * p.n;
    if (row0 < p.n) { y[yb + row0] = a0; }
    if (row0 + stride < p.n) { y[yb + row0 + stride] = a1; }
    if (row0 + 2u * stride < p.n) { y[yb + row0 + 2u * stride] = a2; }
    if (row0 + 3u * stride < p.n) { y[yb + row0 + 3u * stride] = a3; }
    if (row0 + 4u * stride < p.n) { y[yb + row0 + 4u * stride] = a4; }
    if (row0 + 5u * stride < p.n) { y[yb + row0 + 5u * stride] = a5; }
    if (row0 + 6u * stride < p.n) { y[yb + row0 + 6u * stride] = a6; }
    if (row0 + 7u * stride < p.n) { y[yb + row0 + 7u * stride] = a7; }
}
