//! A tiny random model in exactly the layout of the default model's GGUF (same keys,
//! tensor names, Q4_1 block weights, Q8_0 token embedding, F32 norms, tied head, GQA,
//! byte-level BPE tokenizer with ChatML control tokens), for fast tests. Seeded and
//! deterministic: the same spec gives the same bytes on every platform.

use crate::gguf::{quant, GgmlType, GgufWriter, Value};
use crate::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The shape of the generated model. Dimensions must be multiples of 32 (the quant block).
#[derive(Clone, Debug)]
pub struct TinySpec {
    pub n_layers: usize,
    pub hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub ffn: usize,
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            n_layers: 2,
            hidden: 64,
            n_heads: 4,
            n_kv_heads: 2,
            ffn: 128,
            seed: 0,
        }
    }
}

/// Control tokens first, as in SmolLM2: ids 0, 1, 2.
const CONTROL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// A few merges of common English pairs, so the BPE path is exercised (byte-level form).
const MERGES: [(&str, &str); 13] = [
    ("Ġ", "t"),
    ("Ġ", "a"),
    ("h", "e"),
    ("i", "n"),
    ("r", "e"),
    ("o", "n"),
    ("e", "r"),
    ("a", "t"),
    ("e", "n"),
    ("Ġt", "he"),
    ("Ġ", "s"),
    ("o", "r"),
    ("Ġ", "w"),
];
const CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a tiny test model<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// GPT-2's byte → printable-character table used by byte-level BPE vocabularies.
pub fn byte_to_char(b: u8) -> char {
    let printable =
        |c: u32| (33..=126).contains(&c) || (161..=172).contains(&c) || (174..=255).contains(&c);
    let b = b as u32;
    if printable(b) {
        return char::from_u32(b).unwrap_or('?');
    }
    // Non-printable bytes map to 256 + their rank among the non-printable ones.
    let rank = (0..b).filter(|&c| !printable(c)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('?')
}

/// The vocabulary: control tokens, the 256 bytes, then the merged tokens.
pub fn tiny_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = CONTROL.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3; CONTROL.len()];
    for b in 0..=255u8 {
        tokens.push(byte_to_char(b).to_string());
        types.push(1);
    }
    let mut merges = Vec::new();
    for (a, b) in MERGES {
        tokens.push(format!("{a}{b}"));
        types.push(1);
        merges.push(format!("{a} {b}"));
    }
    (tokens, types, merges)
}

/// The GGUF bytes of a tiny random model.
pub fn generate(spec: &TinySpec) -> Result<Vec<u8>> {
    let bad = |what: String| crate::Error::Invalid(format!("tiny model: {what}"));
    for (name, v) in [("hidden", spec.hidden), ("ffn", spec.ffn)] {
        if v == 0 || !v.is_multiple_of(32) {
            return Err(bad(format!("{name} {v} must be a positive multiple of 32")));
        }
    }
    if spec.n_heads == 0
        || spec.n_kv_heads == 0
        || !spec.hidden.is_multiple_of(spec.n_heads)
        || !spec.n_heads.is_multiple_of(spec.n_kv_heads)
    {
        return Err(bad(
            "heads must divide hidden and kv heads must divide heads".into(),
        ));
    }
    let head_dim = spec.hidden / spec.n_heads;
    if !head_dim.is_multiple_of(2) || spec.n_layers == 0 {
        return Err(bad(
            "head_dim must be even and there must be at least one layer".into(),
        ));
    }
    let (tokens, types, merges) = tiny_vocab();
    let vocab = tokens.len();
    let (d, f, kv) = (spec.hidden, spec.ffn, spec.n_kv_heads * head_dim);
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);

    let mut w = GgufWriter::new();
    let s = |x: &str| Value::String(x.to_owned());
    let u = |x: usize| Value::U32(x as u32);
    w.kv("general.architecture", s("llama"))
        .kv("general.type", s("model"))
        .kv("general.name", s("edge-llm tiny test model"))
        .kv("llama.block_count", u(spec.n_layers))
        .kv("llama.context_length", u(512))
        .kv("llama.embedding_length", u(d))
        .kv("llama.feed_forward_length", u(f))
        .kv("llama.attention.head_count", u(spec.n_heads))
        .kv("llama.attention.head_count_kv", u(spec.n_kv_heads))
        .kv("llama.rope.freq_base", Value::F32(10000.0))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("general.file_type", u(3))
        .kv("llama.vocab_size", u(vocab))
        .kv("llama.rope.dimension_count", u(head_dim))
        .kv("tokenizer.ggml.add_space_prefix", Value::Bool(false))
        .kv("tokenizer.ggml.add_bos_token", Value::Bool(false))
        .kv("tokenizer.ggml.model", s("gpt2"))
        .kv("tokenizer.ggml.pre", s("smollm"))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(tokens.iter().map(|t| s(t)).collect()),
        )
        .kv(
            "tokenizer.ggml.token_type",
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        )
        .kv(
            "tokenizer.ggml.merges",
            Value::Array(merges.iter().map(|m| s(m)).collect()),
        )
        .kv("tokenizer.ggml.bos_token_id", u(1))
        .kv("tokenizer.ggml.eos_token_id", u(2))
        .kv("tokenizer.ggml.unknown_token_id", u(0))
        .kv("tokenizer.ggml.padding_token_id", u(2))
        .kv("tokenizer.chat_template", s(CHAT_TEMPLATE))
        .kv("general.quantization_version", u(2));

    // Uniform weights scaled by 1/√fan_in keep activations O(1) through the layers.
    let mut mat = |rows: usize, cols: usize, scale: f64| -> Vec<f32> {
        (0..rows * cols)
            .map(|_| (rng.random_range(-1.0..1.0) * scale) as f32)
            .collect()
    };
    let put =
        |w: &mut GgufWriter, name: &str, dims: &[u64], ty: GgmlType, data: &[f32]| -> Result<()> {
            let bytes = quant::quantize(ty, data).map_err(|e| bad(format!("{name}: {e}")))?;
            w.tensor(name, dims, ty, bytes);
            Ok(())
        };
    let embd = mat(vocab, d, 1.0);
    put(
        &mut w,
        "token_embd.weight",
        &[d as u64, vocab as u64],
        GgmlType::Q8_0,
        &embd,
    )?;
    let norm = |m: Vec<f32>| m.into_iter().map(|x| 1.0 + x).collect::<Vec<f32>>();
    let on = norm(mat(1, d, 0.1));
    put(
        &mut w,
        "output_norm.weight",
        &[d as u64],
        GgmlType::F32,
        &on,
    )?;
    for l in 0..spec.n_layers {
        let n = |x: &str| format!("blk.{l}.{x}.weight");
        let sd = 1.0 / (d as f64).sqrt();
        let sf = 1.0 / (f as f64).sqrt();
        let (d64, f64_, kv64) = (d as u64, f as u64, kv as u64);
        let t = [
            ("attn_norm", vec![d64], GgmlType::F32, norm(mat(1, d, 0.1))),
            ("attn_q", vec![d64, d64], GgmlType::Q4_1, mat(d, d, sd)),
            ("attn_k", vec![d64, kv64], GgmlType::Q4_1, mat(kv, d, sd)),
            ("attn_v", vec![d64, kv64], GgmlType::Q4_1, mat(kv, d, sd)),
            ("attn_output", vec![d64, d64], GgmlType::Q4_1, mat(d, d, sd)),
            ("ffn_norm", vec![d64], GgmlType::F32, norm(mat(1, d, 0.1))),
            ("ffn_gate", vec![d64, f64_], GgmlType::Q4_1, mat(f, d, sd)),
            ("ffn_up", vec![d64, f64_], GgmlType::Q4_1, mat(f, d, sd)),
            ("ffn_down", vec![f64_, d64], GgmlType::Q4_1, mat(d, f, sf)),
        ];
        for (name, dims, ty, data) in t {
            put(&mut w, &n(name), &dims, ty, &data)?;
        }
    }
    Ok(w.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        assert_eq!(byte_to_char(b'A'), 'A');
        assert_eq!(byte_to_char(b' '), 'Ġ'); // U+0120
        assert_eq!(byte_to_char(b'\n'), 'Ċ'); // U+010A
        let all: std::collections::HashSet<char> = (0..=255u8).map(byte_to_char).collect();
        assert_eq!(all.len(), 256);
    }
}
