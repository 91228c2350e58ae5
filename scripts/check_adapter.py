#!/usr/bin/env python3
"""An independent check of edge-llm's PEFT adapter export.

Loads a GGUF model with llama.cpp's `gguf` package and a PEFT LoRA adapter directory
(`adapter_model.safetensors` + `adapter_config.json`) with the `safetensors` package's
NumPy API, merges W_hf += (lora_alpha / r) * B @ A into the Hugging Face layout weights
(q/k rows UN-permuted, as PEFT would apply the adapter to the original model), and runs the
LLaMA forward pass in float64 with half-split RoPE, using the loader and forward pass of
scripts/independent_perplexity.py. Shares no code with the Rust engine.

Prints one JSON object: {"logits": [[...vocab] per position]} for the given ids.
"""
import argparse, json, os, sys

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from independent_perplexity import load_hf, logits  # noqa: E402

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

    hp, T = load_hf(a.model)  # Hugging Face layout: q/k rows un-permuted

    # PEFT's merge: W += (alpha / r) * B @ A, on the HF-layout weights.
    cfg = json.load(open(os.path.join(a.adapter, "adapter_config.json")))
    assert cfg["peft_type"] == "LORA" and not cfg.get("use_rslora") and cfg.get("bias") == "none"
    scale = cfg["lora_alpha"] / cfg["r"]
    ad = load_file(os.path.join(a.adapter, "adapter_model.safetensors"))
    used = 0
    for l in range(hp["n_layers"]):
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
    print(json.dumps({"logits": logits(hp, T, ids).tolist()}))


if __name__ == "__main__":
    sys.exit(main())
