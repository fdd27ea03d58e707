#!/usr/bin/env bash
# The main job, as far as the engine goes today: set up, open the GPU, and run
# the kernel benchmark at LLaMA-7B shapes. (The model commands, `generate` on
# an example picture, arrive with the model; see README.)
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/setup.sh
cargo run --release --quiet --bin llama-adapter -- bench kernels "$@"
