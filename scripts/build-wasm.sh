#!/usr/bin/env bash
# Builds the library for wasm32 (release) and its JS bindings into www/pkg
# (`wasm-bindgen --target web`). Skips the work when www/pkg is newer than every source.
#   scripts/build-wasm.sh           build if stale
#   scripts/build-wasm.sh --force   build anyway
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

FORCE=0
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    *) die "unknown option $a" ;;
  esac
done

OUT="$ROOT/www/pkg"
STAMP="$OUT/edge_llm_bg.wasm"
if [ "$FORCE" -eq 0 ] && [ -f "$STAMP" ] && [ -f "$OUT/edge_llm.js" ] &&
   [ -z "$(find src shaders Cargo.toml Cargo.lock -newer "$STAMP" -print -quit 2>/dev/null)" ]; then
  log "www/pkg is up to date"
  exit 0
fi

command -v wasm-bindgen >/dev/null 2>&1 || die "wasm-bindgen not found: run scripts/setup.sh"
have="$(wasm-bindgen --version | awk '{print $2}')"
[ "$have" = "$WASM_BINDGEN_VERSION" ] ||
  die "wasm-bindgen $have does not match the crate's $WASM_BINDGEN_VERSION: run scripts/setup.sh"

wasm_toolchain
log "cargo build --release --lib (wasm32, $WASM_MODE)"
start=$SECONDS
wasm_cargo build --release --lib
log "wasm-bindgen --target web --out-dir www/pkg"
wasm-bindgen --target web --out-dir "$OUT" "$ROOT/target/wasm32-unknown-unknown/release/edge_llm.wasm"
touch "$STAMP"
log "www/pkg built in $((SECONDS - start)) s ($(du -h "$STAMP" | cut -f1) of wasm)"
