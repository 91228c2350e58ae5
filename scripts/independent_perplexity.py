#!/usr/bin/env python3
"""An independent implementation of the LLaMA forward pass, to cross-check edge-llm.

It shares no code with the Rust engine: the GGUF file is read and dequantized by
llama.cpp's own Python package (`gguf`), the model runs in float64 NumPy, and RoPE uses
the Hugging Face half-split form on Q/K rows UN-permuted back to the original layout
(edge-llm instead applies the interleaved form to the stored rows). Only the token ids
are taken from edge-llm's tokenizer, whose output is checked separately against known ids.

Prints one JSON object: {"perplexity", "tokens", "mean_nll"} over the given ids, with the
same convention as `edge-llm perplexity` (no BOS; predicts tokens 2..N).
"""
import argparse, json, sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def load_hf(path):
    """Hyper-parameters and float64 weights of a GGUF model in Hugging Face layout:
    `[out][in]` matrices, with attn_q/attn_k rows un-permuted back to the original order."""
    r = GGUFReader(path)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.")}
    arch = f["general.architecture"]
    d = f[f"{arch}.embedding_length"]
    hp = {
        "n_layers": f[f"{arch}.block_count"],
        "d": d,
        "n_heads": f[f"{arch}.attention.head_count"],
        "n_kv": f[f"{arch}.attention.head_count_kv"],
        "theta": f[f"{arch}.rope.freq_base"],
        "eps": f[f"{arch}.attention.layer_norm_rms_epsilon"],
    }
    hd = d // hp["n_heads"]
    hp["hd"] = hd

    def unpermute(w, heads):
        # llama.cpp's converter did w.reshape(h, 2, hd/2, in).swapaxes(1, 2); invert it.
        out, inp = w.shape
        return w.reshape(heads, hd // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)

    T = {}
    for t in r.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float64)
        T[t.name] = w.reshape([int(x) for x in reversed(t.shape)])  # GGUF ne=[in,out] -> [out][in]
    for l in range(hp["n_layers"]):
        T[f"blk.{l}.attn_q.weight"] = unpermute(T[f"blk.{l}.attn_q.weight"], hp["n_heads"])
        T[f"blk.{l}.attn_k.weight"] = unpermute(T[f"blk.{l}.attn_k.weight"], hp["n_kv"])
    return hp, T


def logits(hp, T, ids):
    """Logits `[n][vocab]` of every position, half-split RoPE on HF-layout weights."""
    n_layers, d, n_heads, n_kv, hd = hp["n_layers"], hp["d"], hp["n_heads"], hp["n_kv"], hp["hd"]
    theta, eps = hp["theta"], hp["eps"]
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
    return x @ T.get("output.weight", emb).T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="JSON file with {\"ids\": [...]}")
    a = ap.parse_args()

    hp, T = load_hf(a.model)
    ids = np.array(json.load(open(a.ids))["ids"], dtype=np.int64)
    n = len(ids)
    z = logits(hp, T, ids)[:-1]
    m = z.max(-1, keepdims=True)
    lse = (np.log(np.exp(z - m).sum(-1, keepdims=True)) + m)[:, 0]
    nll = float((lse - z[np.arange(n - 1), ids[1:]]).mean())
    print(json.dumps({"perplexity": float(np.exp(nll)), "tokens": n, "mean_nll": nll}))


if __name__ == "__main__":
    sys.exit(main())
