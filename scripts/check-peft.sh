#!/usr/bin/env bash
# Opt-in (not CI: torch and its CUDA runtime wheels are several GB): proves that a PEFT
# adapter written by `edge-llm tune` loads with the real Hugging Face libraries
# (transformers' GGUF loader + peft.PeftModel.from_pretrained) onto the same model and
# gives our logits within 1e-3 (tests/peft_library.rs, via scripts/check_peft.py).
#   scripts/check-peft.sh                 a random rank-8 adapter over all 7 projections
#   scripts/check-peft.sh ADAPTER_DIR     that adapter directory (copied first, so a run
#                                         still writing it cannot change it mid-check)
#   scripts/check-peft.sh --setup-only    just build .venv-peft
# Builds .venv-peft once (a stamp holds the pins; a second run installs nothing).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Verified together on Python 3.11, x86_64 Linux. PyPI's only Linux x86_64 torch wheels are
# CUDA builds whose libtorch links the CUDA runtime libraries, so `--no-deps` torch cannot
# even be imported: its pinned nvidia-* wheels come along (unused on a CPU-only machine).
PEFT_REQS="torch==2.15.0 transformers==5.23.0 peft==0.21.2 accelerate==1.15.0 safetensors==0.8.0 gguf==0.19.0 numpy==2.4.6"
VENV="$ROOT/.venv-peft"
PEFT_PY="$VENV/bin/python"

if [ ! -x "$PEFT_PY" ] || [ "$(cat "$VENV/.reqs" 2>/dev/null)" != "$PEFT_REQS" ]; then
  log "python venv .venv-peft: $PEFT_REQS (a few GB, once)"
  python3 -m venv "$VENV"
  "$PEFT_PY" -m pip install -q --disable-pip-version-check --no-cache-dir $PEFT_REQS
  "$PEFT_PY" -c "import torch, transformers, peft, gguf; torch.ones(1) @ torch.ones(1)"
  echo "$PEFT_REQS" > "$VENV/.reqs"
fi

case "${1:-}" in
  --setup-only) exit 0 ;;
  "") unset EDGE_LLM_PEFT_ADAPTER ;;
  *)
    [ -f "$1/adapter_model.safetensors" ] && [ -f "$1/adapter_config.json" ] \
      || die "$1 is not a PEFT adapter directory"
    SNAP="$(mktemp -d)"; trap 'rm -rf "$SNAP"' EXIT
    cp "$1/adapter_model.safetensors" "$1/adapter_config.json" "$SNAP/"
    export EDGE_LLM_PEFT_ADAPTER="$SNAP"
    ;;
esac
EDGE_LLM_REQUIRE_PEFT=1 cargo test -q --test peft_library -- --nocapture
