#!/usr/bin/env bash
# The main job: set up, convert a model from the official checkpoint layouts,
# then answer an instruction about an example picture on the GPU.
#
# Today the model is the tiny seeded test model of tests/fixtures/tiny (random
# weights, so the answer is noise); the trained demonstration model is the
# next piece of work (see README). Extra arguments go to `generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh
cargo build --release --quiet --bin llama-adapter
bin=target/release/llama-adapter
model=target/demo/tiny-q4
if [ ! -f "$model/adapter/manifest.json" ]; then
  "$bin" convert --llama-dir tests/fixtures/tiny/llama --clip tests/fixtures/tiny/clip.pth \
    --adapter tests/fixtures/tiny/adapter_bias.pth --v-num-heads 2 --quant q4 --channel-order rgb --quiet --out "$model"
fi
"$bin" info
"$bin" generate --model "$model" --image tests/fixtures/images/franz-kafka.jpg \
  --prompt "Describe this image." --max-new-tokens 24 --temperature 0 "$@"
