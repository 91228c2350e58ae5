//! ggml block formats, bit-exact with llama.cpp's reference (`*_ref`) code.
//!
//! Quantized types store blocks of [`QK`] weights: Q4_0 (f16 d, 16 B of nibbles), Q4_1
//! (f16 d, f16 m, 16 B of nibbles), Q8_0 (f16 d, 32 × i8). Nibble `j` of a block holds
//! weight `j` in its low half and weight `j + 16` in its high half. All multi-byte values
//! are little-endian.

use super::GgmlType;
use half::f16;

/// Weights per block of the quantized types.
pub const QK: usize = 32;
const HALF: usize = QK / 2;

/// Bytes taken by `n_elems` elements of `ty`, or None when `n_elems` is not a whole number
/// of blocks or the size overflows u64.
pub fn n_bytes(ty: GgmlType, n_elems: u64) -> Option<u64> {
    let be = ty.block_elems() as u64;
    if !n_elems.is_multiple_of(be) {
        return None;
    }
    (n_elems / be).checked_mul(ty.block_bytes() as u64)
}

/// Checks that `src` holds exactly `n` elements of `ty` (a whole number of blocks).
fn check_len(ty: GgmlType, src_bytes: usize, n: usize) -> Result<(), String> {
    let want = n_bytes(ty, n as u64).ok_or_else(|| {
        format!(
            "{} elements is not a multiple of the {} block size {}",
            n,
            ty.name(),
            ty.block_elems()
        )
    })?;
    if src_bytes as u64 != want {
        return Err(format!(
            "{} elements of {} need {want} bytes, got {src_bytes}",
            n,
            ty.name()
        ));
    }
    Ok(())
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    // Callers pass fixed-size blocks, so the bytes are always there; 0 keeps this total.
    match (b.get(i), b.get(i + 1)) {
        (Some(&lo), Some(&hi)) => f16::from_le_bytes([lo, hi]).to_f32(),
        _ => 0.0,
    }
}

/// Dequantizes `dst.len()` elements of `ty` from `src`, which must be exactly that many
/// elements' worth of bytes.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), String> {
    check_len(ty, src.len(), dst.len())?;
    match ty {
        GgmlType::F32 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 => {
            for (out, blk) in dst.chunks_exact_mut(QK).zip(src.chunks_exact(18)) {
                let d = f16_at(blk, 0);
                let (lo, hi) = out.split_at_mut(HALF);
                for (j, &q) in blk[2..18].iter().enumerate() {
                    lo[j] = d * ((q & 0x0F) as i32 - 8) as f32;
                    hi[j] = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (out, blk) in dst.chunks_exact_mut(QK).zip(src.chunks_exact(20)) {
                let d = f16_at(blk, 0);
                let m = f16_at(blk, 2);
                let (lo, hi) = out.split_at_mut(HALF);
                for (j, &q) in blk[4..20].iter().enumerate() {
                    lo[j] = d * (q & 0x0F) as f32 + m;
                    hi[j] = d * (q >> 4) as f32 + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (out, blk) in dst.chunks_exact_mut(QK).zip(src.chunks_exact(34)) {
                let d = f16_at(blk, 0);
                for (o, &q) in out.iter_mut().zip(&blk[2..34]) {
                    *o = d * (q as i8) as f32;
                }
            }
        }
    }
    Ok(())
}

/// Quantizes `src` (a whole number of blocks) with llama.cpp's reference quantizers.
///
/// Differs from llama.cpp only where it would write garbage: non-finite inputs to a block
/// type, or a block whose scale does not fit in f16, give an error instead.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, String> {
    let n = n_bytes(ty, src.len() as u64).ok_or_else(|| {
        format!(
            "{} elements is not a multiple of the {} block size {}",
            src.len(),
            ty.name(),
            ty.block_elems()
        )
    })?;
    let mut out = Vec::with_capacity(usize::try_from(n).map_err(|e| e.to_string())?);
    match ty {
        GgmlType::F32 => src
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        GgmlType::F16 => src
            .iter()
            .for_each(|&x| out.extend_from_slice(&f16::from_f32(x).to_le_bytes())),
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => {
            for (b, blk) in src.chunks_exact(QK).enumerate() {
                if let Some(x) = blk.iter().find(|x| !x.is_finite()) {
                    return Err(format!("block {b}: non-finite value {x}"));
                }
                let r = match ty {
                    GgmlType::Q4_0 => quantize_q4_0(blk, &mut out),
                    GgmlType::Q4_1 => quantize_q4_1(blk, &mut out),
                    _ => quantize_q8_0(blk, &mut out),
                };
                r.map_err(|e| format!("block {b}: {e}"))?;
            }
        }
    }
    Ok(out)
}

/// An f16 scale, refusing values that would round to infinity.
fn scale_f16(v: f32, what: &str) -> Result<f16, String> {
    let h = f16::from_f32(v);
    if h.is_finite() {
        Ok(h)
    } else {
        Err(format!("{what} = {v} does not fit in f16"))
    }
}

/// `quantize_row_q8_0_ref`: d = amax/127, q = round(x/d).
fn quantize_q8_0(x: &[f32], out: &mut Vec<u8>) -> Result<(), String> {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&scale_f16(d, "scale d")?.to_le_bytes());
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
    Ok(())
}

/// `quantize_row_q4_0_ref`: d = max/-8 with max the value of largest magnitude (sign kept),
/// q = min(15, trunc(x/d + 8.5)).
fn quantize_q4_0(x: &[f32], out: &mut Vec<u8>) -> Result<(), String> {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&scale_f16(d, "scale d")?.to_le_bytes());
    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    out.extend((0..HALF).map(|j| q(x[j]) | (q(x[j + HALF]) << 4)));
    Ok(())
}

/// `quantize_row_q4_1_ref`: d = (max-min)/15, m = min, q = min(15, trunc((x-min)/d + 0.5)).
fn quantize_q4_1(x: &[f32], out: &mut Vec<u8>) -> Result<(), String> {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        min = min.min(v);
        max = max.max(v);
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&scale_f16(d, "scale d")?.to_le_bytes());
    out.extend_from_slice(&scale_f16(min, "minimum m")?.to_le_bytes());
    let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
    out.extend((0..HALF).map(|j| q(x[j]) | (q(x[j + HALF]) << 4)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f16 keeps 11 significant bits: relative rounding error at most 2^-11 (normal range).
    const F16_REL_ERR: f32 = 1.0 / 2048.0;
    /// Below 2^-14 f16 is subnormal with a fixed step of 2^-24: absolute error ≤ 2^-25.
    const F16_ABS_ERR: f32 = 1.0 / (1u32 << 25) as f32;
    /// Q8_0: half a step (amax/127/2) plus the f16 rounding of d times |q| ≤ 127,
    /// as a fraction of the block's amax; and 127 × the subnormal error of d.
    const Q8_0_ERR_PER_AMAX: f32 = 0.5 / 127.0 + F16_REL_ERR + 1e-6;
    const Q8_0_ERR_ABS: f32 = 127.0 * F16_ABS_ERR;
    /// Q4_0: the step is amax/8; the most negative-of-max value clamps from 16 to 15, a
    /// full step; plus the f16 rounding of d times |q - 8| ≤ 8.
    const Q4_0_ERR_PER_AMAX: f32 = 1.0 / 8.0 + F16_REL_ERR + 1e-6;
    const Q4_0_ERR_ABS: f32 = 8.0 * F16_ABS_ERR;
    /// Q4_1: half a step of (max-min)/15, plus f16 rounding of d (times q ≤ 15) and of m,
    /// as fractions of (max - min) and |min| respectively.
    const Q4_1_ERR_PER_RANGE: f32 = 0.5 / 15.0 + F16_REL_ERR + 1e-6;
    const Q4_1_ERR_PER_ABS_MIN: f32 = F16_REL_ERR;
    const Q4_1_ERR_ABS: f32 = 16.0 * F16_ABS_ERR;

    /// Deterministic test values with varied block scales and signs.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                let scale = [0.01f32, 1.0, 37.0, 1e-3][(i / QK) % 4];
                let offset = if (i / QK).is_multiple_of(3) {
                    0.5 * scale
                } else {
                    0.0
                };
                (u * 2.0 - 1.0) * scale + offset
            })
            .collect()
    }

    fn round_trip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
        let q = quantize(ty, x).unwrap();
        assert_eq!(q.len() as u64, n_bytes(ty, x.len() as u64).unwrap());
        let mut y = vec![0.0; x.len()];
        dequantize(ty, &q, &mut y).unwrap();
        y
    }

    #[test]
    fn round_trip_f32_is_exact() {
        let x = values(96, 1);
        assert_eq!(round_trip(GgmlType::F32, &x), x);
    }

    #[test]
    fn round_trip_f16_within_half_ulp() {
        let x = values(256, 2);
        for (a, b) in x.iter().zip(round_trip(GgmlType::F16, &x)) {
            // Subnormal f16 values have an absolute, not relative, error bound.
            let tol = a.abs() * F16_REL_ERR + f16::MIN_POSITIVE_SUBNORMAL.to_f32();
            assert!((a - b).abs() <= tol, "{a} -> {b}");
        }
    }

    #[test]
    fn round_trip_block_types_within_bounds() {
        let x = values(32 * 64, 3);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let y = round_trip(ty, &x);
            for (xb, yb) in x.chunks(QK).zip(y.chunks(QK)) {
                let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let min = xb.iter().copied().fold(f32::MAX, f32::min);
                let max = xb.iter().copied().fold(-f32::MAX, f32::max);
                let tol = match ty {
                    GgmlType::Q8_0 => amax * Q8_0_ERR_PER_AMAX + Q8_0_ERR_ABS,
                    GgmlType::Q4_0 => amax * Q4_0_ERR_PER_AMAX + Q4_0_ERR_ABS,
                    _ => {
                        (max - min) * Q4_1_ERR_PER_RANGE
                            + min.abs() * Q4_1_ERR_PER_ABS_MIN
                            + Q4_1_ERR_ABS
                    }
                };
                for (a, b) in xb.iter().zip(yb) {
                    assert!((a - b).abs() <= tol, "{}: {a} -> {b}, tol {tol}", ty.name());
                }
            }
        }
    }

    #[test]
    fn zero_block_quantizes_to_zero() {
        let x = [0.0f32; QK];
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            assert!(
                round_trip(ty, &x).iter().all(|&v| v == 0.0),
                "{}",
                ty.name()
            );
        }
    }

    #[test]
    fn hand_made_q4_0_block() {
        // d = 0.5; nibble j = j (low half), 15 - j (high half).
        let mut blk = f16::from_f32(0.5).to_le_bytes().to_vec();
        blk.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut y = [0.0f32; QK];
        dequantize(GgmlType::Q4_0, &blk, &mut y).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], 0.5 * (j as f32 - 8.0));
            assert_eq!(y[j + 16], 0.5 * (7.0 - j as f32));
        }
    }

    #[test]
    fn hand_made_q4_1_block() {
        // d = 0.25, m = -1; nibble j = j (low), 3 (high).
        let mut blk = f16::from_f32(0.25).to_le_bytes().to_vec();
        blk.extend(f16::from_f32(-1.0).to_le_bytes());
        blk.extend((0..16u8).map(|j| j | (3 << 4)));
        let mut y = [0.0f32; QK];
        dequantize(GgmlType::Q4_1, &blk, &mut y).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], 0.25 * j as f32 - 1.0);
            assert_eq!(y[j + 16], -0.25);
        }
    }

    #[test]
    fn hand_made_q8_0_block() {
        // d = 0.125; q = -128, -127, ..., -97 covers the sign bit.
        let mut blk = f16::from_f32(0.125).to_le_bytes().to_vec();
        blk.extend((0..32i32).map(|j| (j - 128) as i8 as u8));
        let mut y = [0.0f32; QK];
        dequantize(GgmlType::Q8_0, &blk, &mut y).unwrap();
        for (j, v) in y.iter().enumerate() {
            assert_eq!(*v, 0.125 * (j as f32 - 128.0));
        }
    }

    #[test]
    fn reference_quantizers_on_exact_grids() {
        // amax 127 → d = 1, q = x.
        let x: Vec<f32> = (0..32).map(|j| (j * 8 - 127).min(127) as f32).collect();
        let q = quantize(GgmlType::Q8_0, &x).unwrap();
        assert_eq!(&q[..2], &f16::from_f32(1.0).to_le_bytes());
        assert!(q[2..].iter().zip(&x).all(|(&b, &v)| b as i8 as f32 == v));

        // max (by magnitude) = -8 → d = 1, q = x + 8; the +7 end is reachable.
        let x: Vec<f32> = (0..32).map(|j| (j % 16) as f32 - 8.0).collect();
        let q = quantize(GgmlType::Q4_0, &x).unwrap();
        assert_eq!(&q[..2], &f16::from_f32(1.0).to_le_bytes());
        assert_eq!(
            q[2..],
            (0..16u8).map(|j| j | (j << 4)).collect::<Vec<_>>()[..]
        );

        // Q4_0 with max = +8: d = -1, so +8 maps to q = 0 and -8 would clamp 16 → 15.
        let mut x = [0.0f32; QK];
        x[0] = 8.0;
        x[1] = -8.0;
        let q = quantize(GgmlType::Q4_0, &x).unwrap();
        assert_eq!(&q[..2], &f16::from_f32(-1.0).to_le_bytes());
        assert_eq!(q[2] & 0xF, 0);
        assert_eq!(q[3] & 0xF, 15);

        // min 0, max 15 → d = 1, m = 0, q = x.
        let x: Vec<f32> = (0..32).map(|j| (j % 16) as f32).collect();
        let q = quantize(GgmlType::Q4_1, &x).unwrap();
        assert_eq!(&q[..2], &f16::from_f32(1.0).to_le_bytes());
        assert_eq!(&q[2..4], &f16::from_f32(0.0).to_le_bytes());
        assert_eq!(
            q[4..],
            (0..16u8).map(|j| j | (j << 4)).collect::<Vec<_>>()[..]
        );
    }

    #[test]
    fn q8_0_rounds_half_away_from_zero() {
        // amax 127 → d = 1; ±2.5 round to ±3 (C roundf), not to even.
        let mut x = [0.0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        let q = quantize(GgmlType::Q8_0, &x).unwrap();
        assert_eq!((q[3] as i8, q[4] as i8), (3, -3));
    }

    #[test]
    fn n_bytes_matches_layouts() {
        assert_eq!(n_bytes(GgmlType::F32, 5), Some(20));
        assert_eq!(n_bytes(GgmlType::F16, 5), Some(10));
        assert_eq!(n_bytes(GgmlType::Q4_0, 64), Some(36));
        assert_eq!(n_bytes(GgmlType::Q4_1, 64), Some(40));
        assert_eq!(n_bytes(GgmlType::Q8_0, 64), Some(68));
        assert_eq!(n_bytes(GgmlType::Q8_0, 33), None);
        assert_eq!(n_bytes(GgmlType::F32, u64::MAX), None);
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let mut y = [0.0f32; QK];
        assert!(dequantize(GgmlType::Q8_0, &[0; 33], &mut y).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[0; 35], &mut y).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0; 18], &mut y[..31]).is_err());
        assert!(dequantize(GgmlType::F32, &[0; 127], &mut y).is_err());
        assert!(quantize(GgmlType::Q4_1, &[0.0; 31]).is_err());
        assert!(quantize(GgmlType::F32, &[0.0; 31]).is_ok());
    }

    #[test]
    fn unrepresentable_inputs_are_errors() {
        let mut x = [0.0f32; QK];
        x[5] = f32::NAN;
        assert!(quantize(GgmlType::Q8_0, &x).is_err());
        x[5] = 1e30; // d = 1e30 / 127 overflows f16
        assert!(quantize(GgmlType::Q8_0, &x).is_err());
        assert!(quantize(GgmlType::Q4_1, &x).is_err());
    }
}
