//! PEFT adapter export/import: round trips, hostile inputs, and a numeric cross-check of
//! the exported Hugging Face layout against an independent NumPy forward pass
//! (scripts/check_adapter.py). The cross-check is skipped with a note when .venv is absent,
//! unless EDGE_LLM_REQUIRE_PYTHON=1.

mod common;
use common::{max_abs_diff, range};
use edge_llm::adapter::{
    check_base_model_id, choose_base_model, export_peft, import_peft, load_dir, permute_rows,
    save_dir, tensor_name, CONFIG_FILE,
};
use edge_llm::model::tiny::{generate, TinySpec};
use edge_llm::model::{LlamaConfig, ModelFile};
use edge_llm::reference::{Lora, LoraConfig, Proj, Transformer};
use edge_llm::tolerance::Tol;
use edge_llm::Error;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// Python's float64 forward vs ours in f32 (both dequantize the same Q4_1 weights):
/// max |Δlogit| must stay within this fraction of the logit range.
const NUMPY_LOGIT_TOL: Tol = Tol::relative(1e-3);

fn tiny() -> (Vec<u8>, ModelFile) {
    let bytes = generate(&TinySpec::default()).unwrap();
    let f = ModelFile::from_bytes(bytes.clone()).unwrap();
    (bytes, f)
}

/// Adapters with every B nonzero too (fresh PEFT adapters have B = 0, which would hide
/// any error in B's layout).
fn random_lora(cfg: &LlamaConfig, targets: &[Proj], rank: usize, seed: u64) -> Lora<f32> {
    let lc = LoraConfig {
        rank,
        alpha: 2.0 * rank as f32,
        dropout: 0.05,
        targets: targets.to_vec(),
    };
    let mut lora = Lora::<f32>::new(cfg, lc, seed);
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for t in lora.tensors_mut() {
        for x in t.iter_mut() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            *x = (u - 0.5) * 0.5;
        }
    }
    lora
}

/// A base model id the user gives must be one a Hugging Face loader resolves (owner/name);
/// none given, the file's own name stands.
#[test]
fn base_model_ids_are_checked() {
    for ok in [
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "someone/their-model",
        "a/b",
        "Org_1/model.v2",
    ] {
        assert!(check_base_model_id(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "gpt2",
        "a/b/c",
        "/name",
        "owner/",
        "owner/na me",
        "owner/-name",
        "owner/name.",
        "owner/na--me",
        "owner/na..me",
        "https://huggingface.co/a/b",
        &format!("owner/{}", "x".repeat(100)),
    ] {
        let e = check_base_model_id(bad).expect_err(bad).to_string();
        assert!(e.contains("owner/name"), "{bad:?}: {e}");
    }
    let (_, f) = tiny();
    let own = choose_base_model(None, &f, None).unwrap();
    assert_eq!(choose_base_model(Some("  "), &f, None).unwrap(), own);
    assert_eq!(
        choose_base_model(None, &f, Some("org/known")).unwrap(),
        "org/known"
    );
    assert_eq!(
        choose_base_model(Some(" someone/model "), &f, Some("org/known")).unwrap(),
        "someone/model"
    );
    assert!(choose_base_model(Some("no slash"), &f, None).is_err());
}

#[test]
fn round_trip_is_exact() {
    let (_, f) = tiny();
    let cfg = &f.config;
    for targets in [Proj::ALL.to_vec(), vec![Proj::Q, Proj::K, Proj::Down]] {
        let lora = random_lora(cfg, &targets, 4, 7);
        let (st, json) = export_peft(&lora, cfg, "tiny").unwrap();
        let back = import_peft(&st, &json, cfg).unwrap();
        assert_eq!(back, lora, "targets {targets:?}");

        let c: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(c["peft_type"], "LORA");
        assert_eq!(c["task_type"], "CAUSAL_LM");
        assert_eq!(c["r"], 4);
        assert_eq!(c["lora_alpha"], 8.0);
        assert_eq!(c["bias"], "none");
        assert_eq!(c["fan_in_fan_out"], false);
        assert_eq!(c["inference_mode"], true);
        assert_eq!(c["use_rslora"], false);
        assert_eq!(c["base_model_name_or_path"], "tiny");
        assert_eq!(c["target_modules"].as_array().unwrap().len(), targets.len());
    }
}

#[test]
fn qk_rows_are_unpermuted_in_the_file() {
    let (_, f) = tiny();
    let cfg = &f.config;
    let lora = random_lora(cfg, &[Proj::Q, Proj::K, Proj::V], 3, 11);
    let (st, _) = export_peft(&lora, cfg, "tiny").unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let read = |name: &str| -> Vec<f32> {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    for (p, heads) in [(Proj::Q, cfg.n_heads), (Proj::K, cfg.n_kv_heads)] {
        let ours = &lora.layers[1][p.index()].as_ref().unwrap().b;
        let hf = read(&tensor_name(1, p, 'B'));
        assert_ne!(&hf, ours, "{p:?}: rows must move");
        assert_eq!(&permute_rows(&hf, heads, cfg.head_dim, 3), ours, "{p:?}");
        // A is the hidden-input side: untouched.
        assert_eq!(
            read(&tensor_name(1, p, 'A')),
            lora.layers[1][p.index()].as_ref().unwrap().a
        );
    }
    let v = &lora.layers[0][Proj::V.index()].as_ref().unwrap().b;
    assert_eq!(&read(&tensor_name(0, Proj::V, 'B')), v);
}

fn err_text(r: edge_llm::Result<Lora<f32>>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            assert!(matches!(e, Error::Invalid(_)), "{e:?}");
            e.to_string()
        }
    }
}

fn edit(json: &str, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut v: Value = serde_json::from_str(json).unwrap();
    f(v.as_object_mut().unwrap());
    v.to_string()
}

#[test]
fn hostile_inputs_are_errors() {
    let (_, f) = tiny();
    let cfg = &f.config;
    let lora = random_lora(cfg, &[Proj::Q, Proj::V], 4, 3);
    let (st, json) = export_peft(&lora, cfg, "tiny").unwrap();
    let has = |r, want: &str| {
        let e = err_text(r);
        assert!(e.contains(want), "'{e}' should mention '{want}'");
    };

    // Config JSON.
    has(
        import_peft(&st, "{not json", cfg),
        "bad adapter_config.json",
    );
    has(import_peft(&st, "[1, 2]", cfg), "not a JSON object");
    has(import_peft(&st, "", cfg), CONFIG_FILE);
    let j = edit(&json, |c| {
        c.insert("peft_type".into(), "IA3".into());
    });
    has(import_peft(&st, &j, cfg), "peft_type");
    let j = edit(&json, |c| {
        c.insert("r".into(), (-3).into());
    });
    has(import_peft(&st, &j, cfg), "positive integer");
    let j = edit(&json, |c| {
        c.insert("r".into(), 2.into());
    });
    has(import_peft(&st, &j, cfg), "rank mismatch");
    let j = edit(&json, |c| {
        c.insert(
            "target_modules".into(),
            serde_json::json!(["q_proj", "lm_head"]),
        );
    });
    has(
        import_peft(&st, &j, cfg),
        "unsupported target module \"lm_head\"",
    );
    let j = edit(&json, |c| {
        c.insert("target_modules".into(), ".*proj".into());
    });
    has(import_peft(&st, &j, cfg), "list of module names");
    let j = edit(&json, |c| {
        c.insert(
            "target_modules".into(),
            serde_json::json!(["q_proj", "v_proj", "k_proj"]),
        );
    });
    has(
        import_peft(&st, &j, cfg),
        "missing tensor base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight",
    );
    let j = edit(&json, |c| {
        c.insert("target_modules".into(), serde_json::json!(["q_proj"]));
    });
    has(import_peft(&st, &j, cfg), "no place for");
    // rsLoRA (scale α/√r) is representable: α becomes α·√r under our α/r.
    let j = edit(&json, |c| {
        c.insert("use_rslora".into(), true.into());
    });
    assert_eq!(import_peft(&st, &j, cfg).unwrap().config.alpha, 8.0 * 2.0);
    for (k, v) in [
        ("use_dora", Value::from(true)),
        ("bias", "all".into()),
        ("rank_pattern", serde_json::json!({"q_proj": 8})),
        ("layers_to_transform", serde_json::json!([0])),
        ("lora_dropout", 1.5.into()),
    ] {
        let j = edit(&json, |c| {
            c.insert(k.into(), v);
        });
        has(import_peft(&st, &j, cfg), k);
    }

    // Safetensors bytes.
    has(
        import_peft(&[], &json, cfg),
        "bad adapter_model.safetensors",
    );
    has(
        import_peft(&st[..st.len() / 2], &json, cfg),
        "bad adapter_model",
    );
    has(import_peft(&[0xff; 64], &json, cfg), "bad adapter_model");
    let mut huge = st.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    has(import_peft(&huge, &json, cfg), "bad adapter_model");

    // A model of another shape.
    let other = ModelFile::from_bytes(
        generate(&TinySpec {
            hidden: 96,
            n_heads: 3,
            n_kv_heads: 1,
            ..TinySpec::default()
        })
        .unwrap(),
    )
    .unwrap();
    has(import_peft(&st, &json, &other.config), "has shape");
    let deeper = ModelFile::from_bytes(
        generate(&TinySpec {
            n_layers: 1,
            ..TinySpec::default()
        })
        .unwrap(),
    )
    .unwrap();
    has(import_peft(&st, &json, &deeper.config), "no place for");

    // Export refuses adapters that do not fit the model or the config.
    let e = export_peft(&lora, &deeper.config, "x").unwrap_err();
    assert!(e.to_string().contains("layers"), "{e}");
    let mut odd = lora.clone();
    odd.layers[1][Proj::Q.index()] = None;
    let e = export_peft(&odd, cfg, "x").unwrap_err();
    assert!(e.to_string().contains("q_proj"), "{e}");
    let mut odd = lora.clone();
    odd.layers[0][Proj::V.index()].as_mut().unwrap().b.pop();
    assert!(export_peft(&odd, cfg, "x").is_err());
}

#[test]
fn save_and_load_dir() {
    let (_, f) = tiny();
    let cfg = &f.config;
    let lora = random_lora(cfg, &Proj::ALL, 2, 5);
    let dir = std::env::temp_dir().join(format!("edge-llm-adapter-dir-{}", std::process::id()));
    save_dir(&dir, &lora, cfg, "tiny").unwrap();
    assert_eq!(load_dir(&dir, cfg).unwrap(), lora);
    std::fs::remove_dir_all(&dir).unwrap();
    let e = load_dir(&dir, cfg).unwrap_err();
    assert!(matches!(e, Error::Io(_)), "{e:?}");
}

fn python() -> Option<PathBuf> {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let ready = py.exists()
        && Command::new(&py)
            .args(["-c", "import numpy, gguf, safetensors.numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
    if ready {
        return Some(py);
    }
    let why = format!(
        "{} absent or without numpy/gguf/safetensors (scripts/setup.sh)",
        py.display()
    );
    if std::env::var("EDGE_LLM_REQUIRE_PYTHON").is_ok_and(|v| v == "1") {
        panic!("{why}");
    }
    eprintln!("note: {why}; PEFT cross-check skipped");
    None
}

/// Runs scripts/check_adapter.py on a saved adapter; returns its logits, flattened.
fn python_logits(py: &PathBuf, model: &PathBuf, adapter: &PathBuf, ids: &[u32]) -> Vec<f32> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/check_adapter.py");
    let out = Command::new(py)
        .arg(&script)
        .arg("--model")
        .arg(model)
        .arg("--adapter")
        .arg(adapter)
        .arg("--ids")
        .arg(serde_json::to_string(ids).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check_adapter.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter())
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn exported_adapter_matches_numpy_peft_merge() {
    let Some(py) = python() else { return };
    let (bytes, f) = tiny();
    let cfg = &f.config;
    let tmp = std::env::temp_dir().join(format!("edge-llm-adapter-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let model = tmp.join("tiny.gguf");
    std::fs::write(&model, &bytes).unwrap();

    let lora = random_lora(cfg, &Proj::ALL, 4, 42);
    let ids: Vec<u32> = vec![1, 72, 101, 108, 108, 111, 266, 44, 200];
    let base = Transformer::new(f.weights().unwrap());
    let ours = Transformer {
        w: base.w.clone(),
        lora: Some(lora.clone()),
    }
    .logits(&ids, None);
    let range = range(&ours);
    let tol = NUMPY_LOGIT_TOL.bound(range);

    let adapter = tmp.join("adapter");
    save_dir(&adapter, &lora, cfg, "edge-llm tiny test model").unwrap();
    let theirs = python_logits(&py, &model, &adapter, &ids);
    let diff = max_abs_diff(&ours, &theirs);
    eprintln!("PEFT cross-check: max |Δlogit| {diff:.3e} (range {range:.3}, tol {tol:.3e})");
    assert!(diff <= tol, "max |Δlogit| {diff} > {tol}");

    // The adapter must matter, and q/k B in OUR row order must fail the check: otherwise
    // this test could not see a wrong permutation.
    let base_logits = base.logits(&ids, None);
    let effect = max_abs_diff(&ours, &base_logits);
    assert!(
        effect > 100.0 * tol,
        "LoRA effect {effect} too small to test"
    );
    let mut wrong = lora.clone();
    for l in &mut wrong.layers {
        for (p, heads) in [(Proj::Q, cfg.n_heads), (Proj::K, cfg.n_kv_heads)] {
            let pair = l[p.index()].as_mut().unwrap();
            pair.b = permute_rows(&pair.b, heads, cfg.head_dim, pair.rank);
        }
    }
    let wrong_dir = tmp.join("wrong");
    save_dir(&wrong_dir, &wrong, cfg, "x").unwrap();
    let bad = python_logits(&py, &model, &wrong_dir, &ids);
    let bad_diff = max_abs_diff(&ours, &bad);
    eprintln!("un-permutation skipped: max |Δlogit| {bad_diff:.3e}");
    assert!(bad_diff > 10.0 * tol, "a wrong q/k layout went unnoticed");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn half_precision_adapters_load() {
    let (_, f) = tiny();
    let cfg = &f.config;
    let lora = random_lora(cfg, &[Proj::Q, Proj::Up], 2, 9);
    let (st, json) = export_peft(&lora, cfg, "tiny").unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .iter()
        .map(|(name, t)| {
            let data = t
                .data()
                .chunks_exact(4)
                .flat_map(|c| {
                    half::bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()
                })
                .collect();
            (name.to_string(), t.shape().to_vec(), data)
        })
        .collect();
    let views = tensors.iter().map(|(n, s, d)| {
        let v = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), d);
        (n.as_str(), v.unwrap())
    });
    let bf = safetensors::serialize(views, None).unwrap();
    let back = import_peft(&bf, &json, cfg).unwrap();
    // bf16 keeps 8 significant bits: relative error ≤ 2⁻⁸.
    const BF16_TOL: Tol = Tol::relative(1.0 / 256.0);
    let (mut a, mut b) = (lora.clone(), back);
    for (x, y) in a.tensors_mut().into_iter().zip(b.tensors_mut()) {
        for (x, y) in x.iter().zip(y.iter()) {
            assert!(BF16_TOL.close_to(*y, *x), "{x} vs {y}");
        }
    }
    assert_eq!(a.config, b.config);
}

/// The page's one download: every file of the adapter in a zip, byte for byte.
#[test]
fn the_adapter_zip_holds_its_files() {
    let files = vec![
        (
            "adapter_model.safetensors",
            (0..=255u8).cycle().take(5000).collect::<Vec<u8>>(),
        ),
        ("adapter_config.json", b"{\"peft_type\": \"LORA\"}".to_vec()),
        ("exits.safetensors", vec![]),
    ];
    let zip = edge_llm::adapter::zip_files(&files).unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    assert_eq!(archive.len(), 3);
    for (name, data) in &files {
        let mut f = archive.by_name(name).unwrap();
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut read).unwrap();
        assert_eq!(&read, data, "{name}");
    }
}
