#!/usr/bin/env bash
# Installs what the project needs, idempotently: Debian packages, the wasm toolchain,
# wasm-bindgen-cli at the pinned version, the npm packages of the tests, the default
# model and the data. A second run on a warm machine does nothing but checks.
#   scripts/setup.sh            everything
#   scripts/setup.sh --no-data  toolchain only (no model or data download)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WITH_DATA=1
for a in "$@"; do
  case "$a" in
    --no-data) WITH_DATA=0 ;;
    *) die "unknown option $a" ;;
  esac
done

apt_install mesa-vulkan-drivers chromium chromium-driver python3-pip python3-venv ca-certificates
wasm_toolchain
log "wasm toolchain: $WASM_MODE"
debweb_toolchain   # the threaded module's std is built from source

if ! command -v wasm-bindgen >/dev/null 2>&1 || [ "$(wasm-bindgen --version | awk '{print $2}')" != "$WASM_BINDGEN_VERSION" ]; then
  log "cargo install wasm-bindgen-cli $WASM_BINDGEN_VERSION (several minutes, once)"
  cargo install -q wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --force
fi

if [ -f "$ROOT/tests/e2e/package.json" ]; then
  if [ ! -d "$ROOT/tests/e2e/node_modules" ] || [ "$ROOT/tests/e2e/package.json" -nt "$ROOT/tests/e2e/node_modules" ]; then
    log "npm install (tests/e2e)"
    (cd "$ROOT/tests/e2e" && npm install --no-audit --no-fund --silent && touch node_modules)
  fi
fi

python_env   # .venv with the cross-check's pinned packages (scripts/check-perplexity.sh)

if [ "$WITH_DATA" -eq 1 ]; then
  bash "$ROOT/scripts/fetch-model.sh"
  bash "$ROOT/scripts/fetch-data.sh"
fi
log "setup done"
