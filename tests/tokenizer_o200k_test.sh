#!/usr/bin/env bash
# gpt-oss's tokenizer (o200k_base plus the harmony special tokens), run by
# epwa, against tiktoken's own encoder (js-tiktoken, pinned by
# tools/tiktoken/package-lock.json):
#
#   tests/tokenizer_o200k_test.sh EPWA_BINARY
#
# Builds tokenizer.json from js-tiktoken's ranks with tools/tiktoken_to_hf.mjs
# (gpt-oss's own file is not available offline), then runs
# tools/tiktoken/check_o200k.mjs on the committed texts, the held-out corpus
# split into paragraphs, and seeded fuzz texts. The special tokens come from
# gpt-oss-20b's tokenizer_config.json in the shared data folder
# ($EPWA_SHARED_DIR, else ../shared beside the repository, as for the other
# tokenizer conformance tests). Prints "SKIP: ..." and succeeds when Node.js,
# the npm package or that folder is missing, since none is needed to build
# epwa; fails on any mismatch.
set -euo pipefail

epwa=${1:?usage: tests/tokenizer_o200k_test.sh EPWA_BINARY}
root=$(cd "$(dirname "$0")/.." && pwd)

if ! command -v node >/dev/null 2>&1; then
  echo "SKIP: node is not installed (scripts/install-deps.sh installs it)"
  exit 0
fi
if [ ! -f "$root/tools/tiktoken/node_modules/js-tiktoken/package.json" ]; then
  echo "SKIP: js-tiktoken is not installed; run: npm ci --prefix tools/tiktoken"
  exit 0
fi
shared=""
if [ -n "${EPWA_SHARED_DIR:-}" ] && [ -d "$EPWA_SHARED_DIR/data" ]; then
  shared=$EPWA_SHARED_DIR
elif [ -d "$root/../shared/data" ]; then
  shared=$root/../shared
fi
specials=${shared:+$shared/data/models/gpt-oss-20b}
if [ -z "$specials" ] || [ ! -f "$specials/tokenizer_config.json" ]; then
  echo "SKIP: gpt-oss-20b's tokenizer_config.json is absent (looked in \$EPWA_SHARED_DIR and ../shared)"
  exit 0
fi
# An absolute path, so that the binary is found whatever the working folder.
case "$epwa" in /*) ;; *) epwa="$PWD/$epwa" ;; esac
[ -x "$epwa" ] || { echo "error: $epwa is not an executable" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/epwa-o200k.XXXXXX")
trap 'rm -rf "$work"' EXIT

node "$root/tools/tiktoken_to_hf.mjs" \
  --specials-from "$specials" --out "$work/tokenizer.json"
# The fixed seed keeps the fuzz texts the same on every run, so that a
# failure reproduces with the same command.
node "$root/tools/tiktoken/check_o200k.mjs" --epwa "$epwa" --tokenizer "$work/tokenizer.json" \
  --texts "$root/tests/data/tokenizers/o200k_texts.json" \
  --paragraphs-from "$root/data/heldout/jargon.txt" --fuzz 2000 --seed 1
