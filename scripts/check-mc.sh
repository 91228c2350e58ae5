#!/usr/bin/env bash
# Cross-checks `edge-llm eval-mc`'s acc and acc_norm against an independent implementation
# (scripts/independent_mc.py: float64 NumPy, lm-evaluation-harness's prompt and
# normalisation written out there) on the first N ARC-Easy validation questions: both
# figures must agree within 1 point. Opt-in (minutes): not in scripts/test.sh.
#   scripts/check-mc.sh [N]        (default N = 100)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
N="${1:-100}"
MODEL="$ROOT/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf"
DATA="$ROOT/data/arc-easy/validation.jsonl"
[ -f "$MODEL" ] || die "missing $MODEL: run scripts/setup.sh"
[ -f "$DATA" ] || die "missing $DATA: run scripts/setup.sh"
python_env
cargo build -q --release --bin edge-llm
BIN="$ROOT/target/release/edge-llm"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
head -n "$N" "$DATA" > "$TMP/questions.jsonl"
log "edge-llm eval-mc (first $N questions)"
"$BIN" eval-mc --model "$MODEL" --data "$TMP/questions.jsonl" --json > "$TMP/ours.json"
log "token ids from edge-llm's tokenizer"
"$PY" - "$BIN" "$MODEL" "$TMP/questions.jsonl" > "$TMP/with-ids.jsonl" <<'PY'
import json, subprocess, sys
bin_, model, path = sys.argv[1:4]
def ids(text):
    out = subprocess.run([bin_, "tokenize", "--model", model, "--text", text, "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["ids"]
for line in open(path):
    q = json.loads(line)
    q["ctx_ids"] = ids(f"Question: {q['question']}\nAnswer:")
    q["cont_ids"] = [ids(" " + c) for c in q["choices"]]
    print(json.dumps(q))
PY
log "the independent implementation (float64 NumPy)"
"$PY" "$ROOT/scripts/independent_mc.py" --model "$MODEL" --questions "$TMP/with-ids.jsonl" > "$TMP/theirs.json"
"$PY" - "$TMP/ours.json" "$TMP/theirs.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["n"] == b["n"], (a["n"], b["n"])
d = max(abs(x - y) for s, t in zip(a["scores"], b["scores"]) for x, y in zip(s, t))
ok = True
for k in ("acc", "acc_norm"):
    diff = 100 * abs(a[k] - b[k])
    ok &= diff <= 1.0
    print(f"{k}: edge-llm {100 * a[k]:.2f} %, independent {100 * b[k]:.2f} %, difference {diff:.2f} points (limit 1)")
print(f"{a['n']} questions; largest difference of a choice's summed log-likelihood {d:.2e}")
sys.exit(0 if ok else 1)
PY
