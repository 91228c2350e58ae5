//! LUC's CPU core (src/compress/{prune,gptq,policy}.rs): SparseGPT against a direct
//! optimal-brain-surgeon computation, the three pruning methods against each other on a
//! layer's output error, mask validity, and GPTQ against round-to-nearest in the kernels'
//! packed format. Errors are printed (`--nocapture`) for the report.

use edge_llm::compress::gptq::{gptq, gptq_or_rtn, gptq_with_dense, GptqOptions};
use edge_llm::compress::prune::{
    hessian_bytes, prune_magnitude, prune_sparsegpt, prune_wanda, sparsegpt_update, ObsOptions,
    Sparsity, DAMP,
};
use edge_llm::formats::quant::{self, code_in_block, quantize, BITS, GROUPS};
use edge_llm::formats::sparse::ValueType;
use edge_llm::reference::stats::Hessian;
use edge_llm::tolerance::Tol;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// f64 agreement of two mathematically equal computations on small problems:
/// |a − b| ≤ rel·scale, the scale being the values' size (1 where they are of order one).
const F64_TOL: Tol<f64> = Tol::relative(1e-9);

fn uniform(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Calibration rows `[m][k]` with correlated features of very different scales (as LLM
/// activations: a few outlier channels), x = (z·M) ∘ scale.
fn calib(rng: &mut ChaCha8Rng, m: usize, k: usize) -> Vec<f64> {
    let z = uniform(rng, m * k);
    let mut mix = uniform(rng, k * k);
    for (i, v) in mix.iter_mut().enumerate() {
        *v *= 0.4;
        if i % (k + 1) == 0 {
            *v += 1.0;
        }
    }
    let scale: Vec<f64> = (0..k)
        .map(|_| (rng.random_range(-1.5..1.5f64)).exp())
        .collect();
    let mut x = vec![0.0; m * k];
    for r in 0..m {
        for p in 0..k {
            let zp = z[r * k + p];
            for j in 0..k {
                x[r * k + j] += zp * mix[p * k + j];
            }
        }
        for j in 0..k {
            x[r * k + j] *= scale[j];
        }
    }
    x
}

fn hessian(x: &[f64], m: usize, k: usize) -> Hessian {
    let mut h = Hessian::new(k);
    h.add(x, m).unwrap();
    h
}

/// ‖X·Wᵀ − X·Ŵᵀ‖²_F / (m·n) computed directly.
fn direct_mse(x: &[f64], m: usize, k: usize, w: &[f64], w_hat: &[f64], n: usize) -> f64 {
    let mut s = 0.0;
    for r in 0..m {
        for o in 0..n {
            let d: f64 = (0..k)
                .map(|j| x[r * k + j] * (w[o * k + j] - w_hat[o * k + j]))
                .sum();
            s += d * d;
        }
    }
    s / (m * n) as f64
}

/// Inverse of a small dense matrix by Gauss-Jordan with partial pivoting (independent of
/// the Cholesky path under test).
fn invert(a: &[f64], k: usize) -> Vec<f64> {
    let mut a = a.to_vec();
    let mut inv: Vec<f64> = (0..k * k)
        .map(|i| if i % (k + 1) == 0 { 1.0 } else { 0.0 })
        .collect();
    for c in 0..k {
        let p = (c..k)
            .max_by(|&i, &j| a[i * k + c].abs().total_cmp(&a[j * k + c].abs()))
            .unwrap();
        for t in 0..k {
            a.swap(c * k + t, p * k + t);
            inv.swap(c * k + t, p * k + t);
        }
        let d = a[c * k + c];
        for t in 0..k {
            a[c * k + t] /= d;
            inv[c * k + t] /= d;
        }
        for i in 0..k {
            if i != c {
                let f = a[i * k + c];
                for t in 0..k {
                    a[i * k + t] -= f * a[c * k + t];
                    inv[i * k + t] -= f * inv[c * k + t];
                }
            }
        }
    }
    inv
}

#[test]
fn hessian_accumulates_in_parts_and_predicts_output_error() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (m, k, n) = (600, 12, 5);
    let x = calib(&mut rng, m, k);
    let mut whole = hessian(&x, m, k);
    let mut parts = Hessian::new(k);
    parts.add(&x[..100 * k], 100).unwrap();
    parts.add(&x[100 * k..], m - 100).unwrap();
    assert_eq!(parts.rows(), m);
    for (a, b) in whole.matrix().iter().zip(parts.matrix()) {
        assert!(
            F64_TOL.allows((a - b).abs(), a.abs().max(1.0)),
            "{a} vs {b}"
        );
    }
    let w = uniform(&mut rng, n * k);
    let w_hat = uniform(&mut rng, n * k);
    let (got, want) = (
        whole.output_mse(&w, &w_hat, n),
        direct_mse(&x, m, k, &w, &w_hat, n),
    );
    assert!(F64_TOL.allows((got - want).abs(), want), "{got} vs {want}");
    assert!(whole.add(&x[..k + 1], 1).is_err());
    assert_eq!(hessian_bytes(1536), 1536 * 1536 * 8);
}

/// One weight removed from one row: SparseGPT's sweep must apply the OBS update
/// δw_F = −w_q / [H_F⁻¹]_qq · H_F⁻¹[:, q] over the columns F = {q, …, k−1} it has not
/// yet processed (for q = 0, F is every column: the textbook OBS formula), leaving the
/// columns before q as they were. Blocks of 4 make the update cross into later blocks
/// (the lazy path).
#[test]
fn sparsegpt_single_removal_is_obs() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (m, k, n) = (64, 8, 3);
    let x = calib(&mut rng, m, k);
    let hess = hessian(&x, m, k);
    // The damped Hessian, built from X directly.
    let mut h = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..k {
            h[i * k + j] =
                2.0 * (0..m).map(|r| x[r * k + i] * x[r * k + j]).sum::<f64>() / m as f64;
        }
    }
    let lambda = DAMP * (0..k).map(|j| h[j * k + j]).sum::<f64>() / k as f64;
    for j in 0..k {
        h[j * k + j] += lambda;
    }
    let w: Vec<f64> = uniform(&mut rng, n * k)
        .iter()
        .map(|v| v + 1.5 * v.signum())
        .collect();
    for (q, block) in [(0, 128), (1, 4), (5, 4), (6, 128), (7, 4)] {
        // Row 1 loses column q; rows 0 and 2 keep everything.
        let mut keep = vec![true; n * k];
        keep[k + q] = false;
        let got =
            sparsegpt_update(&w, n, k, &hess, &keep, ObsOptions { block, damp: DAMP }).unwrap();
        let f = k - q;
        let mut hf = vec![0.0; f * f];
        for i in 0..f {
            for j in 0..f {
                hf[i * f + j] = h[(q + i) * k + q + j];
            }
        }
        let hinv = invert(&hf, f);
        let mut want = w.clone();
        for t in 0..f {
            want[k + q + t] -= w[k + q] / hinv[0] * hinv[t * f];
        }
        assert_eq!(got.w[k + q], 0.0);
        for (i, (g, e)) in got.w.iter().zip(&want).enumerate() {
            assert!(
                F64_TOL.allows((g - e).abs(), 1.0),
                "q {q} block {block}: w[{}][{}] = {g} vs OBS {e}",
                i / k,
                i % k,
            );
        }
        // The update made the removal cheaper than zeroing alone.
        let mut zeroed = w.clone();
        zeroed[k + q] = 0.0;
        // (The last column has nothing left to update.)
        let (e_obs, e_zero) = (
            hess.output_mse(&w, &got.w, n),
            hess.output_mse(&w, &zeroed, n),
        );
        assert!(
            e_obs < e_zero || (q == k - 1 && e_obs == e_zero),
            "q {q}: {e_obs} vs {e_zero}"
        );
    }
}

/// For a fixed mask the lazy block update is exact: every block size gives the same result.
#[test]
fn sparsegpt_block_size_does_not_change_a_fixed_mask() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (m, k, n) = (200, 37, 4);
    let x = calib(&mut rng, m, k);
    let hess = hessian(&x, m, k);
    let w = uniform(&mut rng, n * k);
    let keep: Vec<bool> = (0..n * k).map(|_| rng.random_bool(0.5)).collect();
    let opts = |block| ObsOptions { block, damp: DAMP };
    let a = sparsegpt_update(&w, n, k, &hess, &keep, opts(128)).unwrap();
    for block in [4, 8, 12] {
        let b = sparsegpt_update(&w, n, k, &hess, &keep, opts(block)).unwrap();
        for (i, (u, v)) in a.w.iter().zip(&b.w).enumerate() {
            assert!(
                F64_TOL.allows((u - v).abs(), 1.0),
                "block {block}: [{i}] {u} vs {v}"
            );
        }
    }
    // 2:4 masks are chosen group by group as the sweep arrives, so they too do not depend
    // on the block size.
    let a = prune_sparsegpt(&w, n, k, &hess, Sparsity::TwoOfFour, opts(128)).unwrap();
    let b = prune_sparsegpt(&w, n, k, &hess, Sparsity::TwoOfFour, opts(8)).unwrap();
    assert_eq!(a.keep, b.keep);
}

fn check_masks(what: &str, p: &edge_llm::compress::prune::Pruned<f64>, s: Sparsity) {
    let (n, k) = (p.n, p.k);
    for r in 0..n {
        for j in 0..k {
            if !p.keep[r * k + j] {
                assert_eq!(p.w[r * k + j], 0.0, "{what}: pruned w[{r}][{j}] not zero");
            }
        }
        match s {
            Sparsity::Unstructured(f) => {
                assert_eq!(
                    p.pruned_in_row(r),
                    (f * k as f64).round() as usize,
                    "{what} row {r}"
                );
            }
            Sparsity::TwoOfFour => {
                for g in (0..k).step_by(4) {
                    let len = (g + 4).min(k) - g;
                    let kept = (g..g + len).filter(|&j| p.keep[r * k + j]).count();
                    assert_eq!(kept, len.min(2), "{what} row {r} group {g}");
                }
            }
        }
    }
    let dense: Vec<f32> = p.w.iter().map(|&v| v as f32).collect();
    match s {
        Sparsity::TwoOfFour => {
            let packed = p.pack_24(ValueType::F32).unwrap();
            assert_eq!(packed.to_dense(), dense, "{what}: 2:4 pack");
        }
        Sparsity::Unstructured(_) => {
            let packed = p.pack_unstructured(ValueType::F32).unwrap();
            assert_eq!(packed.to_dense(), dense, "{what}: unstructured pack");
        }
    }
}

#[test]
fn masks_are_valid_with_exact_row_counts() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    // k = 102 is neither a multiple of the block (32 here) nor of 4.
    let (m, k, n) = (300, 102, 6);
    let x = calib(&mut rng, m, k);
    let hess = hessian(&x, m, k);
    let w = uniform(&mut rng, n * k);
    let opts = ObsOptions {
        block: 32,
        damp: DAMP,
    };
    for s in [
        Sparsity::Unstructured(0.3),
        Sparsity::Unstructured(0.5),
        Sparsity::TwoOfFour,
    ] {
        check_masks("magnitude", &prune_magnitude(&w, n, k, s).unwrap(), s);
        check_masks(
            "wanda",
            &prune_wanda(&w, n, k, &hess.column_norms(), s).unwrap(),
            s,
        );
        check_masks(
            "sparsegpt",
            &prune_sparsegpt(&w, n, k, &hess, s, opts).unwrap(),
            s,
        );
    }
    assert!(prune_magnitude(&w, n, k, Sparsity::Unstructured(1.5)).is_err());
    assert!(prune_sparsegpt(
        &w,
        n,
        k,
        &hess,
        Sparsity::TwoOfFour,
        ObsOptions {
            block: 30,
            damp: DAMP
        }
    )
    .is_err());
}

/// A feature that is zero in every calibration row makes H singular; SparseGPT treats it
/// as dead (its weights cannot matter) instead of failing.
#[test]
fn dead_input_feature_is_handled() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (m, k, n) = (80, 16, 3);
    let mut x = calib(&mut rng, m, k);
    for r in 0..m {
        x[r * k + 3] = 0.0;
    }
    let hess = hessian(&x, m, k);
    let w = uniform(&mut rng, n * k);
    let p = prune_sparsegpt(
        &w,
        n,
        k,
        &hess,
        Sparsity::Unstructured(0.5),
        ObsOptions::default(),
    )
    .unwrap();
    assert!(p.w.iter().all(|v| v.is_finite()));
    assert!((0..n).all(|r| p.w[r * k + 3] == 0.0));
}

#[test]
fn sparsegpt_beats_wanda_beats_magnitude() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    // Two sweep blocks (k = 256) so the lazy update is exercised.
    let (m, k, n) = (1024, 256, 48);
    let x = calib(&mut rng, m, k);
    let hess = hessian(&x, m, k);
    let w = uniform(&mut rng, n * k);
    let norm = hess.output_mse(&w, &vec![0.0; n * k], n);
    for s in [Sparsity::Unstructured(0.5), Sparsity::TwoOfFour] {
        let e = |p: edge_llm::compress::prune::Pruned<f64>| hess.output_mse(&w, &p.w, n) / norm;
        let mag = e(prune_magnitude(&w, n, k, s).unwrap());
        let wanda = e(prune_wanda(&w, n, k, &hess.column_norms(), s).unwrap());
        let sgpt = e(prune_sparsegpt(&w, n, k, &hess, s, ObsOptions::default()).unwrap());
        println!(
            "{s:?}: relative output error (‖ΔY‖²/‖Y‖²) magnitude {mag:.4}, wanda {wanda:.4}, \
             sparsegpt {sgpt:.4}"
        );
        assert!(sgpt < wanda, "{s:?}: sparsegpt {sgpt} ≥ wanda {wanda}");
        assert!(wanda < mag, "{s:?}: wanda {wanda} ≥ magnitude {mag}");
        assert!(sgpt < mag, "{s:?}: sparsegpt {sgpt} ≥ magnitude {mag}");
    }
}

/// With a diagonal Hessian there is no error feedback, so GPTQ must be bit-identical to
/// `quantize` (same scales, same codes, same packed layout) for every width, group and
/// symmetry, on a k that splits blocks and groups unevenly.
#[test]
fn gptq_without_feedback_is_bitwise_rtn() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (k, n) = (200, 5);
    // X = diag(c): orthogonal features, H diagonal.
    let mut x = vec![0.0f64; k * k];
    for j in 0..k {
        x[j * k + j] = rng.random_range(0.5..2.0);
    }
    let hess = hessian(&x, k, k);
    let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0f32)).collect();
    for bits in BITS {
        for group in GROUPS {
            for symmetric in [true, false] {
                let opts = GptqOptions {
                    bits,
                    group,
                    symmetric,
                    obs: ObsOptions::default(),
                };
                let g = gptq(&w, n, k, &hess, opts).unwrap();
                let r = quantize(&w, n, k, bits, group, symmetric).unwrap();
                assert_eq!(g, r, "{bits} bits group {group} symmetric {symmetric}");
            }
        }
    }
}

#[test]
fn gptq_beats_rtn_and_packs_what_it_computed() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (m, k, n) = (1024, 256, 32);
    let x = calib(&mut rng, m, k);
    let hess = hessian(&x, m, k);
    let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0f32)).collect();
    let wd: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let norm = hess.output_mse(&wd, &vec![0.0; n * k], n);
    let rel = |d: &[f32]| {
        let d: Vec<f64> = d.iter().map(|&v| v as f64).collect();
        hess.output_mse(&wd, &d, n) / norm
    };
    for bits in [2, 3, 4] {
        for symmetric in [true, false] {
            let opts = GptqOptions {
                bits,
                group: 32,
                symmetric,
                obs: ObsOptions::default(),
            };
            let (q, dense) = gptq_with_dense(&w, n, k, &hess, opts).unwrap();
            let deq = q.dequantize();
            assert_eq!(
                deq, dense,
                "{bits} bits: packed codes differ from the sweep's values"
            );
            // Every value is on its group's grid, inside the code range (symmetric codes
            // never use the lowest code −2^(b−1)).
            for r in 0..n {
                for j in 0..k {
                    let (s, z) = q.scale(r, j / 32);
                    let code = code_in_block(q.block(r, j / 32), bits, j % 32);
                    assert_eq!(s * code as f32 + z, deq[r * k + j]);
                    assert!(!symmetric || code >= 1, "{bits} bits: code {code}");
                }
            }
            // The kernels' CPU twin reads it.
            let xs: Vec<f32> = x[..3 * k].iter().map(|&v| v as f32).collect();
            let y = quant::qmatmul_nt(&xs, &q, 3);
            let y_ref = edge_llm::reference::ops::matmul_nt(&xs, &deq, 3, k, n);
            for (a, b) in y.iter().zip(&y_ref) {
                assert!(
                    (a - b).abs() <= 1e-4 * (a.abs() + b.abs()).max(1.0),
                    "{a} vs {b}"
                );
            }
            let rtn = rel(&quantize(&w, n, k, bits, 32, symmetric)
                .unwrap()
                .dequantize());
            let gq = rel(&deq);
            println!(
                "{bits}-bit symmetric={symmetric} group 32: relative output error RTN {rtn:.5}, \
                 GPTQ {gq:.5} ({:.2}x lower)",
                rtn / gq
            );
            // At 2 bits (symmetric: only −s, 0, s) the fed-back error overflows the fixed
            // grids and GPTQ loses to RTN here; `gptq_or_rtn` then keeps RTN.
            if bits >= 3 {
                assert!(
                    gq < rtn,
                    "{bits} bits symmetric {symmetric}: GPTQ {gq} ≥ RTN {rtn}"
                );
            }
            let (best, used_gptq, mse) = gptq_or_rtn(&w, n, k, &hess, opts).unwrap();
            assert_eq!(used_gptq, gq < rtn);
            assert_eq!(
                best.dequantize(),
                if gq < rtn {
                    deq.clone()
                } else {
                    quantize(&w, n, k, bits, 32, symmetric)
                        .unwrap()
                        .dequantize()
                }
            );
            assert!(
                F64_TOL.allows((mse / norm - gq.min(rtn)).abs(), 1.0),
                "{mse}"
            );
        }
    }
    let bad = GptqOptions {
        bits: 4,
        group: 64,
        symmetric: true,
        obs: ObsOptions {
            block: 96,
            damp: DAMP,
        },
    };
    assert!(gptq(&w, n, k, &hess, bad).is_err());
}

/// With orthogonal inputs (diagonal H) and no dampening, [U]_jj = 1/‖x_j‖·√(m/2), so
/// SparseGPT's score w²/[U]_jj² ranks like Wanda's (|w|·‖x_j‖)² and no update happens:
/// within one block the two must choose the same mask and the same weights.
#[test]
fn sparsegpt_mask_rule_is_wanda_for_diagonal_hessian() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (k, n) = (90, 7);
    let mut x = vec![0.0f64; k * k];
    for j in 0..k {
        x[j * k + j] = rng.random_range(0.1..3.0);
    }
    let hess = hessian(&x, k, k);
    let w = uniform(&mut rng, n * k);
    let opts = ObsOptions {
        block: 128,
        damp: 0.0,
    };
    for s in [Sparsity::Unstructured(0.5), Sparsity::TwoOfFour] {
        let a = prune_sparsegpt(&w, n, k, &hess, s, opts).unwrap();
        let b = prune_wanda(&w, n, k, &hess.column_norms(), s).unwrap();
        assert_eq!(a.keep, b.keep, "{s:?}");
        for (u, v) in a.w.iter().zip(&b.w) {
            assert!(F64_TOL.allows((u - v).abs(), 1.0), "{s:?}: {u} vs {v}");
        }
    }
}

/// Timing at SmolLM2-135M's largest shape (down_proj: n = 576, k = 1536); prints only.
/// `cargo test --release --test compress -- --ignored --nocapture`.
#[test]
#[ignore]
fn time_smollm2_down_proj() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let (m, k, n) = (2048, 1536, 576);
    let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0f32)).collect();
    let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0f32)).collect();
    let t = std::time::Instant::now();
    let hess = {
        let mut h = Hessian::new(k);
        h.add(&x, m).unwrap();
        h
    };
    println!("Hessian of {m} rows: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let s = Sparsity::Unstructured(0.5);
    prune_sparsegpt(&w, n, k, &hess, s, ObsOptions::default()).unwrap();
    println!("SparseGPT 50 %: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let opts = GptqOptions {
        bits: 4,
        group: 32,
        symmetric: true,
        obs: ObsOptions::default(),
    };
    gptq(&w, n, k, &hess, opts).unwrap();
    println!("GPTQ 4-bit: {:?}", t.elapsed());
}
