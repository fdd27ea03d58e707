#!/usr/bin/env bash
# The test command: set up, then every test on the available GPU adapter
# (lavapipe where there is no GPU), then the browser engine: the wasm32 build
# and the module's tests in headless Chromium (WebGPU on SwiftShader).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh

echo "== GPU adapter"
cargo run --release --quiet --bin llama-adapter -- info

echo "== cargo test (native, on that adapter)"
cargo test --release -- --show-output

echo "== wasm32 build + wasm-bindgen (www/pkg)"
bash tools/build-web.sh

echo "== browser tests (headless Chromium, WebGPU)"
npm run --silent test:browser
echo "== all tests passed"
