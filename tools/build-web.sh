#!/usr/bin/env bash
# Builds the browser engine into www/pkg: the crate for wasm32 (WebGPU
# backend), then wasm-bindgen's ES module glue (--target web: no bundler
# needed), then wasm-opt from npm's binaryen when it is installed (never
# Debian's wasm-opt 108, which corrupts wasm-bindgen output).
# Source tools/setup.sh first (tools/test.sh and tools/serve.sh do).
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${LLAMA_ADAPTER_WASM_PROFILE:-release}"
cargo build --quiet --profile "$profile" --lib --target wasm32-unknown-unknown
wasm="target/wasm32-unknown-unknown/$profile/llama_adapter_web.wasm"
rm -rf www/pkg
wasm-bindgen --target web --out-dir www/pkg "$wasm"
if [ -x node_modules/.bin/wasm-opt ]; then
  node_modules/.bin/wasm-opt -O2 --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
    www/pkg/llama_adapter_web_bg.wasm -o www/pkg/llama_adapter_web_bg.wasm
fi
ls -l www/pkg/llama_adapter_web_bg.wasm
