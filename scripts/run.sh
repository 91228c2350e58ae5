#!/usr/bin/env bash
# The page, served locally: sets up the machine (once), builds the WebAssembly, links the
# default model and the built-in data (ARC-Easy, Shakespeare) beside the page and serves
# www/ on http://127.0.0.1:PORT/.
#   scripts/run.sh              port 8080, or the next free one
#   scripts/run.sh --port N     exactly port N
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

PORT=8080
EXACT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --port) [ $# -ge 2 ] || die "--port needs a number"; PORT="$2"; EXACT=1; shift 2 ;;
    --port=*) PORT="${1#--port=}"; EXACT=1; shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) die "unknown option $1 (try --port N)" ;;
  esac
done
[[ "$PORT" =~ ^[0-9]+$ ]] || die "--port needs a number, not '$PORT'"

bash "$ROOT/scripts/setup.sh"
bash "$ROOT/scripts/build-wasm.sh"
link_default_model
link_web_data

if ! port_free "$PORT"; then
  [ "$EXACT" -eq 1 ] && die "port $PORT is in use: choose another with --port N"
  for p in $(seq $((PORT + 1)) $((PORT + 50))); do
    if port_free "$p"; then PORT="$p"; break; fi
  done
  port_free "$PORT" || die "no free port near 8080: choose one with --port N"
fi

URL="http://127.0.0.1:$PORT/"
printf '\n  \033[1medge-llm is ready: open %s\033[0m\n' "$URL"
printf '  (a browser with WebGPU: Chrome/Edge 113+; on Linux start Chrome with --enable-unsafe-webgpu)\n'
printf '  Ctrl-C stops the server.\n\n'
exec python3 "$ROOT/scripts/serve.py" --bind 127.0.0.1 --directory "$ROOT/www" "$PORT"
