#!/usr/bin/env bash
# Regenerates tests/data/golden/tiny-moe.json: the exact tokens the engine
# produces for the trained default model (models/tiny-moe), a prompt and a seed. Rerun only when a change
# is meant to change generation, and say why in the commit.
set -euo pipefail
cd "$(dirname "$0")/.."
EPWA=${1:-build/epwa}
mkdir -p tests/data/golden
"$EPWA" run -m models/tiny-moe -p "The system administrator" -n 32 --seed 7 --json 2>/dev/null |
  /usr/bin/python3 -c '
import json, sys
r = json.load(sys.stdin)
print(json.dumps({"prompt": r["prompt"], "n": 32, "seed": 7, "prompt_ids": r["prompt_ids"],
                  "ids": r["ids"], "text": r["text"]}, indent=1, ensure_ascii=False))' \
  > tests/data/golden/tiny-moe.json
cat tests/data/golden/tiny-moe.json
