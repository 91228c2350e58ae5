#!/usr/bin/env bash
# Fuzzes every parser of outside data (fuzz/fuzz_targets/, docs/fuzzing.md) for SECONDS
# each (default 60): installs cargo-fuzz if missing, seeds each target's corpus from real
# files (a tiny model and its compressed forms, a tiny tuning run's checkpoints and
# adapter, the data files, tokenizer.json samples), runs the targets one after another and
# prints each one's executions and any crash. Not part of scripts/test.sh: the crashes it
# finds become tests in tests/fuzz_regressions.rs.
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
# Environment: FUZZ_SANITIZER (none, the default, or address), FUZZ_NICE (default 19).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

SECS="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(gguf compressed data peft exits checkpoint policy tokenizer)
SANITIZER="${FUZZ_SANITIZER:-none}"
NICE=(nice -n "${FUZZ_NICE:-19}")
CARGO_FUZZ_VERSION="0.13.2"

# cargo-fuzz drives libFuzzer through rustc flags that stable rustc accepts only with
# RUSTC_BOOTSTRAP=1 (sanitizer-coverage; -Zsanitizer=address with FUZZ_SANITIZER=address):
# no nightly toolchain is needed. Only cargo-fuzz gets it: build scripts that probe for
# nightly features would otherwise rebuild the main target directory.
fuzz() { RUSTC_BOOTSTRAP=1 "${NICE[@]}" cargo fuzz "$@"; }
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  "${NICE[@]}" cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

log "building edge-llm (for the seed files) and the fuzz targets"
"${NICE[@]}" cargo build --release --quiet --bin edge-llm
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/edge-llm"
fuzz build --sanitizer "$SANITIZER"

# ---- Seeds: written to fuzz/target/seeds, copied into fuzz/corpus/<target> ----
WORK="$ROOT/fuzz/target/seeds"
rm -rf "$WORK"
mkdir -p "$WORK"
seed() { # seed TARGET NAME: stdin becomes fuzz/corpus/TARGET/seed-NAME
  mkdir -p "$ROOT/fuzz/corpus/$1"
  cat > "$ROOT/fuzz/corpus/$1/seed-$2"
}
quiet() { "$@" > "$WORK/last.log" 2>&1 || { cat "$WORK/last.log" >&2; die "seed step failed: $*"; }; }

log "seeding the corpora"
# Models: the tiny model of fuzz/src/lib.rs (`tiny_spec`, which the adapter and checkpoint
# targets rebuild in memory), whole and cut short at 4 KiB and 16 KiB (24 KB in all).
quiet "$BIN" make-tiny --out "$WORK/tiny.gguf" --layers 2 --hidden 32 --heads 2 --kv-heads 1 --ffn 32
seed gguf tiny < "$WORK/tiny.gguf"
head -c 4096 "$WORK/tiny.gguf" | seed gguf tiny-4k
head -c 16384 "$WORK/tiny.gguf" | seed gguf tiny-16k

# Data: the real files when scripts/setup.sh fetched them, each cut to a few records, and
# one of each format written here. The first byte picks the name: 0 .txt, 1 .jsonl.
TEXT="the quick brown fox jumps over the lazy dog. "
{ printf '\0'; for _ in $(seq 40); do printf '%s' "$TEXT"; done; } | seed data text
{ printf '\1'; printf '%s\n' \
  '{"prompt": "Name a colour.", "response": "Blue."}' \
  '{"prompt": "2 + 2?", "response": "4"}'; } | seed data instruct
{ printf '\1'; printf '%s\n' \
  '{"question": "Which is a fruit?", "choices": ["apple", "stone"], "answer": 0}' \
  '{"question": "Question: Sky colour?\nAnswer:", "choices": ["green", "blue"], "answer": 1, "format": "raw"}'; } |
  seed data mc
for f in data/shakespeare/train.txt data/arc-easy/train.jsonl data/arc-easy/train-instruct.jsonl; do
  [ -f "$f" ] || continue
  case "$f" in
    *.txt) { printf '\0'; head -c 2048 "$f"; } | seed data "$(basename "$(dirname "$f")")-txt" ;;
    *) { printf '\1'; head -n 8 "$f"; } | seed data "$(basename "$f" .jsonl)" ;;
  esac
done

# Compressed models: the tiny model quantized, 2:4-sparse and unstructured-sparse; the
# quantized one's policy is a policy seed.
for _ in $(seq 60); do printf '%s' "$TEXT"; done > "$WORK/text.txt"
CALIB=(--calib "$WORK/text.txt" --calib-rows 4 --seq-len 32 --fisher-rows 0 --cache-dir "$WORK/profile" --device cpu)
"$BIN" compress --model "$WORK/tiny.gguf" "${CALIB[@]}" --allocation uniform --bits 4 --quant rtn \
  --out "$WORK/q4.gguf" --json > "$WORK/q4.json" 2> "$WORK/last.log" ||
  { cat "$WORK/last.log" >&2; die "seed step failed: compress"; }
quiet "$BIN" compress --model "$WORK/tiny.gguf" "${CALIB[@]}" --allocation uniform --bits 8 --sparsity 0.5 \
  --pattern 2:4 --method magnitude --out "$WORK/s24.gguf"
quiet "$BIN" compress --model "$WORK/tiny.gguf" "${CALIB[@]}" --allocation uniform --bits 4 --sparsity 0.5 \
  --method magnitude --out "$WORK/unstructured.gguf"
for m in q4 s24 unstructured; do seed compressed "$m" < "$WORK/$m.gguf"; done
python3 - "$WORK/q4.json" <<'EOF' | seed policy q4
import json, sys
print(json.dumps(json.load(open(sys.argv[1]))["policy"], indent=2))
EOF
printf '%s\n' '{"version": 1, "layers": [{"sparsity": 0.5, "bits": 4}, {"sparsity": 0.0, "bits": 8}],' \
  '"pattern": "two_of_four", "prune": "sparse_gpt", "quant": "gptq", "group": 64, "symmetric": false,' \
  '"allocation": "manual"}' | seed policy two-layers

# A tiny tuning run, vanilla and edge (early exits, a layer schedule and its phases): its
# checkpoints and adapters.
for mode in vanilla edge; do
  quiet "$BIN" tune --model "$WORK/tiny.gguf" --data "$WORK/text.txt" --steps 4 --seq-len 32 --lora-rank 2 \
    --eval-every 2 --device cpu --mode "$mode" --exit-stride 1 --out "$WORK/tune-$mode"
  for c in checkpoint.json checkpoint.prev.json; do
    [ -f "$WORK/tune-$mode/$c" ] && seed checkpoint "$mode-$c" < "$WORK/tune-$mode/$c"
  done
  dir="$(dirname "$(find "$WORK/tune-$mode" -name adapter_config.json | head -n 1)")"
  { cat "$dir/adapter_config.json"; printf '\0'; cat "$dir/adapter_model.safetensors"; } | seed peft "$mode"
  if [ -f "$dir/exits.safetensors" ]; then
    rank="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["r"])' "$dir/adapter_config.json")"
    { printf "\\$(printf '%03o' "$rank")"; cat "$dir/exits.safetensors"; } | seed exits "$mode"
  fi
done

for f in fuzz/seeds/tokenizer/*.json; do seed tokenizer "$(basename "$f" .json)" < "$f"; done

# ---- Runs: one target at a time ----
LOGS="$ROOT/fuzz/target/logs"
mkdir -p "$LOGS"
TOTAL=0
CRASHED=()
printf '\n%-12s %14s %8s  %s\n' target executions exec/s result
for t in "${TARGETS[@]}"; do
  log "fuzzing $t for ${SECS} s"
  status=ok
  # -timeout: an input taking longer is a hang; -rss_limit_mb: memory growth. Single huge
  # allocations are caught by the targets' allocator (fuzz/src/lib.rs).
  fuzz run --sanitizer "$SANITIZER" "$t" -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    > "$LOGS/$t.log" 2>&1 || status=crash
  # The final statistics, or after a crash the last status line ("#N ...").
  runs="$({ grep -o 'stat::number_of_executed_units: *[0-9]*' "$LOGS/$t.log" ||
    grep -oE '^#[0-9]+' "$LOGS/$t.log" || true; } | grep -oE '[0-9]+$' | tail -n 1)"
  runs="${runs:-0}"
  TOTAL=$((TOTAL + runs))
  if [ "$status" = crash ]; then
    CRASHED+=("$t")
    artifact="$({ grep -o 'Test unit written to [^ ]*' "$LOGS/$t.log" || true; } | tail -n 1 | sed 's/Test unit written to //')"
    status="CRASH: ${artifact:-see $LOGS/$t.log}"
  fi
  printf '%-12s %14d %8d  %s\n' "$t" "$runs" "$((runs / (SECS > 0 ? SECS : 1)))" "$status"
done
printf '%-12s %14d\n' total "$TOTAL"
if [ ${#CRASHED[@]} -gt 0 ]; then
  die "crashes in: ${CRASHED[*]} (logs in $LOGS; reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $SANITIZER TARGET ARTIFACT)"
fi
