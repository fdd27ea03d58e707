#!/usr/bin/env bash
# The main job: set up, then answer an instruction about an example picture
# with the embedded default model (www/models/default), on the GPU.
#
# The default model is a small demonstration trained here (tools/train); held
# out, it captions 85.5 % of pictures exactly and answers 97-99 % of the colour,
# count and presence questions (README, "Default model"). Extra arguments go to
# `generate`, e.g.: bash tools/demo.sh --prompt "How many shapes are there?"
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh
cargo build --release --quiet --bin llama-adapter
bin=target/release/llama-adapter
"$bin" info
"$bin" generate --model www/models/default --image www/models/default/examples/shapes-1.png \
  --prompt "Describe this image." --max-new-tokens 32 --temperature 0 "$@"
