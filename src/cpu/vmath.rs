//! Vectorisable f32 exponentials and the elementwise ops built on them (SwiGLU, the
//! softmax numerator), multiversioned for AVX-512 natively. libm's `expf` is a call per
//! element that the compiler cannot vectorise: tens of millions of them per training step.

/// e^x to within ~2 ulp: x = n·ln 2 + r with |r| ≤ ln 2 / 2 (Cody–Waite, two-part ln 2),
/// e^r by its degree-6 Taylor polynomial (truncation < 6e-8 relative), times 2ⁿ built in
/// the exponent bits. Inputs are clamped to [−87.3, 88.8] (e^x from the smallest normal
/// f32 to +inf); NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer without a branch.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_54, 88.8);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2ⁿ for n ≤ 127 from the exponent bits; n = 128 (x within ln 2 / 2 of the top) as
    // 2¹²⁷·2, branch-free.
    let n1 = n.min(127.0);
    let scale = f32::from_bits(((n1 as i32 + 127) << 23) as u32);
    let y = p * (1.0 + (n - n1)) * scale;
    if x.is_nan() {
        x
    } else {
        y
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Runs `$body` compiled for AVX-512 where the CPU has it, else as built.
macro_rules! multiversion {
    ($name:ident, $wide:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty, $body:block) => {
        #[inline(always)]
        fn $name($($arg: $ty),*) -> $ret $body

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,fma")]
        unsafe fn $wide($($arg: $ty),*) -> $ret {
            $name($($arg),*)
        }
    };
}

macro_rules! dispatch {
    ($plain:ident, $wide:ident, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is present.
            return unsafe { $wide($($arg),*) };
        }
        $plain($($arg),*)
    }};
}

multiversion!(swiglu_plain, swiglu_wide, (gate: &[f32], up: &[f32], out: &mut [f32]) -> (), {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g * sigmoid(g) * u;
    }
});

/// out = silu(gate) ⊙ up, silu(g) = g·σ(g).
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    dispatch!(swiglu_plain, swiglu_wide, gate, up, out)
}

multiversion!(swiglu_back_plain, swiglu_back_wide,
    (dh: &[f32], gate: &[f32], up: &[f32], dg: &mut [f32], du: &mut [f32]) -> (), {
    let n = dh.len().min(gate.len()).min(up.len()).min(dg.len()).min(du.len());
    for i in 0..n {
        let (d, g, u) = (dh[i], gate[i], up[i]);
        let sg = sigmoid(g);
        du[i] = d * g * sg;
        dg[i] = d * u * sg * (1.0 + g * (1.0 - sg));
    }
});

/// SwiGLU backward: dg = dh·u·σ(g)(1 + g(1 − σ(g))), du = dh·g·σ(g).
pub fn swiglu_backward(dh: &[f32], gate: &[f32], up: &[f32], dg: &mut [f32], du: &mut [f32]) {
    dispatch!(swiglu_back_plain, swiglu_back_wide, dh, gate, up, dg, du)
}

multiversion!(exp_sum_plain, exp_sum_wide, (row: &mut [f32], max: f32) -> f32, {
    // Sixteen partial sums so the additions vectorise.
    let mut sums = [0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for c in &mut chunks {
        for (s, x) in sums.iter_mut().zip(c.iter_mut()) {
            *x = exp(*x - max);
            *s += *x;
        }
    }
    let mut total: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        total += *x;
    }
    total
});

/// row = e^(row − max) in place; returns the sum (a softmax's numerator and denominator).
pub fn exp_sum(row: &mut [f32], max: f32) -> f32 {
    dispatch!(exp_sum_plain, exp_sum_wide, row, max)
}
