//! The CPU kernel layer's GEMM against a plain triple loop in f64, for every micro-kernel
//! this machine runs and through the threaded dispatch, on shapes that divide no tile (1,
//! 3, 17, 33, 257, …; depths past one packed block, widths past one column block), in the
//! three orientations the reference uses (x·Wᵀ, dy·W, dyᵀ·x), overwriting (β = 0, over
//! NaN) and accumulating.

use edge_llm::cpu::gemm::{kernels, sgemm, sgemm_with, Kernel};
use edge_llm::tolerance::Tol;

/// |got − want| ≤ rel·(|α|·Σₚ|aᵢₚ·bₚⱼ| + |β·c|). f32 products summed in blocks of up to
/// 384 terms with FMA: the rounding error of such a sum is a few ε·√k·Σ|a·b| in practice
/// and at most k·ε·Σ|a·b|; 1e-5 (84 ε) covers the depths tested (≤ 1000) with room, while
/// a wrong index, a lost block or a missed edge gives an error of the order of the scale.
const GEMM_TOL: Tol<f64> = Tol::relative(1e-5);

/// (m, k, n): not multiples of any MR (4, 6, 12) or NR (8, 16, 32); k 400 and 1000 span
/// two and three depth blocks (KC 384), n 800 two column blocks (NC 768).
const SHAPES: [(usize, usize, usize); 12] = [
    (1, 1, 1),
    (1, 3, 17),
    (3, 17, 33),
    (17, 33, 1),
    (33, 1, 257),
    (257, 17, 3),
    (13, 257, 33),
    (33, 400, 17),
    (65, 1000, 40),
    (20, 50, 800),
    (243, 64, 243),
    (257, 33, 8),
];

/// Deterministic values in [−1, 1) with every sign and many magnitudes.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// One orientation: how A (m×k) and B (k×n) are laid out, as (rows, cols, rs, cs) of the
/// stored matrices.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// y = x·Wᵀ: A row-major, B = Wᵀ with W [n][k].
    Nt,
    /// dx += dy·W: both row-major.
    Nn,
    /// dW += dyᵀ·x: A = dyᵀ with dy [k][m], B row-major.
    Tn,
}

impl Layout {
    fn a_strides(self, m: usize, k: usize) -> (isize, isize) {
        match self {
            Layout::Nt | Layout::Nn => (k as isize, 1),
            Layout::Tn => (1, m as isize),
        }
    }
    fn b_strides(self, k: usize, n: usize) -> (isize, isize) {
        match self {
            Layout::Nt => (1, k as isize),
            Layout::Nn | Layout::Tn => (n as isize, 1),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check(
    name: &str,
    run: &dyn Fn(GemmArgs),
    (m, k, n): (usize, usize, usize),
    layout: Layout,
    alpha: f32,
    beta: f32,
    c_transposed: bool,
) {
    let a = values(m * k, (m * 31 + k) as u64);
    let b = values(k * n, (k * 17 + n) as u64);
    let (rsa, csa) = layout.a_strides(m, k);
    let (rsb, csb) = layout.b_strides(k, n);
    let (rsc, csc) = if c_transposed {
        (1, m as isize)
    } else {
        (n as isize, 1)
    };
    let c0: Vec<f32> = if beta == 0.0 {
        vec![f32::NAN; m * n]
    } else {
        values(m * n, 7)
    };
    let mut c = c0.clone();
    run((&a, (rsa, csa), &b, (rsb, csb), &mut c, (rsc, csc)));
    let at =
        |x: &[f32], i: usize, j: usize, rs: isize, cs: isize| x[i * rs as usize + j * cs as usize];
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut scale) = (0f64, 0f64);
            for p in 0..k {
                let prod = at(&a, i, p, rsa, csa) as f64 * at(&b, p, j, rsb, csb) as f64;
                sum += prod;
                scale += prod.abs();
            }
            let old = at(&c0, i, j, rsc, csc) as f64;
            let (want, scale) = if beta == 0.0 {
                (alpha as f64 * sum, alpha.abs() as f64 * scale)
            } else {
                (
                    alpha as f64 * sum + beta as f64 * old,
                    alpha.abs() as f64 * scale + (beta as f64 * old).abs(),
                )
            };
            let got = at(&c, i, j, rsc, csc) as f64;
            let err = (got - want).abs();
            assert!(
                GEMM_TOL.allows(err, scale),
                "{name} {layout:?} m {m} k {k} n {n} α {alpha} β {beta} C transposed \
                 {c_transposed}: C[{i}][{j}] = {got}, want {want} (error {err:e}, scale {scale:e})"
            );
        }
    }
}

/// One product: the kernel, (m, k, n), α and β.
type Case = (Kernel, (usize, usize, usize), f32, f32);

fn every_case(name: &str, run: &dyn Fn(Case, GemmArgs)) {
    for kern in kernels() {
        for &shape in &SHAPES {
            for layout in [Layout::Nt, Layout::Nn, Layout::Tn] {
                for (alpha, beta, ct) in [
                    (1.0, 0.0, false),
                    (1.0, 1.0, false),
                    (0.5, -0.25, false),
                    (1.0, 1.0, true),
                ] {
                    let f = |args: GemmArgs| run((kern, shape, alpha, beta), args);
                    check(
                        &format!("{name} {}", kern.name),
                        &f,
                        shape,
                        layout,
                        alpha,
                        beta,
                        ct,
                    );
                }
            }
        }
    }
}

type GemmArgs<'a> = (
    &'a [f32],
    (isize, isize),
    &'a [f32],
    (isize, isize),
    &'a mut [f32],
    (isize, isize),
);

// Also on wasm32 (the SIMD128 kernel): `wasm-bindgen-test-runner` in Node.
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn every_kernel_matches_the_triple_loop() {
    every_case(
        "sgemm_with",
        &|(kern, mkn, alpha, beta), (a, sa, b, sb, c, sc)| {
            sgemm_with(
                kern,
                mkn,
                alpha,
                (a, sa.0, sa.1),
                (b, sb.0, sb.1),
                beta,
                (c, sc.0, sc.1),
            )
        },
    );
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
#[cfg_attr(not(target_arch = "wasm32"), test)]
fn the_dispatch_matches_the_triple_loop() {
    // The kernel sgemm picks, split over threads as in the engine (the kernel argument is
    // the same for every pass here).
    every_case("sgemm", &|(_, mkn, alpha, beta), (a, sa, b, sb, c, sc)| {
        sgemm(
            mkn,
            alpha,
            (a, sa.0, sa.1),
            (b, sb.0, sb.1),
            beta,
            (c, sc.0, sc.1),
        )
    });
}

#[test]
fn empty_products_scale_or_clear_c() {
    let mut c = vec![2.0f32, f32::NAN];
    sgemm(
        (1, 0, 2),
        1.0,
        (&[], 0, 1),
        (&[], 2, 1),
        0.0,
        (&mut c, 2, 1),
    );
    assert_eq!(c, [0.0, 0.0]);
    let mut c = vec![2.0f32, 4.0];
    sgemm(
        (1, 0, 2),
        1.0,
        (&[], 0, 1),
        (&[], 2, 1),
        0.5,
        (&mut c, 2, 1),
    );
    assert_eq!(c, [1.0, 2.0]);
}

#[test]
#[should_panic(expected = "out of bounds")]
fn an_operand_too_short_panics() {
    let mut c = vec![0f32; 4];
    sgemm(
        (2, 2, 2),
        1.0,
        (&[1.0; 3], 2, 1),
        (&[1.0; 4], 2, 1),
        0.0,
        (&mut c, 2, 1),
    );
}
