//! LUC end to end on the tiny model: the sensitivity profile (cached), compression by a
//! policy into the compressed-model file, and that file loading back through `ModelFile`
//! with exactly the weights the compressor produced. Sizes are printed (`--nocapture`).

mod common;
use common::TEXT;
use edge_llm::compress::calibration::{calibration_rows, collect_hessians, fisher_diagonal};
use edge_llm::compress::file;
use edge_llm::compress::pipeline::profile_cached;
use edge_llm::compress::policy::{self, Pattern, Policy, PruneMethod, QuantMethod};
use edge_llm::compress::profile::{
    fisher_error, output_mse_gemm, prune_proj, weight_of, ErrorSource, ProfileOptions,
    FISHER_SPARSITIES, SPARSITIES,
};
use edge_llm::compress::prune::Sparsity;
use edge_llm::data::Dataset;
use edge_llm::eval::{perplexity, CpuLm};
use edge_llm::formats::packed::{self, Packed, TensorFormat};
use edge_llm::formats::quant::BITS;
use edge_llm::gguf::{GgmlType, GgufWriter};
use edge_llm::model::tiny::{generate, TinySpec};
use edge_llm::model::ModelFile;
use edge_llm::reference::stats::LayerHessians;
use edge_llm::reference::{Proj, Transformer};
use edge_llm::tokenizer::Tokenizer;
use edge_llm::tolerance::Tol;
use edge_llm::train::Row;
use pollster::block_on;

/// Two f64 summation orders of the same quadratic form.
const MSE_TOL: Tol<f64> = Tol::relative(1e-9);
/// serde_json's float parsing may be off by an ulp.
const JSON_TOL: Tol<f64> = Tol::relative(1e-15);

/// The tiny model with every tensor stored F32 (the generator stores projections Q4_1,
/// the default model's type), so sizes compare against dense f32.
fn tiny() -> ModelFile {
    let q = ModelFile::from_bytes(generate(&TinySpec::default()).unwrap()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &q.gguf.metadata {
        w.kv(k, v.clone());
    }
    for t in &q.gguf.tensors {
        let data = q.gguf.tensor_f32(&q.bytes, &t.name).unwrap();
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.tensor(&t.name, &t.dims, GgmlType::F32, bytes);
    }
    ModelFile::from_bytes(w.to_bytes()).unwrap()
}

fn calib(file: &ModelFile) -> Vec<Row> {
    let tok = Tokenizer::from_gguf(&file.gguf).unwrap();
    let ds = Dataset::parse("calib.txt", &TEXT.repeat(4)).unwrap();
    calibration_rows(&ds, &tok, 6, 48).unwrap()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("edge-llm-luc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn profile_measures_and_caches() {
    let file = tiny();
    let rows = calib(&file);
    assert_eq!(rows.len(), 6);
    let dir = temp_dir("profile");
    // Δloss too (off by default: the policy reads the Fisher estimate).
    let opts = ProfileOptions {
        loss_rows: 2,
        ..ProfileOptions::default()
    };
    let mut calls = 0;
    let first = block_on(profile_cached(
        &dir,
        &file,
        &rows,
        &opts,
        None,
        &mut |_, _, _| calls += 1,
    ))
    .unwrap();
    assert!(!first.cached && calls > 0);
    let p = &first.profile;
    let n = file.config.n_layers;
    p.check(n).unwrap();
    assert!(p.base_loss.is_some_and(f64::is_finite));
    for (l, lp) in p.layers.iter().enumerate() {
        assert_eq!(lp.prune_dloss.len(), SPARSITIES.len());
        assert_eq!(lp.quant_dloss.len(), BITS.len());
        assert!(lp
            .prune_dloss
            .iter()
            .chain(&lp.quant_dloss)
            .all(|v| v.is_finite()));
        // More zeros and fewer bits cost more, at the extremes at least.
        assert!(lp.prune_mse[6] > lp.prune_mse[0], "layer {l}: {lp:?}");
        assert!(lp.quant_mse[0] > lp.quant_mse[3], "layer {l}: {lp:?}");
        println!(
            "layer {l}: prune mse {:?}\n         quant mse {:?}\n         prune dloss {:?}",
            lp.prune_mse, lp.quant_mse, lp.prune_dloss
        );
    }
    // The Fisher estimate on its finer grid: what the policies read when present.
    assert!(p.has_fisher() && p.error_source() == ErrorSource::Fisher);
    for (l, lp) in p.layers.iter().enumerate() {
        assert_eq!(lp.prune_fisher.len(), FISHER_SPARSITIES.len());
        assert_eq!(lp.quant_fisher.len(), BITS.len());
        let (pf, qf) = (&lp.prune_fisher, &lp.quant_fisher);
        assert!(
            pf[pf.len() - 1] > pf[0] && qf[0] > qf[3],
            "layer {l}: {pf:?} {qf:?}"
        );
        // Storing the kept weights at 2 bits adds to the pruning's error; at 8 bits little.
        assert_eq!(lp.joint_fisher.len(), FISHER_SPARSITIES.len());
        for (j, row) in lp.joint_fisher.iter().enumerate() {
            assert!(
                row[0] > pf[j] && row[0] > row[3],
                "layer {l} level {j}: {row:?}"
            );
        }
    }
    let (grid, errs) = p.prune_errors(None);
    assert_eq!(grid.len(), FISHER_SPARSITIES.len() + 1);
    assert!(errs
        .iter()
        .all(|e| e[0] == 0.0 && e.windows(2).all(|w| w[0] <= w[1])));
    // Sensitivities (Fisher here; the measured loss change is kept beside it) are finite;
    // Δloss may be slightly negative on a few rows (noise).
    assert!(p.has_dloss());
    for s in p.prune_sensitivity().iter().chain(&p.quant_sensitivity()) {
        assert!(s.is_finite());
    }
    assert!(p.to_svg().starts_with("<svg") && p.table().lines().count() == n + 1);

    // The fast output MSE is Hessian::output_mse.
    let model = Transformer::new(file.weights().unwrap());
    let hess = collect_hessians(&model, &rows, &mut |_, _| {}).unwrap();
    let lw = &model.w.layers[1];
    for p in Proj::ALL {
        let (k, n) = p.shape(&file.config);
        let h = hess[1].of(p);
        let w = weight_of(lw, p);
        let w_hat = prune_proj(
            lw,
            p,
            &file.config,
            h,
            PruneMethod::Wanda,
            Sparsity::Unstructured(0.3),
        )
        .unwrap();
        let (a, b) = (
            h.output_mse(&w, &w_hat, n),
            output_mse_gemm(&h.matrix(), k, &w, &w_hat, n),
        );
        assert!(MSE_TOL.allows((a - b).abs(), a), "{p:?}: {a} vs {b}");
    }

    // Second run: read from the cache, no measurement.
    let mut calls2 = 0;
    let second = block_on(profile_cached(
        &dir,
        &file,
        &rows,
        &opts,
        None,
        &mut |_, _, _| calls2 += 1,
    ))
    .unwrap();
    assert!(second.cached && calls2 == 0);
    // The cache holds JSON numbers: equal to the last bit or so.
    assert_eq!(second.profile.key, first.profile.key);
    let (a, b) = (&second.profile.layers, &first.profile.layers);
    for (x, y) in a.iter().zip(b) {
        for (u, v) in x
            .prune_mse
            .iter()
            .chain(&x.quant_mse)
            .zip(y.prune_mse.iter().chain(&y.quant_mse))
        {
            assert!(JSON_TOL.close_to(*u, *v), "{u} vs {v}");
        }
    }
    assert_eq!(second.path, first.path);
    // Other settings or data are another key.
    let other = ProfileOptions {
        loss_rows: 0,
        method: PruneMethod::Magnitude,
        ..opts
    };
    let third = block_on(profile_cached(
        &dir,
        &file,
        &rows[..3],
        &other,
        None,
        &mut |_, _, _| {},
    ))
    .unwrap();
    assert!(!third.cached && third.path != first.path);
    assert!(third.profile.base_loss.is_none() && third.profile.layers[0].prune_dloss.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Fisher diagonal is the mean over rows of the squared gradient of each row's loss
/// (rows without a target skipped), and the estimate of a change is ½ Σ F·Δw².
#[test]
fn fisher_diagonal_is_the_mean_squared_row_gradient() {
    let file = tiny();
    let mut rows = calib(&file);
    rows.truncate(2);
    let mut blank = rows[0].clone();
    blank.targets.iter_mut().for_each(|t| *t = None);
    let model = Transformer::new(file.weights().unwrap());
    let f = fisher_diagonal(
        &model,
        &[rows[0].clone(), blank.clone(), rows[1].clone()],
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(f.len(), file.config.n_layers);
    let grads: Vec<_> = rows
        .iter()
        .map(|r| {
            let acts = model.forward_train(&r.tokens, None);
            model.backward(&acts, &r.targets, true).base.unwrap()
        })
        .collect();
    let mut largest = 0.0f32;
    for (l, fl) in f.iter().enumerate() {
        for (pi, p) in Proj::ALL.into_iter().enumerate() {
            let a = p.weight(&grads[0].layers[l]).dense().unwrap();
            let b = p.weight(&grads[1].layers[l]).dense().unwrap();
            assert_eq!(fl[pi].len(), a.len(), "layer {l} {p:?}");
            for ((&v, &x), &y) in fl[pi].iter().zip(a).zip(b) {
                let want = (x * x + y * y) / 2.0;
                assert!(
                    (v - want).abs() <= 1e-6 * want.abs().max(1e-30),
                    "{l} {p:?}: {v} vs {want}"
                );
                largest = largest.max(v);
            }
        }
    }
    assert!(largest > 0.0);
    // ½ Σ F Δw², on a change of two weights.
    let fl = &f[1][Proj::Up.index()];
    let w = weight_of(&model.w.layers[1], Proj::Up).to_vec();
    let mut w_hat = w.clone();
    w_hat[3] += 0.5;
    w_hat[10] -= 2.0;
    let want = 0.5 * (fl[3] as f64 * 0.25 + fl[10] as f64 * 4.0);
    let got = fisher_error(fl, &w, &w_hat);
    assert!(
        (got - want).abs() <= 1e-12 * want.max(1e-30),
        "{got} vs {want}"
    );
    // No row with a target: a plain error.
    assert!(fisher_diagonal(&model, &[blank], &mut |_, _| {}).is_err());
}

struct Compressed {
    bytes: Vec<u8>,
    tensors: Vec<packed::CompressedTensor>,
}

fn compress(file: &ModelFile, hess: &[LayerHessians], policy: &Policy) -> Compressed {
    let w = file.weights().unwrap();
    let (tensors, reports) = file::compress_model(&w, Some(hess), policy, &mut |_, _| {}).unwrap();
    assert_eq!(reports.len(), file.config.n_layers * 7);
    let bytes = file::write(&file.gguf, &file.bytes, policy, &tensors).unwrap();
    Compressed { bytes, tensors }
}

/// Loads the file back and checks weights, policy, untouched tensors and perplexity;
/// returns the perplexity.
fn check_round_trip(orig: &ModelFile, c: &Compressed, policy: &Policy, text: &[u32]) -> f64 {
    let back = ModelFile::from_bytes(c.bytes.clone()).unwrap();
    assert!(packed::is_compressed(&back.gguf));
    let n = orig.config.n_layers;
    assert_eq!(
        file::policy_of(&back.gguf, n).unwrap().as_ref(),
        Some(policy)
    );
    assert_eq!(back.config.n_layers, orig.config.n_layers);
    let w = back.weights().unwrap();
    let w0 = orig.weights().unwrap();
    assert_eq!(w.tok_embd, w0.tok_embd);
    assert_eq!(w.output_norm, w0.output_norm);
    for t in &c.tensors {
        let (l, p) = (0..n)
            .flat_map(|l| Proj::ALL.map(|p| (l, p)))
            .find(|&(l, p)| file::proj_name(l, p) == t.name)
            .unwrap();
        let got = weight_of(&w.layers[l], p);
        assert_eq!(got, t.packed.to_dense().as_slice(), "{}", t.name);
        assert_eq!(
            packed::read_tensor(&back.gguf, &back.bytes, &t.name)
                .unwrap()
                .as_ref(),
            Some(&t.packed)
        );
    }
    let model = Transformer::new(w);
    let ppl = block_on(perplexity(
        &mut CpuLm::new(&model),
        text,
        64,
        &mut |_, _| {},
    ))
    .unwrap();
    assert!(ppl.perplexity.is_finite(), "{ppl:?}");
    ppl.perplexity
}

#[test]
fn compressed_file_round_trips_and_is_smaller() {
    let orig = tiny();
    let rows = calib(&orig);
    let model = Transformer::new(orig.weights().unwrap());
    let hess = collect_hessians(&model, &rows, &mut |_, _| {}).unwrap();
    let tok = Tokenizer::from_gguf(&orig.gguf).unwrap();
    let text = tok.encode(TEXT).unwrap();
    let base = block_on(perplexity(
        &mut CpuLm::new(&model),
        &text,
        64,
        &mut |_, _| {},
    ))
    .unwrap();
    let n = orig.config.n_layers;
    let proj_f32: usize = Proj::ALL
        .iter()
        .map(|p| {
            let (k, o) = p.shape(&orig.config);
            4 * k * o * n
        })
        .sum();
    println!(
        "tiny: file {} bytes (f32), projections {proj_f32} bytes, ppl {:.3}",
        orig.bytes.len(),
        base.perplexity
    );

    // Uniform 4-bit (GPTQ) and 3-bit, dense.
    for bits in [4, 3] {
        let p = policy::uniform(n, 0.0, bits).unwrap();
        let c = compress(&orig, &hess, &p);
        assert!(c.tensors.iter().all(
            |t| matches!(t.packed.format(), TensorFormat::Quant { bits: b, .. } if b == bits)
        ));
        let ppl = check_round_trip(&orig, &c, &p, &text);
        assert!(c.bytes.len() < orig.bytes.len());
        let packed: usize = c.tensors.iter().map(|t| t.packed.bytes()).sum();
        println!(
            "{bits}-bit: file {} bytes, projections {packed} bytes ({:.1} % of f32), ppl {ppl:.3}",
            c.bytes.len(),
            100.0 * packed as f64 / proj_f32 as f64
        );
    }

    // 50 % 2:4 with int8 values (SparseGPT).
    let mut p = policy::uniform(n, 0.5, 8).unwrap();
    p.pattern = Pattern::TwoOfFour;
    let c = compress(&orig, &hess, &p);
    for t in &c.tensors {
        let Packed::Sparse24(s) = &t.packed else {
            panic!("{} is not 2:4", t.name)
        };
        let d = s.to_dense();
        for g in d.chunks(4) {
            assert!(g.iter().filter(|v| **v != 0.0).count() <= 2);
        }
    }
    let ppl = check_round_trip(&orig, &c, &p, &text);
    assert!(c.bytes.len() < orig.bytes.len());
    let packed: usize = c.tensors.iter().map(|t| t.packed.bytes()).sum();
    println!(
        "2:4 int8: file {} bytes, projections {packed} bytes ({:.1} % of f32), ppl {ppl:.3}",
        c.bytes.len(),
        100.0 * packed as f64 / proj_f32 as f64
    );

    // Unstructured 50 % int4 (Wanda, RTN for nothing dense) and a mixed policy.
    let mut p = Policy::from_layers(&[0.5, 0.0], &[4, 8], policy::Allocation::Manual).unwrap();
    p.prune = PruneMethod::Wanda;
    p.quant = QuantMethod::Rtn;
    let c = compress(&orig, &hess, &p);
    assert!(matches!(c.tensors[0].packed, Packed::Unstructured(_)));
    assert!(matches!(
        c.tensors[7].packed.format(),
        TensorFormat::Quant { bits: 8, .. }
    ));
    check_round_trip(&orig, &c, &p, &text);
}

#[test]
fn damaged_compressed_file_is_an_error_not_a_panic() {
    let orig = tiny();
    let n = orig.config.n_layers;
    let mut p = policy::uniform(n, 0.5, 4).unwrap();
    p.prune = PruneMethod::Magnitude;
    let w = orig.weights().unwrap();
    let (mut tensors, _) = file::compress_model(&w, None, &p, &mut |_, _| {}).unwrap();
    let Packed::Unstructured(u) = &mut tensors[3].packed else {
        panic!("not unstructured")
    };
    u.row_ptr[1] = 0; // row 0's values no longer fit
    let bytes = file::write(&orig.gguf, &orig.bytes, &p, &tensors).unwrap();
    let back = ModelFile::from_bytes(bytes).unwrap();
    let e = back.weights().unwrap_err().to_string();
    assert!(
        e.contains("blk.0.attn_output.weight") && e.contains("damaged"),
        "{e}"
    );

    // A policy that does not validate is refused when read.
    let mut bad = p.clone();
    bad.layers[0].bits = 5;
    let (t2, _) = file::compress_model(&w, None, &p, &mut |_, _| {}).unwrap();
    let bytes = file::write(&orig.gguf, &orig.bytes, &bad, &t2).unwrap();
    let back = ModelFile::from_bytes(bytes).unwrap();
    assert!(file::policy_of(&back.gguf, n).is_err());
}

/// Sparse layers keep the policy's grid inside the int4 container: at 3 and 2 bits every
/// code is within ±3 and ±1 (at 4 bits codes reach ±7), so "3 bits" costs 3-bit accuracy
/// even where it is stored in nibbles, and the reconstruction error grows as bits fall.
#[test]
fn sparse_layers_keep_the_policy_grid() {
    let orig = tiny();
    let n = orig.config.n_layers;
    let w = orig.weights().unwrap();
    let mut errs = Vec::new();
    for (bits, qmax) in [(4u32, 7i32), (3, 3), (2, 1)] {
        let mut p = policy::uniform(n, 0.5, bits).unwrap();
        p.prune = PruneMethod::Magnitude;
        let (tensors, _) = file::compress_model(&w, None, &p, &mut |_, _| {}).unwrap();
        let (mut widest, mut err) = (0i32, 0.0f64);
        for l in 0..n {
            for proj in Proj::ALL {
                let name = file::proj_name(l, proj);
                let t = tensors.iter().find(|t| t.name == name).unwrap();
                let Packed::Unstructured(u) = &t.packed else {
                    panic!("{name}: not unstructured")
                };
                let src = edge_llm::compress::profile::weight_of(&w.layers[l], proj);
                for (i, &v) in u.to_dense().iter().enumerate() {
                    if v != 0.0 {
                        let code = (v / u.values.scale(i / u.cols, i % u.cols)).round() as i32;
                        widest = widest.max(code.abs());
                        err += f64::from(v - src[i]).powi(2);
                    }
                }
            }
        }
        assert_eq!(widest, qmax, "{bits} bits: widest code");
        errs.push(err);
    }
    assert!(
        errs[0] < errs[1] && errs[1] < errs[2],
        "error by bits 4, 3, 2: {errs:?}"
    );
}

const BIN: &str = env!("CARGO_BIN_EXE_edge-llm");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .output()
        .expect("run edge-llm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_profile_compress_and_load() {
    let dir = temp_dir("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let p = |n: &str| dir.join(n).display().to_string();
    let tiny = p("tiny.gguf");
    std::fs::write(&tiny, generate(&TinySpec::default()).unwrap()).unwrap();
    std::fs::write(p("calib.txt"), TEXT.repeat(4)).unwrap();
    let calib = [
        "--calib",
        &p("calib.txt"),
        "--calib-rows",
        "4",
        "--seq-len",
        "48",
        "--cache-dir",
        &p("cache"),
    ];
    let profile: Vec<&str> = [&["profile", "--model", &tiny, "--json"][..], &calib].concat();
    let (code, out, err) = run(&profile);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["cached"], false);
    assert!(std::path::Path::new(v["svg"].as_str().unwrap()).exists());
    let (code, out, err) = run(&profile);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("profile: cached"), "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["cached"],
        true
    );

    let compress = |extra: &[&str]| {
        let args: Vec<&str> = [&["compress", "--model", &tiny][..], &calib, extra].concat();
        run(&args)
    };
    // LUC is the default allocation.
    let (code, out, err) = compress(&["--sparsity", "0.3", "--bits", "3", "--out", &p("luc.gguf")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("profile: cached") && out.contains("\"allocation\": \"luc\""),
        "{out}{err}"
    );
    let (code, out, err) = run(&[
        "perplexity",
        "--model",
        &p("luc.gguf"),
        "--text",
        &p("calib.txt"),
        "--device",
        "cpu",
        "--max-tokens",
        "64",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let ppl: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ppl["perplexity"].as_f64().unwrap().is_finite());

    // On a cache miss, compress calibrates once: the profile's Hessians serve the
    // compression, and the profile it measured is cached for the next run. It says how far
    // the profile supports a per-layer choice.
    let (cache2, one) = (p("cache2"), p("one.gguf"));
    let fresh: Vec<&str> = calib
        .iter()
        .map(|&a| {
            if a.ends_with("cache") {
                cache2.as_str()
            } else {
                a
            }
        })
        .collect();
    let head = [
        "compress",
        "--model",
        &tiny,
        "--sparsity",
        "0.3",
        "--out",
        &one,
    ];
    let args: Vec<&str> = [&head[..], &fresh].concat();
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let passes = err.lines().filter(|l| l.starts_with("calibrate:")).count();
    assert_eq!(passes, 1, "one calibration pass: {err}");
    assert!(
        err.contains("profile: measured") && err.contains("saved to"),
        "{err}"
    );
    assert!(
        err.contains("less than uniform"),
        "the expected gain: {err}"
    );
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("profile: cached"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("calibrate:")).count(),
        1,
        "{err}"
    );

    // A policy file with the wrong layer count is refused in one line.
    let bad = policy::uniform(3, 0.0, 4).unwrap().to_json();
    std::fs::write(p("bad.json"), bad).unwrap();
    let (code, _, err) = compress(&["--policy", &p("bad.json"), "--out", &p("x.gguf")]);
    assert_eq!(code, 1);
    assert!(
        err.trim_end()
            .lines()
            .last()
            .unwrap()
            .contains("3 layer entries"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench compress` on the tiny model: every calibration set × budget × policy is compressed
/// from one calibration, scored on the development and test texts, the rule chosen on the
/// development texts only, the zero-shot task run for uniform and the chosen rule; a second
/// run compresses and scores nothing again.
#[test]
fn bench_compress_chooses_on_dev_and_resumes() {
    let dir = temp_dir("bench-compress");
    std::fs::create_dir_all(&dir).unwrap();
    let p = |n: &str| dir.join(n).display().to_string();
    let tiny = p("tiny.gguf");
    let spec = TinySpec {
        n_layers: 4,
        ..TinySpec::default()
    };
    std::fs::write(&tiny, generate(&spec).unwrap()).unwrap();
    std::fs::write(p("a.txt"), TEXT.repeat(6)).unwrap();
    std::fs::write(p("b.txt"), TEXT.replace("the", "a").repeat(6)).unwrap();
    std::fs::write(p("dev.txt"), TEXT.repeat(3)).unwrap();
    std::fs::write(p("test.txt"), TEXT.to_uppercase().repeat(3)).unwrap();
    let mc = r#"{"question": "What is warm?", "choices": ["the mat", "the bird"], "answer": 0}
{"question": "Who sings?", "choices": ["the bird", "the dog"], "answer": 0}
"#;
    std::fs::write(p("mc.jsonl"), mc).unwrap();
    let calib = format!("a={},b={}", p("a.txt"), p("b.txt"));
    let (cache, out) = (p("cache"), p("out"));
    let test = format!("{},{}", p("test.txt"), p("dev.txt"));
    let args = [
        "bench",
        "compress",
        "--model",
        &tiny,
        "--calib",
        &calib,
        "--calib-rows",
        "4",
        "--calib-seq-len",
        "32",
        "--fisher-rows",
        "4",
        "--budgets",
        "0.3:4,0.5:8",
        "--rules",
        "shrunk,owl",
        "--dev-text",
        &p("dev.txt"),
        "--test-text",
        &test,
        "--ppl-windows",
        "2",
        "--ppl-len",
        "24",
        "--mc",
        &p("mc.jsonl"),
        "--questions",
        "2",
        "--device",
        "cpu",
        "--cache-dir",
        &cache,
        "--out",
        &out,
        "--json",
    ];
    let (code, stdout, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let summaries: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(summaries.len(), 2, "one per budget: {stdout}");
    for s in &summaries {
        assert!(
            ["shrunk", "owl"].contains(&s["rule"].as_str().unwrap()),
            "{s}"
        );
        // Two calibration sets × two test texts.
        assert_eq!(s["test_ratios"].as_array().unwrap().len(), 4, "{s}");
        assert!(s["test_vs_uniform"].as_f64().unwrap().is_finite());
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("out/results.json")).unwrap()).unwrap();
    let entries = r["entries"].as_array().unwrap();
    assert_eq!(
        entries.len(),
        2 * 2 * 3,
        "calibration sets × budgets × policies"
    );
    for e in entries {
        let sp: Vec<f64> = e["layer_sparsity"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let target = e["budget"]["sparsity"].as_f64().unwrap();
        let mean = sp.iter().sum::<f64>() / sp.len() as f64;
        assert!((mean - target).abs() < 1e-9, "{e}");
        let chosen = summaries
            .iter()
            .any(|s| s["sparsity"] == e["budget"]["sparsity"] && s["rule"] == e["policy"]);
        let scored = e["scores"]["accuracy"].is_array();
        assert_eq!(scored, chosen || e["policy"] == "uniform", "{e}");
    }
    assert_eq!(r["gains"].as_array().unwrap().len(), 4);
    assert!(std::fs::read_to_string(p("out/table.md"))
        .unwrap()
        .contains("(chosen)"));
    let (code, again, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("compressing") && !err.contains("calibrating"),
        "{err}"
    );
    assert_eq!(again, stdout, "a resumed run reports the same");
    let _ = std::fs::remove_dir_all(&dir);
}
