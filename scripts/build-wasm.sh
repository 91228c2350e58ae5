#!/usr/bin/env bash
# Builds the library for wasm32 (release) and its JS bindings (`wasm-bindgen --target web`)
# twice: www/pkg, the plain module (one thread; the page's main thread and static hosts
# without COOP/COEP headers), and www/pkg-threads, the threaded one (feature `threads`:
# shared memory, the CPU engine's work split over a pool of workers), which the page's
# workers load where the page is cross-origin isolated. Skips a module newer than every
# source.
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

command -v wasm-bindgen >/dev/null 2>&1 || die "wasm-bindgen not found: run scripts/setup.sh"
have="$(wasm-bindgen --version | awk '{print $2}')"
[ "$have" = "$WASM_BINDGEN_VERSION" ] ||
  die "wasm-bindgen $have does not match the crate's $WASM_BINDGEN_VERSION: run scripts/setup.sh"

# fresh OUT : whether OUT holds a module newer than every source.
fresh() {
  local stamp="$1/edge_llm_bg.wasm"
  [ "$FORCE" -eq 0 ] && [ -f "$stamp" ] && [ -f "$1/edge_llm.js" ] &&
    [ -z "$(find src shaders Cargo.toml Cargo.lock -newer "$stamp" -print -quit 2>/dev/null)" ]
}

# bindgen WASM OUT : the JS bindings of WASM into OUT, stamped.
bindgen() {
  log "wasm-bindgen --target web --out-dir ${2#"$ROOT/"}"
  rm -rf "$2"
  wasm-bindgen --target web --out-dir "$2" "$1"
  touch "$2/edge_llm_bg.wasm"
  log "${2#"$ROOT/"} built ($(du -h "$2/edge_llm_bg.wasm" | cut -f1) of wasm)"
}

OUT="$ROOT/www/pkg"
if fresh "$OUT"; then
  log "www/pkg is up to date"
else
  wasm_toolchain
  log "cargo build --release --lib (wasm32, $WASM_MODE)"
  start=$SECONDS
  wasm_cargo build --release --lib
  bindgen "$ROOT/target/wasm32-unknown-unknown/release/edge_llm.wasm" "$OUT"
  log "the plain module took $((SECONDS - start)) s"
fi

OUT="$ROOT/www/pkg-threads"
if fresh "$OUT"; then
  log "www/pkg-threads is up to date"
else
  debweb_toolchain
  log "cargo build --release --lib --features threads (wasm32 with atomics, debweb)"
  start=$SECONDS
  wasm_threads_cargo build --release --lib
  bindgen "$WASM_THREADS_TARGET/wasm32-unknown-unknown/release/edge_llm.wasm" "$OUT"
  log "the threaded module took $((SECONDS - start)) s"
fi
