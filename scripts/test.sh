#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): setup, formatting, lints, native tests
# (real model and lavapipe GPU included), the perplexity cross-check against an independent
# implementation, the wasm32 build, the kernels in headless Chromium's WebGPU, and the page
# end to end. Stops at the first failing stage and prints "N passed, M failed" last.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

# Mesa's Vulkan loader prints "error: XDG_RUNTIME_DIR is invalid" for every adapter
# request when the variable is unset (CI, containers): give it a private one.
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "$XDG_RUNTIME_DIR" ]; then
  export XDG_RUNTIME_DIR="$ROOT/target/xdg-runtime"
  mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
fi

PASSED=0
STAGE=""
STAGE_START=0
T0=$SECONDS

stage() {
  STAGE="$1"
  STAGE_START=$SECONDS
  printf '\n\033[1;34m==== [%d] %s ====\033[0m\n' "$((PASSED + 1))" "$STAGE" >&2
}
ok() {
  PASSED=$((PASSED + 1))
  printf '\033[32m---- ok: %s (%d s)\033[0m\n' "$STAGE" "$((SECONDS - STAGE_START))" >&2
}
finish() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    printf '\n\033[1;31m---- FAILED: %s (exit %d)\033[0m\n' "$STAGE" "$rc" >&2
    echo "$PASSED passed, 1 failed"
  fi
}
trap finish EXIT

stage "setup (scripts/setup.sh)"
bash scripts/setup.sh
wasm_toolchain
ok

stage "cargo fmt --check"
cargo fmt --check
ok

stage "cargo clippy --all-targets -- -D warnings (native and wasm32)"
cargo clippy --all-targets -- -D warnings
if [ "$WASM_MODE" = rustup ]; then
  # src/web.rs and tests/web.rs exist only on wasm32.
  wasm_cargo clippy --release --lib --test web -- -D warnings
else
  log "skipping the wasm32 clippy pass: Debian's rustc-web has no clippy"
fi
ok

stage "cargo test (native; real model and GPU required)"
EDGE_LLM_REQUIRE_MODEL=1 EDGE_LLM_REQUIRE_PYTHON=1 cargo test
ok

stage "perplexity against an independent implementation (scripts/check-perplexity.sh)"
bash scripts/check-perplexity.sh
ok

stage "wasm32 release build (scripts/build-wasm.sh)"
bash scripts/build-wasm.sh
ok

stage "wasm-bindgen-test in headless Chromium (tests/web.rs)"
# --release shares the dependencies already built for www/pkg.
WASM_BINDGEN_TEST_TIMEOUT=300 CHROMEDRIVER=/usr/bin/chromedriver \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  wasm_cargo test --release --test web
ok

stage "page end to end in headless Chromium (tests/e2e: page, tuning, npm package)"
link_default_model
link_web_data
# The tuning test trains the seeded tiny model in the page and compares with a native run.
cargo build -q
target/debug/edge-llm make-tiny --out www/models/tiny.gguf >/dev/null
(cd tests/e2e && npm test --silent)
ok

echo
echo "all stages passed in $((SECONDS - T0)) s"
echo "$PASSED passed, 0 failed"
