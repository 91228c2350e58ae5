#!/usr/bin/env bash
# Cross-checks the engine against an independent implementation of the model
# (scripts/independent_perplexity.py: llama.cpp's gguf package + float64 NumPy): the
# perplexity of the first N tokens of held-out Shakespeare must agree within 1 %.
#   scripts/check-perplexity.sh [N]        (default N = 256)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
N="${1:-256}"
MODEL="$ROOT/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT="$ROOT/data/shakespeare/validation.txt"
[ -f "$MODEL" ] || die "missing $MODEL: run scripts/setup.sh"
[ -f "$TEXT" ] || die "missing $TEXT: run scripts/setup.sh"
python_env
cargo build -q --bin edge-llm
BIN="$ROOT/target/debug/edge-llm"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
"$BIN" tokenize --model "$MODEL" --file "$TEXT" --max-tokens "$N" --json > "$TMP/ids.json"
"$BIN" perplexity --model "$MODEL" --text "$TEXT" --max-tokens "$N" --json > "$TMP/ours.json"
"$PY" "$ROOT/scripts/independent_perplexity.py" --model "$MODEL" --ids "$TMP/ids.json" > "$TMP/theirs.json"
"$PY" - "$TMP/ours.json" "$TMP/theirs.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["tokens"] == b["tokens"], (a, b)
rel = abs(a["perplexity"] - b["perplexity"]) / b["perplexity"]
print(f"perplexity over {a['tokens']} tokens: edge-llm {a['perplexity']:.4f}, "
      f"independent {b['perplexity']:.4f}, relative difference {rel:.2e} (limit 1e-2)")
sys.exit(0 if rel < 1e-2 else 1)
PY
