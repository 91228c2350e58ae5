//! LoRA adapters in the Hugging Face PEFT format (`adapter_model.safetensors` +
//! `adapter_config.json`), so PEFT, transformers, vLLM or llama.cpp's converter can load
//! what we train, and we can load theirs.
//!
//! Layout: PEFT stores `lora_A` as `[r][in]` and `lora_B` as `[out][r]`, scale α/r — the
//! same as [`LoraPair`]. The one difference is the Q/K row order: our base `attn_q`/`attn_k`
//! rows carry llama.cpp's permutation (interleaved RoPE), Hugging Face's are un-permuted
//! (half-split RoPE). ΔW = scale·B·A has B's row order, so B of q/k is un-permuted on export
//! and permuted back on import; A (its columns are the hidden input) is unaffected.
//!
//! Early exits (adaptive layer tuning) are not PEFT: they go to their own file,
//! [`EXITS_FILE`], beside the PEFT pair, which stays exactly what PEFT reads.
//!
//! The core is pure (bytes in, bytes out) for the browser; [`save_dir`]/[`load_dir`] are
//! the native file helpers.

use crate::model::{LlamaConfig, RopeStyle};
use crate::reference::ops::LoraPair;
use crate::reference::{Exit, Lora, LoraConfig, Proj};
use crate::{Error, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

/// File names PEFT's `save_pretrained` writes and `from_pretrained` reads.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The early exits' adapters, when the adapter has exits (see [`export_exits`]).
pub const EXITS_FILE: &str = "exits.safetensors";

/// PEFT's module name of a projection (`target_modules` entries).
pub fn peft_module(p: Proj) -> &'static str {
    match p {
        Proj::Q => "q_proj",
        Proj::K => "k_proj",
        Proj::V => "v_proj",
        Proj::O => "o_proj",
        Proj::Gate => "gate_proj",
        Proj::Up => "up_proj",
        Proj::Down => "down_proj",
    }
}

fn proj_from_module(name: &str) -> Option<Proj> {
    Proj::ALL.into_iter().find(|&p| peft_module(p) == name)
}

/// The safetensors name of layer `l`'s `lora_A` (`which` = 'A') or `lora_B` for a LLaMA
/// causal LM wrapped by PEFT.
pub fn tensor_name(l: usize, p: Proj, which: char) -> String {
    let block = match p {
        Proj::Q | Proj::K | Proj::V | Proj::O => "self_attn",
        Proj::Gate | Proj::Up | Proj::Down => "mlp",
    };
    format!(
        "base_model.model.model.layers.{l}.{block}.{}.lora_{which}.weight",
        peft_module(p)
    )
}

/// Our (llama.cpp-permuted) row order → Hugging Face order, for a `[heads·head_dim][cols]`
/// matrix: per head, our row 2i is HF row i and our row 2i+1 is HF row i + head_dim/2.
/// The inverse of [`permute_rows`]; equals `independent_perplexity.py`'s `unpermute`.
/// Panics if `w` is not `heads·head_dim·cols` long or `head_dim` is odd (caller's bug).
pub fn unpermute_rows<T: Copy>(w: &[T], heads: usize, head_dim: usize, cols: usize) -> Vec<T> {
    reorder_rows(w, heads, head_dim, cols, true)
}

/// Hugging Face row order → ours (what llama.cpp's converter does to q/k).
pub fn permute_rows<T: Copy>(w: &[T], heads: usize, head_dim: usize, cols: usize) -> Vec<T> {
    reorder_rows(w, heads, head_dim, cols, false)
}

fn reorder_rows<T: Copy>(w: &[T], heads: usize, hd: usize, cols: usize, to_hf: bool) -> Vec<T> {
    assert_eq!(w.len(), heads * hd * cols, "row permutation: size mismatch");
    assert!(hd.is_multiple_of(2), "row permutation: odd head_dim {hd}");
    let half = hd / 2;
    let mut out = w.to_vec();
    for h in 0..heads {
        for i in 0..half {
            for t in 0..2 {
                let ours = h * hd + 2 * i + t;
                let hf = h * hd + t * half + i;
                let (dst, src) = if to_hf { (hf, ours) } else { (ours, hf) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Heads whose rows are permuted for a projection, when the base model is permuted.
fn permuted_heads(p: Proj, cfg: &LlamaConfig) -> Option<usize> {
    if cfg.rope_style != RopeStyle::Interleaved {
        return None;
    }
    match p {
        Proj::Q => Some(cfg.n_heads),
        Proj::K => Some(cfg.n_kv_heads),
        _ => None,
    }
}

/// `general.name` of a GGUF file (a display name: Hugging Face's loaders cannot resolve it).
pub fn gguf_model_name(g: &crate::gguf::Gguf) -> Option<&str> {
    g.get("general.name").and_then(crate::gguf::Value::as_str)
}

/// GGUF files whose Hugging Face model is known, by the file's sha256: the default model
/// (scripts/fetch-model.sh checks the same sum).
const KNOWN_BASES: &[(&str, &str)] = &[(
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "HuggingFaceTB/SmolLM2-135M-Instruct",
)];

/// The Hugging Face model id of a GGUF file recognised by its sha256 (the default model),
/// or None.
pub fn known_base_id(file: &crate::model::ModelFile) -> Option<&'static str> {
    use sha2::{Digest, Sha256};
    let sum: String = Sha256::digest(&file.bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    KNOWN_BASES
        .iter()
        .find(|(s, _)| *s == sum)
        .map(|(_, id)| *id)
}

/// The adapter's `base_model_name_or_path`: the Hugging Face model id of a file recognised by
/// its sha256, else the file's `general.name` (which a loader may not resolve: pass the id
/// with `tune --base-model`), else "edge-llm-base".
pub fn base_model_id(file: &crate::model::ModelFile) -> String {
    base_model_name(file, known_base_id(file))
}

/// [`base_model_id`] given the file's [`known_base_id`], worked out once by the caller.
pub fn base_model_name(file: &crate::model::ModelFile, known: Option<&str>) -> String {
    known
        .map(str::to_owned)
        .or_else(|| gguf_model_name(&file.gguf).map(str::to_owned))
        .unwrap_or_else(|| "edge-llm-base".to_owned())
}

/// The adapter's `base_model_name_or_path` when the user names one (`tune --base-model`,
/// the page's base model field): `given` checked by [`check_base_model_id`], else
/// [`base_model_name`]. The one rule of both front-ends.
pub fn choose_base_model(
    given: Option<&str>,
    file: &crate::model::ModelFile,
    known: Option<&str>,
) -> Result<String> {
    Ok(given_base_model(given)?.unwrap_or_else(|| base_model_name(file, known)))
}

/// The base model id the user gave, trimmed and checked by [`check_base_model_id`]; None
/// when none was given (absent or blank).
pub fn given_base_model(given: Option<&str>) -> Result<Option<String>> {
    match given.map(str::trim).filter(|g| !g.is_empty()) {
        Some(id) => check_base_model_id(id).map(|()| Some(id.to_owned())),
        None => Ok(None),
    }
}

/// Longest base model id taken: the Hub's limit for a name, applied to the whole id.
const MAX_BASE_MODEL_ID: usize = 96;

/// Checks that `id` is a Hugging Face model id a loader can resolve: "owner/name", each part
/// letters, digits, '-', '_' or '.', not starting or ending with '-' or '.', with no "--" or
/// "..", 96 characters at most (the Hub's own check, with the length over the whole id). The
/// error says what is wrong in plain words.
pub fn check_base_model_id(id: &str) -> Result<()> {
    let plain = |why: &str| {
        Err(Error::Invalid(format!(
            "the base model id {id:?} {why}: give it as owner/name, as on huggingface.co \
             (for example HuggingFaceTB/SmolLM2-135M-Instruct)"
        )))
    };
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
        return plain("is not of the form owner/name");
    }
    if id.len() > MAX_BASE_MODEL_ID {
        return plain(&format!("is longer than {MAX_BASE_MODEL_ID} characters"));
    }
    for part in parts {
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return plain(&format!("has {c:?}, which a model id cannot hold"));
        }
        let edge = |c: char| c == '-' || c == '.';
        if part.starts_with(edge)
            || part.ends_with(edge)
            || part.contains("--")
            || part.contains("..")
        {
            return plain("has a '-' or '.' at the start or end of a part, or two in a row");
        }
    }
    Ok(())
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(format!("PEFT adapter: {}", msg.into()))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `lora` as PEFT files: (`adapter_model.safetensors` bytes, `adapter_config.json`).
/// Every layer must carry exactly the configured targets, with the configured rank.
pub fn export_peft(
    lora: &Lora<f32>,
    cfg: &LlamaConfig,
    base_name: &str,
) -> Result<(Vec<u8>, String)> {
    let lc = &lora.config;
    if lc.rank == 0 || !lc.alpha.is_finite() || !(0.0..1.0).contains(&lc.dropout) {
        return Err(invalid(format!(
            "bad hyper-parameters r {} alpha {} dropout {}",
            lc.rank, lc.alpha, lc.dropout
        )));
    }
    if lora.layers.len() != cfg.n_layers {
        return Err(invalid(format!(
            "{} adapter layers for a model with {}",
            lora.layers.len(),
            cfg.n_layers
        )));
    }
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (l, layer) in lora.layers.iter().enumerate() {
        for p in Proj::ALL {
            let pair = match (&layer[p.index()], lc.targets.contains(&p)) {
                (Some(pair), true) => pair,
                (None, false) => continue,
                (got, _) => {
                    return Err(invalid(format!(
                        "layer {l} {}: {} but the config {} it (PEFT applies one target set to every layer)",
                        peft_module(p),
                        if got.is_some() { "has an adapter" } else { "has none" },
                        if got.is_some() { "does not list" } else { "lists" },
                    )))
                }
            };
            let (k, n) = p.shape(cfg);
            let r = lc.rank;
            if (pair.rank, pair.k, pair.n) != (r, k, n)
                || pair.a.len() != r * k
                || pair.b.len() != n * r
            {
                return Err(invalid(format!(
                    "layer {l} {}: pair is r {} {}→{} (A {} B {} values), expected r {r} {k}→{n}",
                    peft_module(p),
                    pair.rank,
                    pair.k,
                    pair.n,
                    pair.a.len(),
                    pair.b.len()
                )));
            }
            let b = match permuted_heads(p, cfg) {
                Some(h) => unpermute_rows(&pair.b, h, cfg.head_dim, r),
                None => pair.b.clone(),
            };
            tensors.push((tensor_name(l, p, 'A'), vec![r, k], f32_bytes(&pair.a)));
            tensors.push((tensor_name(l, p, 'B'), vec![n, r], f32_bytes(&b)));
        }
    }
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.as_str(), v))
                .map_err(|e| invalid(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    // PEFT/transformers save with {"format": "pt"}; some loaders insist on it.
    let meta = Some(std::iter::once(("format".to_string(), "pt".to_string())).collect());
    let bytes = safetensors::serialize(views, meta).map_err(|e| invalid(e.to_string()))?;

    let targets: Vec<&str> = Proj::ALL
        .into_iter()
        .filter(|p| lc.targets.contains(p))
        .map(peft_module)
        .collect();
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": lc.rank,
        "lora_alpha": lc.alpha,
        "lora_dropout": lc.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    });
    let json = serde_json::to_string_pretty(&config).map_err(|e| invalid(e.to_string()))?;
    Ok((bytes, json))
}

/// Reads PEFT files into adapters for `cfg`. Refuses what it cannot represent exactly
/// (per-module ranks, DoRA, biases, regex targets, modules other than the seven).
pub fn import_peft(safetensors: &[u8], config_json: &str, cfg: &LlamaConfig) -> Result<Lora<f32>> {
    let c: Value = serde_json::from_str(config_json)
        .map_err(|e| invalid(format!("bad {CONFIG_FILE}: {e}")))?;
    let c = c
        .as_object()
        .ok_or_else(|| invalid(format!("{CONFIG_FILE} is not a JSON object")))?;
    let get = |k: &str| c.get(k).filter(|v| !v.is_null());
    match get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => return Err(invalid(format!("peft_type {other:?} is not \"LORA\""))),
    }
    let rank = get("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0 && r <= 1 << 16)
        .ok_or_else(|| invalid(format!("r {:?} is not a positive integer", get("r"))))?
        as usize;
    let mut alpha = match get("lora_alpha") {
        None => 8.0, // PEFT's default
        Some(v) => v
            .as_f64()
            .filter(|a| a.is_finite())
            .ok_or_else(|| invalid(format!("lora_alpha {v} is not a number")))?,
    };
    let dropout = match get("lora_dropout") {
        None => 0.0,
        Some(v) => v
            .as_f64()
            .filter(|d| (0.0..1.0).contains(d))
            .ok_or_else(|| invalid(format!("lora_dropout {v} is not in [0, 1)")))?,
    };
    let flag = |k: &str| get(k).and_then(Value::as_bool).unwrap_or(false);
    // rsLoRA scales by α/√r; the same adapter under our α/r scale has α' = α·√r.
    if flag("use_rslora") {
        alpha *= (rank as f64).sqrt();
    }
    for k in ["use_dora", "fan_in_fan_out"] {
        if flag(k) {
            return Err(invalid(format!("{k} = true is not supported")));
        }
    }
    if let Some(b) = get("bias").and_then(Value::as_str).filter(|&b| b != "none") {
        return Err(invalid(format!(
            "bias \"{b}\" is not supported (only \"none\")"
        )));
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if get(k)
            .and_then(Value::as_object)
            .is_some_and(|o| !o.is_empty())
        {
            return Err(invalid(format!(
                "{k} (per-module r/alpha) is not supported"
            )));
        }
    }
    for k in ["layers_to_transform", "modules_to_save"] {
        if get(k).is_some() {
            return Err(invalid(format!("{k} is not supported")));
        }
    }
    let names = get("target_modules")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("target_modules must be a list of module names"))?;
    let mut targets = Vec::new();
    for v in names {
        let s = v
            .as_str()
            .ok_or_else(|| invalid(format!("target_modules entry {v} is not a string")))?;
        let p = proj_from_module(s).ok_or_else(|| {
            invalid(format!(
                "unsupported target module \"{s}\" (supported: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)"
            ))
        })?;
        if !targets.contains(&p) {
            targets.push(p);
        }
    }
    if targets.is_empty() {
        return Err(invalid("target_modules is empty"));
    }
    targets.sort_by_key(|p| p.index());

    let st = SafeTensors::deserialize(safetensors)
        .map_err(|e| invalid(format!("bad {WEIGHTS_FILE}: {e}")))?;
    // Anything unexpected means another model or modules we would silently drop.
    let expected: Vec<String> = (0..cfg.n_layers)
        .flat_map(|l| {
            targets
                .iter()
                .flat_map(move |&p| [tensor_name(l, p, 'A'), tensor_name(l, p, 'B')])
        })
        .collect();
    let mut extra: Vec<&str> = st
        .names()
        .into_iter()
        .filter(|name| !expected.iter().any(|e| e == name))
        .collect();
    if !extra.is_empty() {
        extra.sort_unstable();
        return Err(invalid(format!(
            "{} tensor(s) this model and target_modules have no place for (another model?), e.g. {}",
            extra.len(),
            extra[0]
        )));
    }
    // `rank_axis`: 0 for A `[r][in]`, 1 for B `[out][r]`.
    let read = |name: &str, shape: [usize; 2], rank_axis: usize| -> Result<Vec<f32>> {
        let t = st
            .tensor(name)
            .map_err(|_| invalid(format!("missing tensor {name}")))?;
        let got = t.shape();
        if got != shape {
            let other = 1 - rank_axis;
            if got.len() == 2 && got[other] == shape[other] {
                return Err(invalid(format!(
                    "rank mismatch: tensor {name} has rank {} but r is {rank}",
                    got[rank_axis]
                )));
            }
            return Err(invalid(format!(
                "tensor {name} has shape {got:?}, expected {shape:?}"
            )));
        }
        to_f32(&t).map_err(|e| invalid(format!("tensor {name}: {e}")))
    };
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let mut layer: [Option<LoraPair<f32>>; 7] = Default::default();
        for &p in &targets {
            let (k, n) = p.shape(cfg);
            let a = read(&tensor_name(l, p, 'A'), [rank, k], 0)?;
            let b = read(&tensor_name(l, p, 'B'), [n, rank], 1)?;
            let b = match permuted_heads(p, cfg) {
                Some(h) => permute_rows(&b, h, cfg.head_dim, rank),
                None => b,
            };
            layer[p.index()] = Some(LoraPair { a, b, rank, k, n });
        }
        layers.push(layer);
    }
    Ok(Lora {
        config: LoraConfig {
            rank,
            alpha: alpha as f32,
            dropout: dropout as f32,
            targets,
        },
        layers,
        exits: Vec::new(),
    })
}

/// A tensor's values as f32 (PEFT adapters are also shared in f16/bf16).
fn to_f32(t: &TensorView<'_>) -> std::result::Result<Vec<f32>, String> {
    let d = t.data();
    let v = match t.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => return Err(format!("dtype {other} is not supported (F32, F16, BF16)")),
    };
    Ok(v)
}

/// The safetensors name of the exit after block `after`'s `lora_A` (`which` = 'A', shape
/// `[r][hidden]`) or `lora_B` (`[hidden][r]`) in [`EXITS_FILE`].
pub fn exit_tensor_name(after: usize, which: char) -> String {
    format!("exit.{after}.lora_{which}.weight")
}

fn exits_invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(format!("early exits ({EXITS_FILE}): {}", msg.into()))
}

/// Writes `lora.exits` as [`EXITS_FILE`] bytes (f32; A `[r][hidden]`, B `[hidden][r]`, r
/// the adapter's rank, since the exits share its scale α/r). Exits must sit after block
/// counts in 1..=n_layers, strictly ascending.
pub fn export_exits(lora: &Lora<f32>, cfg: &LlamaConfig) -> Result<Vec<u8>> {
    let (r, d) = (lora.config.rank, cfg.hidden);
    let mut prev = 0;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for e in &lora.exits {
        if e.after <= prev || e.after > cfg.n_layers {
            return Err(exits_invalid(format!(
                "exit after block {} (after {prev}): exits must be strictly ascending in 1..={}",
                e.after, cfg.n_layers
            )));
        }
        prev = e.after;
        let p = &e.pair;
        if (p.rank, p.k, p.n) != (r, d, d) || p.a.len() != r * d || p.b.len() != d * r {
            return Err(exits_invalid(format!(
                "exit after block {}: pair is r {} {}→{} (A {} B {} values), expected r {r} {d}→{d}",
                e.after,
                p.rank,
                p.k,
                p.n,
                p.a.len(),
                p.b.len()
            )));
        }
        tensors.push((exit_tensor_name(e.after, 'A'), vec![r, d], f32_bytes(&p.a)));
        tensors.push((exit_tensor_name(e.after, 'B'), vec![d, r], f32_bytes(&p.b)));
    }
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.as_str(), v))
                .map_err(|e| exits_invalid(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| exits_invalid(e.to_string()))
}

/// Reads [`EXITS_FILE`] bytes into exits for an adapter of rank `rank` on `cfg`, shallow to
/// deep. Refuses unknown tensors, a missing half of a pair, wrong shapes and exits outside
/// 1..=n_layers.
pub fn import_exits(bytes: &[u8], rank: usize, cfg: &LlamaConfig) -> Result<Vec<Exit<f32>>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| exits_invalid(e.to_string()))?;
    let mut afters = Vec::new();
    for name in st.names() {
        let after = name
            .strip_prefix("exit.")
            .and_then(|s| s.strip_suffix(".lora_A.weight").or(s.strip_suffix(".lora_B.weight")))
            .and_then(|n| n.parse::<usize>().ok().filter(|a| a.to_string() == n))
            .ok_or_else(|| {
                exits_invalid(format!(
                    "unexpected tensor {name} (expected exit.N.lora_A.weight / exit.N.lora_B.weight)"
                ))
            })?;
        if !(1..=cfg.n_layers).contains(&after) {
            return Err(exits_invalid(format!(
                "an exit after block {after}, but the model has {} blocks",
                cfg.n_layers
            )));
        }
        afters.push(after);
    }
    afters.sort_unstable();
    afters.dedup();
    if afters.is_empty() {
        return Err(exits_invalid("the file holds no exits"));
    }
    let d = cfg.hidden;
    let read = |name: String, shape: [usize; 2]| -> Result<Vec<f32>> {
        let t = st
            .tensor(&name)
            .map_err(|_| exits_invalid(format!("missing tensor {name}")))?;
        if t.shape() != shape {
            return Err(exits_invalid(format!(
                "tensor {name} has shape {:?}, expected {shape:?} (adapter rank {rank}, hidden {d})",
                t.shape()
            )));
        }
        to_f32(&t).map_err(|e| exits_invalid(format!("tensor {name}: {e}")))
    };
    afters
        .into_iter()
        .map(|after| {
            let a = read(exit_tensor_name(after, 'A'), [rank, d])?;
            let b = read(exit_tensor_name(after, 'B'), [d, rank])?;
            Ok(Exit {
                after,
                pair: LoraPair {
                    a,
                    b,
                    rank,
                    k: d,
                    n: d,
                },
            })
        })
        .collect()
}

/// An adapter's files, as `save_dir` writes them: the PEFT pair (`adapter_model.safetensors`,
/// `adapter_config.json`) and, with early exits, `exits.safetensors`.
pub fn adapter_files(
    lora: &Lora<f32>,
    cfg: &LlamaConfig,
    base_name: &str,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let (bytes, json) = export_peft(lora, cfg, base_name)?;
    let mut files = vec![(WEIGHTS_FILE, bytes), (CONFIG_FILE, json.into_bytes())];
    if !lora.exits.is_empty() {
        files.push((EXITS_FILE, export_exits(lora, cfg)?));
    }
    Ok(files)
}

/// Files as one zip archive (stored: f32 tensors hardly compress), to unpack into the
/// directory that PEFT's `from_pretrained` and `edge-llm --adapter` read: the page's one
/// download.
pub fn zip_files(files: &[(&str, Vec<u8>)]) -> Result<Vec<u8>> {
    use std::io::Write;
    let zip_err = |e: &dyn std::fmt::Display| Error::Io(format!("zip: {e}"));
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(files.iter().any(|(_, d)| d.len() >= u32::MAX as usize));
    for (name, data) in files {
        w.start_file(*name, options).map_err(|e| zip_err(&e))?;
        w.write_all(data).map_err(|e| zip_err(&e))?;
    }
    Ok(w.finish().map_err(|e| zip_err(&e))?.into_inner())
}

/// Writes the two PEFT files into `dir` (created if needed), and [`EXITS_FILE`] when the
/// adapter has exits (removing a stale one when it has none).
#[cfg(not(target_arch = "wasm32"))]
pub fn save_dir(
    dir: impl AsRef<std::path::Path>,
    lora: &Lora<f32>,
    cfg: &LlamaConfig,
    base_name: &str,
) -> Result<()> {
    let dir = dir.as_ref();
    let files = adapter_files(lora, cfg, base_name)?;
    let io = |p: &std::path::Path, e: std::io::Error| Error::Io(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    for (name, data) in &files {
        let p = dir.join(name);
        std::fs::write(&p, data).map_err(|e| io(&p, e))?;
    }
    // No exits: an exits file left by an earlier adapter in the directory goes.
    let p = dir.join(EXITS_FILE);
    if !files.iter().any(|(name, _)| *name == EXITS_FILE) {
        if let Err(e) = std::fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(io(&p, e));
            }
        }
    }
    Ok(())
}

/// Reads the two PEFT files from `dir`, and the exits from [`EXITS_FILE`] if it is there.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_dir(dir: impl AsRef<std::path::Path>, cfg: &LlamaConfig) -> Result<Lora<f32>> {
    let dir = dir.as_ref();
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| Error::Io(format!("cannot read {}: {e}", p.display())))
    };
    let bytes = read(WEIGHTS_FILE)?;
    let json = String::from_utf8(read(CONFIG_FILE)?)
        .map_err(|_| invalid(format!("{CONFIG_FILE} is not UTF-8")))?;
    let mut lora = import_peft(&bytes, &json, cfg)?;
    if dir.join(EXITS_FILE).exists() {
        lora.exits = import_exits(&read(EXITS_FILE)?, lora.config.rank, cfg)?;
    }
    Ok(lora)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NumPy's `w.reshape(heads, hd/2, 2, cols).swapaxes(1, 2).reshape(out, cols)` (the
    /// un-permute of scripts/independent_perplexity.py), written out by strides.
    fn numpy_unpermute(w: &[i32], heads: usize, hd: usize, cols: usize) -> Vec<i32> {
        let half = hd / 2;
        let mut out = Vec::with_capacity(w.len());
        // Output is C-ordered over (h, t, i, c) of shape (heads, 2, half, cols); the source
        // element is at (h, i, t, c) in shape (heads, half, 2, cols).
        for h in 0..heads {
            for t in 0..2 {
                for i in 0..half {
                    for c in 0..cols {
                        out.push(w[((h * half + i) * 2 + t) * cols + c]);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn permutation_round_trips_and_matches_numpy() {
        for (heads, hd, cols) in [(1, 2, 1), (3, 8, 5), (2, 64, 3), (4, 6, 1)] {
            let w: Vec<i32> = (0..(heads * hd * cols) as i32).collect();
            let hf = unpermute_rows(&w, heads, hd, cols);
            assert_eq!(
                hf,
                numpy_unpermute(&w, heads, hd, cols),
                "{heads}x{hd}x{cols}"
            );
            assert_eq!(permute_rows(&hf, heads, hd, cols), w);
            assert_eq!(
                unpermute_rows(&permute_rows(&w, heads, hd, cols), heads, hd, cols),
                w
            );
            if hd > 2 {
                assert_ne!(hf, w, "the permutation must move rows");
            }
        }
        // The brief's statement: our row 2i is HF row i, our row 2i+1 is HF row i + hd/2.
        let w: Vec<i32> = (0..8).collect();
        assert_eq!(unpermute_rows(&w, 1, 8, 1), [0, 2, 4, 6, 1, 3, 5, 7]);
    }

    #[test]
    fn names_follow_peft() {
        assert_eq!(
            tensor_name(3, Proj::K, 'B'),
            "base_model.model.model.layers.3.self_attn.k_proj.lora_B.weight"
        );
        assert_eq!(
            tensor_name(0, Proj::Down, 'A'),
            "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"
        );
    }
}
