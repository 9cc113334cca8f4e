#!/usr/bin/env bash
# Regenerates tests/data/golden/tiny-random-moe.json: the exact tokens the
# engine produces for a fixed model, prompt and seed. Rerun only when a change
# is meant to change generation, and say why in the commit.
set -euo pipefail
cd "$(dirname "$0")/.."
EPWA=${1:-build/epwa}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$EPWA" synth --preset tiny-random-moe --out "$tmp/m" 2>/dev/null
mkdir -p tests/data/golden
"$EPWA" run -m "$tmp/m" -p "Once upon a time" -n 32 --seed 7 --json 2>/dev/null |
  /usr/bin/python3 -c '
import json, sys
r = json.load(sys.stdin)
print(json.dumps({"prompt": r["prompt"], "n": 32, "seed": 7, "prompt_ids": r["prompt_ids"],
                  "ids": r["ids"], "text": r["text"]}, indent=1, ensure_ascii=False))' \
  > tests/data/golden/tiny-random-moe.json
cat tests/data/golden/tiny-random-moe.json
