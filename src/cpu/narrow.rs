//! Products of at most [`MAX_N`] output columns whose operands both run contiguously along
//! the depth: LoRA's u = x·Aᵀ (A `[r][k]`) and du = dy·B (B transposed first). Eight dot
//! products per row of A, vectorised along the depth and without packing: the packed GEMM
//! would spend more on packing x (each element used r times) than on arithmetic.

/// The most output columns (a LoRA rank up to 8).
pub const MAX_N: usize = 8;
/// Lanes per accumulator (one AVX-512 register).
const L: usize = 16;

/// C[i][j] = α·Σₚ a[i·rsa + p]·b[j·csb + p] + β·C[i·rsc + j·csc] for i < m, j < n ≤ 8
/// (β = 0: C not read). `wide`: use AVX-512 where the CPU has it (else the portable
/// loop, as on wasm32).
///
/// # Safety
/// Every element addressed must be in bounds, and 1 ≤ n ≤ [`MAX_N`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn dots(
    wide: bool,
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    (a, rsa): (*const f32, usize),
    (b, csb): (*const f32, usize),
    beta: f32,
    (c, rsc, csc): (*mut f32, usize, usize),
) {
    #[cfg(target_arch = "x86_64")]
    if wide && std::is_x86_feature_detected!("avx512f") {
        return dots_avx512((m, k, n), alpha, (a, rsa), (b, csb), beta, (c, rsc, csc));
    }
    let _ = wide;
    body::<false>((m, k, n), alpha, (a, rsa), (b, csb), beta, (c, rsc, csc))
}

/// # Safety
/// As [`dots`], on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn dots_avx512(
    mkn: (usize, usize, usize),
    alpha: f32,
    a: (*const f32, usize),
    b: (*const f32, usize),
    beta: f32,
    c: (*mut f32, usize, usize),
) {
    body::<true>(mkn, alpha, a, b, beta, c)
}

/// # Safety
/// As [`dots`].
#[inline(always)]
unsafe fn body<const FMA: bool>(
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    (a, rsa): (*const f32, usize),
    (b, csb): (*const f32, usize),
    beta: f32,
    (c, rsc, csc): (*mut f32, usize, usize),
) {
    // Columns past n repeat the last one (computed, never stored): the loop stays 8 wide.
    let rows: [*const f32; MAX_N] = std::array::from_fn(|j| b.add(j.min(n - 1) * csb));
    let madd = |x: f32, y: f32, acc: f32| if FMA { x.mul_add(y, acc) } else { acc + x * y };
    for i in 0..m {
        let ar = a.add(i * rsa);
        let mut acc = [[0f32; L]; MAX_N];
        let mut p = 0;
        while p + L <= k {
            let x: [f32; L] = std::ptr::read_unaligned(ar.add(p) as *const [f32; L]);
            for (accj, rj) in acc.iter_mut().zip(&rows) {
                let y: [f32; L] = std::ptr::read_unaligned(rj.add(p) as *const [f32; L]);
                for l in 0..L {
                    accj[l] = madd(x[l], y[l], accj[l]);
                }
            }
            p += L;
        }
        let mut sums: [f32; MAX_N] = std::array::from_fn(|j| acc[j].iter().sum());
        for q in p..k {
            let x = *ar.add(q);
            for (s, rj) in sums.iter_mut().zip(&rows) {
                *s = madd(x, *rj.add(q), *s);
            }
        }
        for (j, &s) in sums.iter().enumerate().take(n) {
            let cij = c.add(i * rsc + j * csc);
            *cij = if beta == 0.0 {
                alpha * s
            } else {
                alpha * s + beta * *cij
            };
        }
    }
}
