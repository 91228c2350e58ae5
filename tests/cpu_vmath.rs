//! The CPU's vectorised exponential and the ops on it against f64's libm.

use edge_llm::cpu::vmath::{exp, exp_sum, swiglu, swiglu_backward};
use edge_llm::tolerance::Tol;

/// |exp(x) − e^x| ≤ 4e-7·e^x: the reduction and the degree-6 polynomial are within ~2 ulp
/// (ε = 1.19e-7) on f32's finite range; a wrong constant or term is off by 1e-4 or more.
const EXP_TOL: Tol<f64> = Tol::relative(4e-7);
/// Ops of a few exponentials and products each: a few ulp more than one exponential.
const OP_TOL: Tol<f64> = Tol::new(2e-6, 1e-30);

fn grid() -> Vec<f32> {
    (0..20_001)
        .map(|i| -87.0 + 175.5 * i as f32 / 20_000.0)
        .chain([0.0, -0.0, 1e-8, -1e-8, 88.7, -87.3])
        .collect()
}

#[test]
fn exp_is_within_a_few_ulp() {
    for x in grid() {
        let want = (x as f64).exp();
        assert!(
            EXP_TOL.close_to(exp(x) as f64, want),
            "exp({x}) = {} want {want}",
            exp(x)
        );
    }
    assert_eq!(exp(f32::NEG_INFINITY), exp(-87.336_54));
    assert!(exp(f32::NAN).is_nan());
    assert!(exp(100.0).is_infinite());
}

#[test]
fn swiglu_and_softmax_sums_match_f64() {
    let g: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.037).collect();
    let u: Vec<f32> = (0..1001)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.21)
        .collect();
    let dh: Vec<f32> = (0..1001)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.3)
        .collect();
    let mut h = vec![0f32; g.len()];
    swiglu(&g, &u, &mut h);
    let (mut dg, mut du) = (vec![0f32; g.len()], vec![0f32; g.len()]);
    swiglu_backward(&dh, &g, &u, &mut dg, &mut du);
    for i in 0..g.len() {
        let (gg, uu, d) = (g[i] as f64, u[i] as f64, dh[i] as f64);
        let s = 1.0 / (1.0 + (-gg).exp());
        assert!(OP_TOL.close_to(h[i] as f64, gg * s * uu), "h[{i}]");
        assert!(OP_TOL.close_to(du[i] as f64, d * gg * s), "du[{i}]");
        let want = d * uu * s * (1.0 + gg * (1.0 - s));
        assert!(OP_TOL.close_to(dg[i] as f64, want), "dg[{i}]");
    }
    for len in [1usize, 15, 16, 17, 243] {
        let mut row: Vec<f32> = (0..len).map(|i| (i as f32 * 0.77).sin() * 9.0).collect();
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let want: Vec<f64> = row.iter().map(|&x| (x as f64 - max as f64).exp()).collect();
        let sum = exp_sum(&mut row, max);
        assert!(
            OP_TOL.close_to(sum as f64, want.iter().sum()),
            "sum of {len}"
        );
        for (x, w) in row.iter().zip(&want) {
            assert!(OP_TOL.close_to(*x as f64, *w));
        }
    }
}
