#!/usr/bin/env bash
# Reference vectors for the byte-level tokenizer of the second bundled model
# (models/tiny-qwen3-moe): every 8th held-out paragraph of data/heldout/jargon.txt
# (text the tokenizer was not trained on) encoded and decoded by the reference
# Hugging Face `tokenizers` library (npm @anush008/tokenizers).
#   tests/data/tokenizers/make_bundled_vectors.sh [TOKENIZER_JSON]
# Needs once: mkdir -p /tmp/tokjs && cd /tmp/tokjs && npm install @anush008/tokenizers
set -euo pipefail
cd "$(dirname "$0")/../../.."
TOK=${1:-models/tiny-qwen3-moe/tokenizer.json}
OUT=tests/data/tokenizers/tiny-qwen3-moe/heldout_vectors.jsonl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 - "$tmp/in.jsonl" <<'PY'
import json, sys
paragraphs = [p.strip() for p in open("data/heldout/jargon.txt", encoding="utf-8").read().split("\n\n")]
paragraphs = [p for p in paragraphs if p][::8]
with open(sys.argv[1], "w", encoding="utf-8") as f:
    for p in paragraphs:
        f.write(json.dumps(p, ensure_ascii=False) + "\n")
PY
NODE_PATH=/tmp/tokjs/node_modules node tools/train/hf_tokenize.js "$TOK" "$tmp/in.jsonl" "$tmp/out.jsonl"
/usr/bin/python3 - "$tmp/in.jsonl" "$tmp/out.jsonl" "$OUT" <<'PY'
import json, sys
texts = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
outs = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
assert len(texts) == len(outs)
with open(sys.argv[3], "w", encoding="utf-8") as f:
    for t, o in zip(texts, outs):
        f.write(json.dumps({"text": t, "ids": o["ids"], "decoded": o["decoded"]}, ensure_ascii=False) + "\n")
print(f"{len(texts)} vectors -> {sys.argv[3]}")
PY
