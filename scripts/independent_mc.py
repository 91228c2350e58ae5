#!/usr/bin/env python3
"""Zero-shot multiple-choice scores from the independent implementation of the model
(scripts/independent_perplexity.py: llama.cpp's gguf package + float64 NumPy), with
lm-evaluation-harness's conventions written out here, not taken from edge-llm: the context
"Question: {question}\\nAnswer:", each choice scored as " {choice}" after it (summed
log-likelihood of its tokens); `acc` picks the highest sum, `acc_norm` the highest sum per
byte of the choice's text.

Input (--questions): JSON lines {"question", "choices", "answer", "ctx_ids", "cont_ids"},
the token ids of the context and of each " {choice}" from edge-llm's tokenizer (checked on
its own against known ids). Prints one JSON object: acc, acc_norm, n, scores.
"""
import argparse, json, sys

import numpy as np

from independent_perplexity import load_hf, logits


def log_softmax(z):
    m = z.max(-1, keepdims=True)
    return z - (np.log(np.exp(z - m).sum(-1, keepdims=True)) + m)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--questions", required=True)
    a = ap.parse_args()
    hp, T = load_hf(a.model)
    qs = [json.loads(l) for l in open(a.questions) if l.strip()]
    acc = acc_norm = 0
    all_scores = []
    for i, q in enumerate(qs):
        ctx = q["ctx_ids"]
        scores = []
        for cont in q["cont_ids"]:
            ids = np.array(ctx + cont, dtype=np.int64)
            lp = log_softmax(logits(hp, T, ids))
            # Token ctx+j is predicted at position ctx+j-1.
            scores.append(float(sum(lp[len(ctx) + j - 1, t] for j, t in enumerate(cont))))
        norm = [s / max(len(c.encode("utf-8")), 1) for s, c in zip(scores, q["choices"])]
        acc += int(np.argmax(scores) == q["answer"])
        acc_norm += int(np.argmax(norm) == q["answer"])
        all_scores.append(scores)
        print(f"\r{i + 1}/{len(qs)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    n = len(qs)
    print(json.dumps({"acc": acc / n, "acc_norm": acc_norm / n, "n": n, "scores": all_scores}))


if __name__ == "__main__":
    sys.exit(main())
