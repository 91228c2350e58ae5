//! LoRA dropout masks drawn by hashing element indices: the CPU's fast path for the
//! function the GPU evaluates too (shaders/lora.wgsl), millions of elements per step.

/// A 32-bit integer hash (the "lowbias32" constants), written identically in
/// shaders/lora.wgsl.
#[inline(always)]
pub fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// Whether element `i` of the mask keyed `key` is kept: hash32(hash32(i) ^ key) ≥ threshold.
#[inline(always)]
pub fn keeps(key: u32, threshold: u32, i: u32) -> bool {
    hash32(hash32(i) ^ key) >= threshold
}

/// out[j] = `keep` where element `start + j` is kept, 0 where it is dropped (vectorised
/// with AVX2 where the CPU has it: 8 hashes per instruction).
pub fn fill(key: u32, threshold: u32, start: u32, keep: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present.
        unsafe { fill_avx2(key, threshold, start, keep, out) };
        return;
    }
    fill_plain(key, threshold, start, keep, out);
}

#[inline(always)]
fn fill_plain(key: u32, threshold: u32, start: u32, keep: f32, out: &mut [f32]) {
    for (j, x) in out.iter_mut().enumerate() {
        let kept = keeps(key, threshold, start.wrapping_add(j as u32));
        *x = if kept { keep } else { 0.0 };
    }
}

/// # Safety
/// Only on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_avx2(key: u32, threshold: u32, start: u32, keep: f32, out: &mut [f32]) {
    fill_plain(key, threshold, start, keep, out);
}
