#!/usr/bin/env python3
"""Loads an edge-llm LoRA adapter with the real Hugging Face stack and prints its logits.

The base model comes from the GGUF file through transformers' own GGUF loader
(`AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)`: it dequantizes with the
`gguf` package and un-permutes the q/k rows itself), in float32; the adapter directory is
applied by `peft.PeftModel.from_pretrained`, exactly as a user would load it. Nothing here
is shared with the Rust engine or with scripts/check_adapter.py.

Before running, it checks that PEFT took every tensor of the file (same names, same
values, one LoRA module per (layer, target)), so a silently ignored tensor cannot pass.

Prints one JSON object: {"logits": [[...vocab] per position]} for the given ids, plus
"base_logits" (the model without the adapter) with --base.
"""
import argparse, json, os, sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def run(model, ids):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long))
    return out.logits[0].to(torch.float64).tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--adapter", required=True, help="PEFT adapter directory")
    ap.add_argument("--ids", required=True, help="JSON list of token ids")
    ap.add_argument("--base", action="store_true", help="also print the base model's logits")
    a = ap.parse_args()
    ids = json.loads(a.ids)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    path = os.path.abspath(a.model)
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path),
        gguf_file=os.path.basename(path),
        dtype=torch.float32,
        attn_implementation="eager",
    )
    model.eval()
    c = model.config
    print(
        f"check_peft: {type(model).__name__} layers {c.num_hidden_layers} heads "
        f"{c.num_attention_heads}/{c.num_key_value_heads} rope_theta "
        f"{getattr(c, 'rope_theta', None) or c.rope_parameters} eps {c.rms_norm_eps} "
        f"tied {c.tie_word_embeddings}",
        file=sys.stderr,
    )
    result = {}
    if a.base:
        result["base_logits"] = run(model, ids)

    model = PeftModel.from_pretrained(model, a.adapter, is_trainable=False)
    model.eval()

    # PEFT must have taken every tensor, with the file's values.
    cfg = json.load(open(os.path.join(a.adapter, "adapter_config.json")))
    file = load_file(os.path.join(a.adapter, "adapter_model.safetensors"))
    loaded = get_peft_model_state_dict(model)
    missing = sorted(set(file) - set(loaded))
    extra = sorted(set(loaded) - set(file))
    assert not missing and not extra, f"PEFT state vs file: missing {missing[:3]} extra {extra[:3]}"
    for k, v in file.items():
        assert torch.equal(loaded[k].to(torch.float32), v.to(torch.float32)), f"{k} differs"
    n_lora = sum(1 for _, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    want = c.num_hidden_layers * len(cfg["target_modules"])
    assert n_lora == want, f"{n_lora} LoRA modules, expected {want}"
    print(f"check_peft: PEFT took {len(file)} tensors into {n_lora} LoRA modules", file=sys.stderr)

    result["logits"] = run(model, ids)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
