#!/usr/bin/env bash
# Installs every Debian package epwa needs to build, test and benchmark.
# Idempotent: when everything is present it does nothing and needs no root.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev libpcre2-dev libutf8proc-dev libssl-dev libxxhash-dev libsimdjson-dev
  python3 python3-numpy python3-sentencepiece python3-jinja2
  libcpp-httplib-dev curl
  wordnet-base  # WordNet 3.0 in /usr/share/wordnet, for the synonym-substitution attack
  # The Python module (python/, built with pybind11) and its tests; dask and distributed run
  # corpus detection on a cluster (python3 -m epwa.detect_corpus).
  python3-dev pybind11-dev python3-pytest python3-dask python3-distributed
)
# Node.js runs the real-client tests of `epwa serve` (the openai npm package).
# It may come from Debian or from elsewhere (NodeSource bundles npm, and then
# Debian's npm package conflicts with it), so the commands are checked, not
# the package names.
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
# `make fuzz` (scripts/install-deps.sh --fuzz) also needs clang with its
# libFuzzer and sanitizer runtimes.
if [ "${1:-}" = "--fuzz" ]; then
  packages+=(clang libclang-rt-14-dev)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "epwa: installing Debian packages: ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The openai npm client for the serve tests, pinned by tests/serve/package-lock.json.
root=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -f "$root/tests/serve/node_modules/openai/package.json" ]; then
  echo "epwa: installing the test client (npm ci in tests/serve)" >&2
  npm ci --prefix "$root/tests/serve" --no-audit --no-fund --loglevel=error >/dev/null
fi

# js-tiktoken, the reference for the o200k (gpt-oss) tokenizer test and the
# source of its ranks (tools/tiktoken_to_hf.mjs), pinned by tools/tiktoken/package-lock.json.
if [ ! -f "$root/tools/tiktoken/node_modules/js-tiktoken/package.json" ]; then
  echo "epwa: installing js-tiktoken (npm ci in tools/tiktoken)" >&2
  npm ci --prefix "$root/tools/tiktoken" --no-audit --no-fund --loglevel=error >/dev/null
fi
