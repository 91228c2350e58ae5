// qmatmul_gguf.wgsl: the GGUF block decoder of the quantized matmuls (prepended to
// shaders/qmatmul.wgsl, which holds the entry points; see there). W[n×k] is read in place
// from the tensor's raw bytes (Q4_0: f16 d + 16 B nibbles = 18 B; Q4_1: f16 d, f16 m + 16 B
// = 20 B; Q8_0: f16 d + 32 × i8 = 34 B per block of 32 weights; nibble j holds weight j low
// and j + 16 high). Blocks are not u32-aligned: every block starts on an even byte, so an
// f16 is one half of a word and a 32-bit run of codes is funnel-shifted out of two words.
// A weight value is s·code + z: Q4_0 (d, −8d), Q4_1 (d, m), Q8_0 (d, 0) with signed codes.
// k is a multiple of 32, so every block is whole (`lim` is always 32); binding 1 is unused.
//
// CPU twins: edge_llm::formats::quant::{gguf_matmul_nt, gguf_matmul_nn}
// Override: TYPE ∈ {2 = Q4_0, 3 = Q4_1, 8 = Q8_0} (ggml type ids).

override TYPE: u32 = 2u;

fn block_bytes() -> u32 {
    if (TYPE == 2u) {
        return 18u;
    }
    if (TYPE == 3u) {
        return 20u;
    }
    return 34u;
}

// Byte offset of block b of W's row `row`.
fn block_offset(row: u32, b: u32) -> u32 {
    return (row * p.bpr + b) * block_bytes();
}

// The f16 at even byte offset o.
fn half_at(o: u32) -> f32 {
    return unpack2x16float(w[o >> 2u] >> ((o & 2u) * 8u)).x;
}

// The 32 bits starting at even byte offset o.
fn word_at(o: u32) -> u32 {
    let i = o >> 2u;
    if ((o & 3u) == 0u) {
        return w[i];
    }
    return extractBits(w[i], 16u, 16u) | (extractBits(w[i + 1u], 0u, 16u) << 16u);
}

// (s, z) of the block at byte o.
fn block_head(o: u32) -> vec2<f32> {
    let d = half_at(o);
    if (TYPE == 2u) {
        return vec2<f32>(d, -8.0 * d);
    }
    if (TYPE == 3u) {
        return vec2<f32>(d, half_at(o + 2u));
    }
    return vec2<f32>(d, 0.0);
}

fn codes_offset(o: u32) -> u32 {
    return select(o + 2u, o + 4u, TYPE == 3u);
}

// Code of weight c (0..32) of a block whose codes start at byte q (signed for Q8_0).
fn code_at(q: u32, c: u32) -> f32 {
    if (TYPE == 8u) {
        let o = q + c;
        return f32(extractBits(bitcast<i32>(w[o >> 2u]), (o & 3u) * 8u, 8u));
    }
    let o = q + c % 16u;
    return f32(extractBits(w[o >> 2u], (o & 3u) * 8u + (c / 16u) * 4u, 4u));
}

fn weight_at(row: u32, b: u32, c: u32) -> f32 {
    let o = block_offset(row, b);
    let h = block_head(o);
    return fma(h.x, code_at(codes_offset(o), c), h.y);
}

// Σ_c x[xb + c] · W[row, b·32 + c] (the block is whole: `lim` is 32).
fn block_dot(row: u32, b: u32, xb: u32, lim: u32) -> f32 {
    let o = block_offset(row, b);
    let h = block_head(o);
    let q = codes_offset(o);
    var acc = 0.0;
    if (TYPE == 8u) {
        for (var t = 0u; t < 8u; t++) {
            let word = bitcast<i32>(word_at(q + 4u * t));
            for (var e = 0u; e < 4u; e++) {
                let v = h.x * f32(extractBits(word, 8u * e, 8u));
                acc = fma(x[xb + 4u * t + e], v, acc);
            }
        }
        return acc;
    }
    for (var t = 0u; t < 4u; t++) {
        let word = word_at(q + 4u * t);
        for (var e = 0u; e < 4u; e++) {
            let lo = fma(h.x, f32(extractBits(word, 8u * e, 4u)), h.y);
            let hi = fma(h.x, f32(extractBits(word, 8u * e + 4u, 4u)), h.y);
            acc = fma(x[xb + 4u * t + e], lo, acc);
            acc = fma(x[xb + 16u + 4u * t + e], hi, acc);
        }
    }
    return acc;
}

// acc[c] += a·s·code_c over block b of W's row j; returns the block's zero z, which the
// caller adds once as a·z.
fn block_axpy(j: u32, b: u32, a: f32, lim: u32, acc: ptr<function, array<f32, 32>>) -> f32 {
    let o = block_offset(j, b);
    let h = block_head(o);
    let q = codes_offset(o);
    let ds = a * h.x;
    if (TYPE == 8u) {
        for (var t = 0u; t < 8u; t++) {
            let word = bitcast<i32>(word_at(q + 4u * t));
            for (var e = 0u; e < 4u; e++) {
                (*acc)[4u * t + e] = fma(ds, f32(extractBits(word, 8u * e, 8u)), (*acc)[4u * t + e]);
            }
        }
    } else {
        for (var t = 0u; t < 4u; t++) {
            let word = word_at(q + 4u * t);
            for (var e = 0u; e < 4u; e++) {
                let c = 4u * t + e;
                (*acc)[c] = fma(ds, f32(extractBits(word, 8u * e, 4u)), (*acc)[c]);
                (*acc)[c + 16u] = fma(ds, f32(extractBits(word, 8u * e + 4u, 4u)), (*acc)[c + 16u]);
            }
        }
    }
    return h.y;
}
