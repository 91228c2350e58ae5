//! The machine's floating-point peak as an FMA loop reaches it: independent chains of
//! fused multiply-adds on the widest vectors the CPU has, on every thread at once. The
//! yardstick `edge-llm bench cpu` reports the engine's speed against. On wasm32 (no FMA in
//! SIMD128) it is a multiply and an add per lane, the most the page's kernels can issue.

use super::par;

/// (GFLOP/s over all threads, the instruction set used) from about `seconds` of FMA loop
/// on each of `par::threads()` threads.
pub fn fma_peak(seconds: f64) -> (f64, &'static str) {
    let (run, isa): (fn(u64) -> f32, &'static str) = pick();
    let threads = par::threads();
    // Calibrate: iterations for about `seconds` on one thread.
    let mut iters = 1u64 << 16;
    loop {
        let t = web_time::Instant::now();
        std::hint::black_box(run(iters));
        let s = t.elapsed().as_secs_f64();
        if s > 0.05 || iters > 1 << 40 {
            iters = ((iters as f64) * seconds / s.max(1e-9)).max(1.0) as u64;
            break;
        }
        iters *= 4;
    }
    let t = web_time::Instant::now();
    par::for_each(threads, |_| {
        std::hint::black_box(run(iters));
    });
    let s = t.elapsed().as_secs_f64();
    let flops = threads as f64 * iters as f64 * flops_per_iter(isa);
    (flops / s / 1e9, isa)
}

/// Floating-point operations per loop iteration: chains × lanes × 2 (multiply, add).
fn flops_per_iter(isa: &str) -> f64 {
    let (chains, lanes) = match isa {
        "avx512" => (12.0, 16.0),
        "avx2+fma" => (12.0, 8.0),
        // 12 chains of one operation each: (6 + 6) × 4 lanes × 1.
        "simd128 mul+add" => (12.0, 2.0),
        _ => (12.0, 1.0),
    };
    chains * lanes * 2.0
}

fn pick() -> (fn(u64) -> f32, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is present.
            return (|n| unsafe { x86::avx512(n) }, "avx512");
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA are present.
            return (|n| unsafe { x86::avx2(n) }, "avx2+fma");
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        return (wasm::simd128, "simd128 mul+add");
    }
    #[allow(unreachable_code)]
    (scalar, "scalar")
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use std::arch::wasm32::*;

    /// 6 chains of a = a·x and 6 of b = b + y on 4 lanes: SIMD128 has no fused
    /// multiply-add, so the most it issues is multiplies and adds side by side, each chain
    /// independent so that neither latency bounds it, 14 registers so that nothing spills.
    pub fn simd128(n: u64) -> f32 {
        let mut m = [f32x4_splat(1.0); 6];
        let mut a = [f32x4_splat(0.0); 6];
        // 1 (opaque to the compiler): the products stay normal numbers however long it runs.
        let x = f32x4_splat(std::hint::black_box(1.0));
        let y = f32x4_splat(std::hint::black_box(0.001));
        for _ in 0..n {
            for (m, a) in m.iter_mut().zip(a.iter_mut()) {
                *m = f32x4_mul(*m, x);
                *a = f32x4_add(*a, y);
            }
        }
        let s = m
            .iter()
            .chain(&a)
            .fold(f32x4_splat(0.0), |s, &v| f32x4_add(s, v));
        f32x4_extract_lane::<0>(s)
            + f32x4_extract_lane::<1>(s)
            + f32x4_extract_lane::<2>(s)
            + f32x4_extract_lane::<3>(s)
    }
}

/// 12 scalar chains of multiply-add (the portable floor; no FMA assumed).
fn scalar(n: u64) -> f32 {
    let mut acc = [0f32; 12];
    let (x, y) = (
        std::hint::black_box(0.999f32),
        std::hint::black_box(0.001f32),
    );
    for _ in 0..n {
        for a in acc.iter_mut() {
            *a = *a * x + y;
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(n: u64) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 12];
        let x = _mm512_set1_ps(std::hint::black_box(0.999));
        let y = _mm512_set1_ps(std::hint::black_box(0.001));
        for _ in 0..n {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a));
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(n: u64) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 12];
        let x = _mm256_set1_ps(std::hint::black_box(0.999));
        let y = _mm256_set1_ps(std::hint::black_box(0.001));
        for _ in 0..n {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, x, y);
            }
        }
        let mut out = [0f32; 8];
        let s = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }
}
