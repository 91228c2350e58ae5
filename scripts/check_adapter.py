#!/usr/bin/env python3
"""An independent check of edge-llm's PEFT adapter export.

Loads a GGUF model with llama.cpp's `gguf` package and a PEFT LoRA adapter directory
(`adapter_model.safetensors` + `adapter_config.json`) with the `safetensors` package's
NumPy API, merges W_hf += (lora_alpha / r) * B @ A into the Hugging Face layout weights
(q/k rows UN-permuted, as PEFT would apply the adapter to the original model), and runs the
LLaMA forward pass in float64 with half-split RoPE, as scripts/independent_perplexity.py
does. Shares no code with the Rust engine.

Prints one JSON object: {"logits": [[...vocab] per position]} for the given ids.
"""
import argparse, json, os, sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file

# GGUF tensor name -> PEFT module path inside a layer.
PEFT = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True, help="PEFT adapter directory")
    ap.add_argument("--ids", required=True, help="JSON list of token ids")
    a = ap.parse_args()

    r = GGUFReader(a.model)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.")}
    arch = f["general.architecture"]
    n_layers = f[f"{arch}.block_count"]
    d = f[f"{arch}.embedding_length"]
    n_heads = f[f"{arch}.attention.head_count"]
    n_kv = f[f"{arch}.attention.head_count_kv"]
    theta = f[f"{arch}.rope.freq_base"]
    eps = f[f"{arch}.attention.layer_norm_rms_epsilon"]
    hd = d // n_heads

    T = {}
    for t in r.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float64)
        T[t.name] = w.reshape([int(x) for x in reversed(t.shape)])  # GGUF ne=[in,out] -> [out][in]

    def unpermute(w, heads):
        # llama.cpp's converter did w.reshape(h, 2, hd/2, in).swapaxes(1, 2); invert it.
        out, inp = w.shape
        return w.reshape(heads, hd // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)

    # The base model in Hugging Face layout.
    for l in range(n_layers):
        T[f"blk.{l}.attn_q.weight"] = unpermute(T[f"blk.{l}.attn_q.weight"], n_heads)
        T[f"blk.{l}.attn_k.weight"] = unpermute(T[f"blk.{l}.attn_k.weight"], n_kv)

    # PEFT's merge: W += (alpha / r) * B @ A, on the HF-layout weights.
    cfg = json.load(open(os.path.join(a.adapter, "adapter_config.json")))
    assert cfg["peft_type"] == "LORA" and not cfg.get("use_rslora") and cfg.get("bias") == "none"
    scale = cfg["lora_alpha"] / cfg["r"]
    ad = load_file(os.path.join(a.adapter, "adapter_model.safetensors"))
    used = 0
    for l in range(n_layers):
        for g, m in PEFT.items():
            if m.split(".")[1] not in cfg["target_modules"]:
                continue
            pre = f"base_model.model.model.layers.{l}.{m}"
            A = ad[f"{pre}.lora_A.weight"].astype(np.float64)
            B = ad[f"{pre}.lora_B.weight"].astype(np.float64)
            W = T[f"blk.{l}.{g}.weight"]
            assert A.shape == (cfg["r"], W.shape[1]) and B.shape == (W.shape[0], cfg["r"])
            T[f"blk.{l}.{g}.weight"] = W + scale * (B @ A)
            used += 2
    assert used == len(ad), f"{len(ad) - used} adapter tensors unused"

    ids = np.array(json.loads(a.ids), dtype=np.int64)
    n = len(ids)
    emb = T["token_embd.weight"]
    x = emb[ids]

    inv = theta ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(n)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, axis=1)
    sin = np.concatenate([np.sin(ang)] * 2, axis=1)

    def rope(v):  # v: [n, heads, hd], half-split (rotate_half)
        v1, v2 = v[..., : hd // 2], v[..., hd // 2 :]
        rot = np.concatenate([-v2, v1], axis=-1)
        return v * cos[:, None, :] + rot * sin[:, None, :]

    def rms(v, w):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * w

    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(n_layers):
        p = lambda s: T[f"blk.{l}.{s}.weight"]
        h = rms(x, p("attn_norm"))
        q = (h @ p("attn_q").T).reshape(n, n_heads, hd)
        k = (h @ p("attn_k").T).reshape(n, n_kv, hd)
        v = (h @ p("attn_v").T).reshape(n, n_kv, hd)
        q, k = rope(q), rope(k)
        rep = n_heads // n_kv
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", s, v).reshape(n, d)
        x = x + o @ p("attn_output").T
        h = rms(x, p("ffn_norm"))
        g = h @ p("ffn_gate").T
        u = h @ p("ffn_up").T
        x = x + (g / (1 + np.exp(-g)) * u) @ p("ffn_down").T
    x = rms(x, T["output_norm.weight"])
    head = T.get("output.weight", emb)
    logits = x @ head.T
    print(json.dumps({"logits": logits.tolist()}))


if __name__ == "__main__":
    sys.exit(main())
