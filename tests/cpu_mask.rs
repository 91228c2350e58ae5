//! The CPU's vectorised dropout-mask fill draws exactly the mask of the scalar predicate
//! (the function the GPU evaluates too), at any start and length, and the f32 masks of
//! the reference equal its generic (f64) ones.

use edge_llm::cpu::mask::{fill, keeps};
use edge_llm::reference::Dropout;

#[test]
fn the_fill_equals_the_predicate() {
    for (key, threshold) in [
        (0u32, 0u32),
        (0x1234_5678, 1 << 30),
        (7, u32::MAX),
        (99, 429_496_730),
    ] {
        for (start, len) in [
            (0u32, 1usize),
            (5, 7),
            (1000, 33),
            (u32::MAX - 3, 9),
            (77, 5000),
        ] {
            let mut out = vec![f32::NAN; len];
            fill(key, threshold, start, 1.25, &mut out);
            for (j, &x) in out.iter().enumerate() {
                let want = if keeps(key, threshold, start.wrapping_add(j as u32)) {
                    1.25
                } else {
                    0.0
                };
                assert_eq!(
                    x,
                    want,
                    "key {key} threshold {threshold} element {}",
                    start as usize + j
                );
            }
        }
    }
}

#[test]
fn f32_masks_equal_the_generic_ones() {
    let d = Dropout::new(42, 3, 0.1).unwrap();
    let n = 100_003; // several threaded chunks and a ragged end
    let m32 = d.mask::<f32>(n);
    let m64 = d.mask::<f64>(n);
    assert!(m32.iter().zip(&m64).all(|(&a, &b)| a == b as f32));
    let kept = m32.iter().filter(|&&x| x != 0.0).count() as f64 / n as f64;
    assert!((kept - 0.9).abs() < 0.01, "kept {kept}");
}
