#!/usr/bin/env bash
# The main job: the embedded default model (www/models/default) answering
# about pictures in the browser, on your GPU through WebGPU.
#
#   bash tools/demo.sh              build the browser engine, serve www/ on
#                                   127.0.0.1 and print the demo page's URL
#                                   (open it in Chrome/Edge 113+, Safari 26+, Firefox 141+)
#   bash tools/demo.sh --headless   the same page driven by headless Chromium
#                                   (software WebGPU): loads the model, asks
#                                   "Describe this image." about an example
#                                   picture, prints the answer and the timings
#   bash tools/demo.sh --cli [ARGS] the native tool on the same model (extra
#                                   ARGS go to `generate`, e.g. --prompt "How many shapes are there?")
#
# Environment: PORT (default 8080; 0 picks a free one).
#
# The default model is a small demonstration trained here (tools/train); held
# out, it captions 85.5 % of pictures exactly and answers 97-99 % of the colour,
# count and presence questions (README, "Default model").
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-serve}"
source tools/setup.sh

if [ "$mode" = "--cli" ]; then
  shift
  cargo build --release --quiet --bin llama-adapter
  bin=target/release/llama-adapter
  "$bin" info
  exec "$bin" generate --model www/models/default --image www/models/default/examples/shapes-1.png \
    --prompt "Describe this image." --max-new-tokens 32 --temperature 0 "$@"
fi

echo "== building the browser engine (www/pkg)"
bash tools/build-web.sh

if [ "$mode" = "--headless" ]; then
  shift
  node tools/serve.mjs --port 0 --quiet > /tmp/llama-adapter-demo-url.$$ &
  server=$!
  trap 'kill $server 2>/dev/null || true; rm -f /tmp/llama-adapter-demo-url.$$' EXIT
  for _ in $(seq 50); do [ -s /tmp/llama-adapter-demo-url.$$ ] && break; sleep 0.1; done
  url="$(head -n1 /tmp/llama-adapter-demo-url.$$)"
  echo "== headless Chromium on $url"
  node tools/demo-headless.mjs "$url" --screenshot "${SCREENSHOT:-/tmp/llama-adapter-demo.png}" "$@"
  exit
fi

echo "== serving www/ on 127.0.0.1: open the URL below in a browser with WebGPU (Ctrl-C stops)"
node tools/serve.mjs --port "${PORT:-8080}" || { echo "port ${PORT:-8080} is taken: using a free one"; node tools/serve.mjs --port 0; }
