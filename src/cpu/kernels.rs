//! The micro-kernels: an MR×NR tile of A·B from packed panels, one per target.
//!
//! Every kernel reads `kc` steps of a packed A strip (MR values per step) and a packed B
//! panel (NR values per step, 64-byte aligned) and writes their MR×NR product into C as
//! C = α·product + β·C (the driver passes a scratch tile with α 1, β 0 at C's edges).
//! Packing pads both to full MR and NR with zeros, so a kernel never sees an edge.

/// Where a kernel writes its tile: C rows at `c + i·rsc` (columns contiguous), as
/// C = α·tile + β·C (β = 0: C not read).
#[derive(Clone, Copy, Debug)]
pub struct Out {
    pub c: *mut f32,
    pub rsc: usize,
    pub alpha: f32,
    pub beta: f32,
}

/// A micro-kernel: `run(kc, a, b, out)` writes into `out` the MR×NR product of a
/// packed A strip (kc steps of MR values) and a packed B panel (kc steps of NR values).
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub name: &'static str,
    pub mr: usize,
    pub nr: usize,
    pub(super) run: unsafe fn(usize, *const f32, *const f32, Out),
}

/// The fastest kernel this machine runs (chosen once).
pub fn best() -> Kernel {
    static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| available()[0])
}

/// Every kernel this machine runs, fastest first (the last is the portable one).
// The pushes depend on the target: on some no line but the last pushes.
#[allow(unused_mut, clippy::vec_init_then_push)]
pub fn available() -> Vec<Kernel> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            v.push(x86::AVX512);
            v.push(x86::AVX512_8);
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            v.push(x86::AVX2);
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    v.push(wasm::SIMD128);
    v.push(PORTABLE);
    v
}

/// The variant of `kern` for products of at most `m` rows (fewer rows per tile, so that
/// rank-8 LoRA products do not compute a tile of which a third is padding).
pub fn for_rows(kern: Kernel, m: usize) -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if kern.name == x86::AVX512.name && m <= x86::AVX512_8.mr {
        return x86::AVX512_8;
    }
    let _ = m;
    kern
}

/// Plain Rust over arrays: what the compiler vectorises for the baseline target.
pub const PORTABLE: Kernel = Kernel {
    name: "portable 4x8",
    mr: 4,
    nr: 8,
    run: portable,
};

/// # Safety
/// `a` holds kc·4 values, `b` kc·8, `out` an MR×NR block.
unsafe fn portable(kc: usize, a: *const f32, b: *const f32, out: Out) {
    const MR: usize = 4;
    const NR: usize = 8;
    let a = std::slice::from_raw_parts(a, kc * MR);
    let b = std::slice::from_raw_parts(b, kc * NR);
    let mut acc = [[0f32; NR]; MR];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for i in 0..MR {
            for j in 0..NR {
                // mul + add, not mul_add: without FMA hardware mul_add is a libm call.
                acc[i][j] += ap[i] * bp[j];
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        let c = std::slice::from_raw_parts_mut(out.c.add(i * out.rsc), NR);
        for (x, &t) in c.iter_mut().zip(row) {
            *x = if out.beta == 0.0 {
                out.alpha * t
            } else {
                out.alpha * t + out.beta * *x
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Kernel, Out};
    use std::arch::x86_64::*;

    pub const AVX512: Kernel = Kernel {
        name: "avx512 12x32",
        mr: 12,
        nr: 32,
        run: avx512_12x32,
    };
    pub const AVX512_8: Kernel = Kernel {
        name: "avx512 8x32",
        mr: 8,
        nr: 32,
        run: avx512_8x32,
    };
    pub const AVX2: Kernel = Kernel {
        name: "avx2+fma 6x16",
        mr: 6,
        nr: 16,
        run: avx2_6x16,
    };

    /// # Safety
    /// Only on a CPU with AVX-512F; `a` holds kc·12 values, `b` kc·32 (64-byte aligned),
    /// `out` an MR×NR block.
    unsafe fn avx512_12x32(kc: usize, a: *const f32, b: *const f32, out: Out) {
        avx512::<12>(kc, a, b, out)
    }

    /// # Safety
    /// As [`avx512_12x32`], with 8 rows: `a` holds kc·8 values, `out` an MR×NR block.
    unsafe fn avx512_8x32(kc: usize, a: *const f32, b: *const f32, out: Out) {
        avx512::<8>(kc, a, b, out)
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn avx512<const MR: usize>(kc: usize, a: *const f32, b: *const f32, out: Out) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..kc {
            let b0 = _mm512_load_ps(b.add(p * 32));
            let b1 = _mm512_load_ps(b.add(p * 32 + 16));
            let ap = a.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(i));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
        }
        let (va, vb) = (_mm512_set1_ps(out.alpha), _mm512_set1_ps(out.beta));
        for (i, row) in acc.iter().enumerate() {
            let c = out.c.add(i * out.rsc);
            for (h, &t) in row.iter().enumerate() {
                let ch = c.add(16 * h);
                let t = _mm512_mul_ps(t, va);
                let v = if out.beta == 0.0 {
                    t
                } else {
                    _mm512_fmadd_ps(_mm512_loadu_ps(ch), vb, t)
                };
                _mm512_storeu_ps(ch, v);
            }
        }
    }

    /// # Safety
    /// Only on a CPU with AVX2 and FMA; `a` holds kc·6 values, `b` kc·16 (32-byte
    /// aligned), `out` an MR×NR block.
    unsafe fn avx2_6x16(kc: usize, a: *const f32, b: *const f32, out: Out) {
        avx2::<6>(kc, a, b, out)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2<const MR: usize>(kc: usize, a: *const f32, b: *const f32, out: Out) {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for p in 0..kc {
            let b0 = _mm256_load_ps(b.add(p * 16));
            let b1 = _mm256_load_ps(b.add(p * 16 + 8));
            let ap = a.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(i));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
        }
        let (va, vb) = (_mm256_set1_ps(out.alpha), _mm256_set1_ps(out.beta));
        for (i, row) in acc.iter().enumerate() {
            let c = out.c.add(i * out.rsc);
            for (h, &t) in row.iter().enumerate() {
                let ch = c.add(8 * h);
                let t = _mm256_mul_ps(t, va);
                let v = if out.beta == 0.0 {
                    t
                } else {
                    _mm256_fmadd_ps(_mm256_loadu_ps(ch), vb, t)
                };
                _mm256_storeu_ps(ch, v);
            }
        }
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use super::{Kernel, Out};
    use std::arch::wasm32::*;

    pub const SIMD128: Kernel = Kernel {
        name: "simd128 4x8",
        mr: 4,
        nr: 8,
        run: simd128_4x8,
    };

    /// # Safety
    /// `a` holds kc·4 values, `b` kc·8, `out` an MR×NR block.
    unsafe fn simd128_4x8(kc: usize, a: *const f32, b: *const f32, out: Out) {
        const MR: usize = 4;
        let mut acc = [[f32x4_splat(0.0); 2]; MR];
        for p in 0..kc {
            let b0 = v128_load(b.add(p * 8) as *const v128);
            let b1 = v128_load(b.add(p * 8 + 4) as *const v128);
            let ap = a.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let av = f32x4_splat(*ap.add(i));
                // SIMD128 has no fused multiply-add (only relaxed-simd does).
                row[0] = f32x4_add(row[0], f32x4_mul(av, b0));
                row[1] = f32x4_add(row[1], f32x4_mul(av, b1));
            }
        }
        let (va, vb) = (f32x4_splat(out.alpha), f32x4_splat(out.beta));
        for (i, row) in acc.iter().enumerate() {
            let c = out.c.add(i * out.rsc);
            for (h, &t) in row.iter().enumerate() {
                let ch = c.add(4 * h) as *mut v128;
                let t = f32x4_mul(t, va);
                let v = if out.beta == 0.0 {
                    t
                } else {
                    f32x4_add(t, f32x4_mul(v128_load(ch), vb))
                };
                v128_store(ch, v);
            }
        }
    }
}
