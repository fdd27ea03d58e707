#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian/Ubuntu machine,
# skipping what is already there. Source it (it exports XDG_RUNTIME_DIR) or run it.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# A Vulkan driver for wgpu. Without a GPU, Mesa's lavapipe is a software one.
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 || ! ldconfig -p | grep -q libvulkan.so.1; then
  echo "setup: installing the Vulkan loader and Mesa drivers (lavapipe)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi

# The browser build target.
if ! rustup target list --installed | grep -q '^wasm32-unknown-unknown$'; then
  echo "setup: adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

# The browser tests: Debian's Chromium (WebGPU on SwiftShader, headless) and Node.js.
# (Each only where missing: Debian's nodejs/npm conflict with a Node.js that
# came from elsewhere, and apt then refuses chromium too.)
if ! [ -x /usr/bin/chromium ]; then
  echo "setup: installing chromium"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup: installing nodejs and npm"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nodejs npm >/dev/null
fi

# wasm-bindgen's CLI must match the wasm-bindgen crate in Cargo.lock exactly.
# (Without --locked: the CLI's own lock pins a crate this registry lacks.)
wb_version="$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')"
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(wasm-bindgen --version 2>/dev/null | cut -d' ' -f2)" != "$wb_version" ]; then
  echo "setup: installing wasm-bindgen-cli $wb_version (takes a few minutes)"
  cargo install --quiet wasm-bindgen-cli --version "$wb_version"
fi

# Node packages of the browser tests (playwright-core, binaryen), from the lockfile.
# (npm keeps node_modules/.package-lock.json: older than the lockfile, or absent, means reinstall.)
if [ -f package-lock.json ] && [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --silent
fi

# Mesa complains (harmlessly) without a runtime dir.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/llama-adapter-xdg}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
