//! The micro-kernels: an MR×NR tile of A·B from packed panels, one per target.
//!
//! Every kernel reads `kc` steps of a packed A strip (MR values per step) and a packed B
//! panel (NR values per step, 64-byte aligned) and overwrites `tile` (MR×NR, row-major)
//! with their product. Packing pads both to full MR and NR with zeros, so a kernel never
//! sees an edge.

/// A micro-kernel: `run(kc, a, b, tile)` overwrites the MR×NR `tile` with the product of a
/// packed A strip (kc steps of MR values) and a packed B panel (kc steps of NR values).
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub name: &'static str,
    pub mr: usize,
    pub nr: usize,
    pub(super) run: unsafe fn(usize, *const f32, *const f32, *mut f32),
}

/// The fastest kernel this machine runs (chosen once).
pub fn best() -> Kernel {
    static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| available()[0])
}

/// Every kernel this machine runs, fastest first (the last is the portable one).
pub fn available() -> Vec<Kernel> {
    #[allow(unused_mut)]
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
/// `a` holds kc·4 values, `b` kc·8, `tile` 32.
unsafe fn portable(kc: usize, a: *const f32, b: *const f32, tile: *mut f32) {
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
    let tile = std::slice::from_raw_parts_mut(tile, MR * NR);
    for i in 0..MR {
        tile[i * NR..(i + 1) * NR].copy_from_slice(&acc[i]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Kernel;
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
    /// `tile` 384.
    unsafe fn avx512_12x32(kc: usize, a: *const f32, b: *const f32, tile: *mut f32) {
        avx512::<12>(kc, a, b, tile)
    }

    /// # Safety
    /// As [`avx512_12x32`], with 8 rows: `a` holds kc·8 values, `tile` 256.
    unsafe fn avx512_8x32(kc: usize, a: *const f32, b: *const f32, tile: *mut f32) {
        avx512::<8>(kc, a, b, tile)
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn avx512<const MR: usize>(kc: usize, a: *const f32, b: *const f32, tile: *mut f32) {
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
        for (i, row) in acc.iter().enumerate() {
            _mm512_storeu_ps(tile.add(i * 32), row[0]);
            _mm512_storeu_ps(tile.add(i * 32 + 16), row[1]);
        }
    }

    /// # Safety
    /// Only on a CPU with AVX2 and FMA; `a` holds kc·6 values, `b` kc·16 (32-byte
    /// aligned), `tile` 96.
    unsafe fn avx2_6x16(kc: usize, a: *const f32, b: *const f32, tile: *mut f32) {
        avx2::<6>(kc, a, b, tile)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2<const MR: usize>(kc: usize, a: *const f32, b: *const f32, tile: *mut f32) {
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
        for (i, row) in acc.iter().enumerate() {
            _mm256_storeu_ps(tile.add(i * 16), row[0]);
            _mm256_storeu_ps(tile.add(i * 16 + 8), row[1]);
        }
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use super::Kernel;
    use std::arch::wasm32::*;

    pub const SIMD128: Kernel = Kernel {
        name: "simd128 4x8",
        mr: 4,
        nr: 8,
        run: simd128_4x8,
    };

    /// # Safety
    /// `a` holds kc·4 values, `b` kc·8, `tile` 32.
    unsafe fn simd128_4x8(kc: usize, a: *const f32, b: *const f32, tile: *mut f32) {
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
        for (i, row) in acc.iter().enumerate() {
            v128_store(tile.add(i * 8) as *mut v128, row[0]);
            v128_store(tile.add(i * 8 + 4) as *mut v128, row[1]);
        }
    }
}
