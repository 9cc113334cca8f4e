#!/usr/bin/env bash
# Regenerates tests/data/golden/NAME.json for a trained bundled model
# (models/NAME; default tiny-moe): the exact tokens the engine produces for a
# prompt and a seed. Rerun only when a change is meant to change generation,
# and say why in the commit.
#   tools/make_golden.sh [path/to/epwa] [NAME]
set -euo pipefail
cd "$(dirname "$0")/.."
EPWA=${1:-build/epwa}
NAME=${2:-tiny-moe}
mkdir -p tests/data/golden
"$EPWA" run -m "models/$NAME" -p "The system administrator" -n 32 --seed 7 --json 2>/dev/null |
  /usr/bin/python3 -c '
import json, sys
r = json.load(sys.stdin)
print(json.dumps({"prompt": r["prompt"], "n": 32, "seed": 7, "prompt_ids": r["prompt_ids"],
                  "ids": r["ids"], "text": r["text"]}, indent=1, ensure_ascii=False))' \
  > "tests/data/golden/$NAME.json"
cat "tests/data/golden/$NAME.json"
