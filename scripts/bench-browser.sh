#!/usr/bin/env bash
# The page's tuning speed against the native CLI's, in one run on this machine with the same
# settings (tests/e2e/bench-browser.mjs says what is measured): the page's wasm CPU engine,
# its WebGPU engine, and `edge-llm tune --device cpu`, with the ratios.
#   scripts/bench-browser.sh [--json] [--steps N] [--gpu-steps N] [--no-gpu]
# Builds what is stale first (the release CLI, www/pkg); needs scripts/setup.sh's model,
# data, Chromium and the e2e tests' node modules.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

log "cargo build --release (the native CLI)"
cargo build --release -q --bin edge-llm
bash scripts/build-wasm.sh >&2
link_default_model
link_web_data
[ -d tests/e2e/node_modules/playwright-core ] || (cd tests/e2e && npm install --no-audit --no-fund --silent >&2)
exec node tests/e2e/bench-browser.mjs "$@"
