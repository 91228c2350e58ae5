# Shared helpers for the project scripts. Source it; do not run it.
# shellcheck shell=bash
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT
WASM_BINDGEN_VERSION="0.2.130"   # must equal the `wasm-bindgen = "=…"` pin in Cargo.toml
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\033[1m[edge-llm]\033[0m %s\n' "$*" >&2; }
die() { printf '[edge-llm] error: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# apt_install PKG... : installs the packages that are missing, running `apt-get update` once.
APT_UPDATED=0
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The wasm toolchain: the rustup target when it can be had, else Debian's rustc-web
# (linked into rustup as `debweb`) building std from source. Sets WASM_CARGO (array).
wasm_toolchain() {
  if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    WASM_MODE=rustup
  elif [ -f "$ROOT/target/.wasm-mode-debweb" ] && rustup toolchain list | grep -q '^debweb'; then
    WASM_MODE=debweb
  elif timeout 60 rustup target add wasm32-unknown-unknown >/dev/null 2>&1; then
    WASM_MODE=rustup
  else
    log "rustup cannot fetch the wasm32 target here; using Debian's rustc-web"
    debweb_toolchain
    mkdir -p "$ROOT/target" && touch "$ROOT/target/.wasm-mode-debweb"
    WASM_MODE=debweb
  fi
  export WASM_MODE
}

# Debian's rustc-web with the std sources and the wasm linker, linked into rustup as
# `debweb`: builds std from source (-Zbuild-std), which the threaded module always needs
# (its std must be compiled with atomics) and the plain one needs where rustup cannot
# fetch the wasm32 target.
debweb_toolchain() {
  if ! rustup toolchain list | grep -q '^debweb' || ! command -v wasm-ld-22 >/dev/null 2>&1 ||
     [ ! -d /usr/lib/rustlib/src/rust/library ]; then
    apt_install rustc-web cargo-web rust-web-src lld-22 || {
      # rustc-web lives in bookworm-security
      $SUDO apt-get install -y -qq -t bookworm-security rustc-web cargo-web rust-web-src lld-22 >/dev/null
    }
    rustup toolchain list | grep -q '^debweb' || rustup toolchain link debweb /usr
  fi
}

# The wasm32 build's target features: SIMD128 (4 f32 lanes; every browser with WebGPU has
# it) for the CPU engine's matrix products.
WASM_FEATURES="-C target-feature=+simd128"

# wasm_cargo SUBCOMMAND ARGS... : runs cargo for wasm32 with the chosen toolchain.
wasm_cargo() {
  local sub="$1"; shift
  if [ "$WASM_MODE" = rustup ]; then
    RUSTFLAGS="$WASM_FEATURES ${WASM_RUSTFLAGS:-}" cargo "$sub" --target wasm32-unknown-unknown "$@"
  else
    # `test` is in the set for every subcommand: test binaries link libtest, and one set
    # for all lets `build` and `test` share the std and dependency builds (a different set
    # rebuilds everything, minutes on 2 cores).
    RUSTC_BOOTSTRAP=1 RUSTFLAGS="-C linker=wasm-ld-22 $WASM_FEATURES ${WASM_RUSTFLAGS:-}" \
      cargo +debweb "$sub" --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort,test "$@"
  fi
}

# wasm_threads_cargo SUBCOMMAND ARGS... : cargo for the threaded module (feature `threads`):
# SIMD128 plus shared memory (atomics, bulk memory) with a std built to match, in its own
# target folder (other flags would rebuild the plain module's every time); the linker makes
# the memory shared and imported (up to 4 GiB) and exports the thread-local storage hooks
# that wasm-bindgen's thread start-up calls.
WASM_THREADS_TARGET="$ROOT/target/wasm-threads"
wasm_threads_cargo() {
  local sub="$1"; shift
  RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$WASM_THREADS_TARGET" \
    RUSTFLAGS="-C linker=wasm-ld-22 $WASM_FEATURES -C target-feature=+atomics,+bulk-memory,+mutable-globals -C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296 -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base ${WASM_RUSTFLAGS:-}" \
    cargo +debweb "$sub" --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort --features threads "$@"
}

# The model the page loads by default, and where the page finds it.
DEFAULT_MODEL="$ROOT/models/cache/SmolLM2-135M-Instruct.Q4_1.gguf"

# link_default_model : makes www/models/default.gguf point at DEFAULT_MODEL (git-ignored).
link_default_model() {
  [ -f "$DEFAULT_MODEL" ] || die "no model at $DEFAULT_MODEL: run scripts/setup.sh"
  mkdir -p "$ROOT/www/models"
  ln -sfn "../../models/cache/$(basename "$DEFAULT_MODEL")" "$ROOT/www/models/default.gguf"
}

# link_web_data : serves the built-in data sets beside the page as www/data/<name>/
# (git-ignored links), for the tuning and evaluation sections.
link_web_data() {
  mkdir -p "$ROOT/www/data"
  local d
  for d in arc-easy shakespeare; do
    [ -d "$ROOT/data/$d" ] || die "no data in data/$d: run scripts/setup.sh"
    ln -sfn "../../data/$d" "$ROOT/www/data/$d"
  done
}

# port_free PORT : true when nothing listens on 127.0.0.1:PORT.
port_free() {
  python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

# python_env : a virtualenv (.venv) with the pinned Python packages of the cross-checks.
# Sets PY to its interpreter.
PY_REQS="numpy==2.4.6 gguf==0.19.0 safetensors==0.8.0"
python_env() {
  local venv="$ROOT/.venv"
  PY="$venv/bin/python"
  if [ ! -x "$PY" ] || [ "$(cat "$venv/.reqs" 2>/dev/null)" != "$PY_REQS" ]; then
    log "python venv: $PY_REQS"
    python3 -m venv "$venv"
    "$PY" -m pip install -q --disable-pip-version-check $PY_REQS
    echo "$PY_REQS" > "$venv/.reqs"
  fi
  export PY
}
