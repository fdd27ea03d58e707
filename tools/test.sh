#!/usr/bin/env bash
# The test command: set up, then every test on the available GPU adapter
# (lavapipe where there is no GPU), then the wasm32 library build.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh

echo "== GPU adapter"
cargo run --release --quiet --bin llama-adapter -- info

echo "== cargo test (native, on that adapter)"
cargo test --release -- --show-output

echo "== wasm32 library build (WebGPU backend)"
cargo build --release --lib --target wasm32-unknown-unknown
ls -l target/wasm32-unknown-unknown/release/llama_adapter_web.wasm
echo "== all tests passed"
