#!/usr/bin/env bash
# The main job: set up, then answer an instruction about an example picture
# with the embedded default model (www/models/default), on the GPU.
#
# The default model is a small demonstration trained here (tools/train); it
# counts the shapes and reads most colours but not yet shape types (README,
# "Default model"), so expect fluent, often wrong captions. Extra arguments go to
# `generate`, e.g.: bash tools/demo.sh --prompt "How many shapes are there?"
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh
cargo build --release --quiet --bin llama-adapter
bin=target/release/llama-adapter
"$bin" info
"$bin" generate --model www/models/default --image www/models/default/examples/shapes-1.png \
  --prompt "Describe this image." --max-new-tokens 32 --temperature 0 "$@"
