#!/usr/bin/env bash
# The npm package `edge-llm`: builds the wasm (release, --target web, via build-wasm.sh into
# www/pkg), assembles target/npm/edge-llm/ from it and the wrapper sources in npm/
# (index.js, index.d.ts, README.md), writes package.json (version from Cargo.toml), and runs
# `npm pack`. Prints the tarball's path last.
#   scripts/pack-npm.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
[ $# -eq 0 ] || die "no options (got $*)"

command -v npm >/dev/null 2>&1 || die "npm not found: run scripts/setup.sh"
bash "$ROOT/scripts/build-wasm.sh"

VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
[ -n "$VERSION" ] || die "no version in Cargo.toml"
NPM_DIR="$ROOT/target/npm"
PKG="$NPM_DIR/edge-llm"
rm -rf "$PKG"
mkdir -p "$PKG/pkg"
for f in edge_llm.js edge_llm_bg.wasm edge_llm.d.ts edge_llm_bg.wasm.d.ts; do
  cp "$ROOT/www/pkg/$f" "$PKG/pkg/$f"
done
# The threaded module with its worker helper (wasm-bindgen's snippets folder).
cp -r "$ROOT/www/pkg-threads" "$PKG/pkg-threads"
cp "$ROOT/npm/index.js" "$ROOT/npm/index.d.ts" "$ROOT/npm/README.md" "$PKG/"
cp "$ROOT/LICENSE-MIT" "$ROOT/LICENSE-APACHE" "$PKG/"

python3 - "$PKG/package.json" "$VERSION" <<'PY'
import json, sys
path, version = sys.argv[1], sys.argv[2]
pkg = {
    "name": "edge-llm",
    "version": version,
    "description": "Private on-device LoRA fine-tuning, evaluation and generation of LLaMA-family "
                   "GGUF models in the browser, on WebGPU (Rust compiled to WebAssembly)",
    "license": "MIT OR Apache-2.0",
    "type": "module",
    "main": "./index.js",
    "module": "./index.js",
    "types": "./index.d.ts",
    "exports": {
        ".": {"types": "./index.d.ts", "default": "./index.js"},
        "./raw": {"types": "./pkg/edge_llm.d.ts", "default": "./pkg/edge_llm.js"},
        "./edge_llm_bg.wasm": "./pkg/edge_llm_bg.wasm",
        "./package.json": "./package.json",
    },
    "files": ["index.js", "index.d.ts", "pkg/", "pkg-threads/", "README.md", "LICENSE-MIT", "LICENSE-APACHE"],
    "sideEffects": ["./pkg/edge_llm.js", "./pkg-threads/edge_llm.js"],
    "keywords": ["llm", "webgpu", "wasm", "lora", "fine-tuning", "gguf", "peft"],
}
with open(path, "w") as f:
    json.dump(pkg, f, indent=2)
    f.write("\n")
PY

rm -f "$NPM_DIR"/edge-llm-*.tgz
(cd "$NPM_DIR" && npm pack --silent ./edge-llm >/dev/null)
TARBALL="$NPM_DIR/edge-llm-$VERSION.tgz"
[ -f "$TARBALL" ] || die "npm pack made no $TARBALL"
log "npm package: $TARBALL ($(du -h "$TARBALL" | cut -f1))"
echo "$TARBALL"
