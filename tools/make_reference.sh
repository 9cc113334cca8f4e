#!/usr/bin/env bash
# Regenerates tests/data/reference/: for each fixture, writes the seeded model
# with `epwa synth` and runs the independent NumPy reference on fixed ids;
# then the same on the trained default model (models/tiny-moe), on real text.
# Usage: tools/make_reference.sh [path/to/epwa]   (after building)
set -euo pipefail
cd "$(dirname "$0")/.."
EPWA=${1:-build/epwa}
PY=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# preset dtype ids (16 tokens, fixed; vocabulary of the fixtures is 512)
while read -r preset dtype ids; do
  out=tests/data/reference/$preset
  mkdir -p "$out"
  "$EPWA" synth --preset "$preset" --dtype "$dtype" --out "$tmp/$preset" >/dev/null 2>&1
  echo "[$ids]" > "$out/ids.json"
  "$PY" tools/reference_forward.py "$tmp/$preset" --ids "$ids" \
    --logits-out "$out/logits.npy" --routing-out "$out/routing.json"
done <<'LIST'
fixture-mixtral bf16 1,17,300,42,42,511,7,256,99,100,3,480,12,13,77,200
fixture-mistral-swa bf16 1,5,6,7,8,9,10,11,12,400,401,402,3,4,5,6
fixture-llama f32 1,250,251,2,3,4,100,101,102,103,500,9,8,7,6,5
fixture-qwen2 f16 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16
fixture-deepseek-v3-fp8 bf16 5,6,7,8,9,10,11,12,400,401,402,3,4,5,6,7
fixture-qwen3-swa f32 1,17,300,42,42,511,7,256,99,100,3,480,12,13,77,200
LIST

# The families added with the architecture table, each in float32 and
# bfloat16 (directory <preset>-<dtype>). Fixtures whose rotary frequencies
# depend on the sequence length (dynamic NTK) also get the reference of a
# prefill of the first 8 tokens followed by token-by-token decoding
# (incremental_*), which is what a KV-cache run computes.
while read -r preset ids; do
  for dtype in f32 bf16; do
    out=tests/data/reference/$preset-$dtype
    mkdir -p "$out"
    "$EPWA" synth --preset "$preset" --dtype "$dtype" --out "$tmp/$preset-$dtype" >/dev/null 2>&1
    echo "[$ids]" > "$out/ids.json"
    "$PY" tools/reference_forward.py "$tmp/$preset-$dtype" --ids "$ids" \
      --logits-out "$out/logits.npy" --routing-out "$out/routing.json"
    if grep -q '"dynamic"\|"longrope"' "$tmp/$preset-$dtype/config.json"; then
      "$PY" tools/reference_forward.py "$tmp/$preset-$dtype" --ids "$ids" --prefill 8 \
        --logits-out "$out/incremental_logits.npy" --routing-out "$out/incremental_routing.json"
    fi
  done
done <<'LIST'
fixture-qwen3 1,17,300,42,42,511,7,256,99,100,3,480,12,13,77,200
fixture-qwen3-moe 5,6,7,8,9,10,11,12,400,401,402,3,4,5,6,7
fixture-olmoe 1,250,251,2,3,4,100,101,102,103,500,9,8,7,6,5
fixture-qwen2-moe 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16
fixture-granite-moe 2,40,41,42,43,44,45,300,301,302,303,100,90,80,70,60
fixture-llama31 1,400,300,200,100,50,25,12,6,3,1,5,4,8,16,32
fixture-linear-rope 9,8,7,6,5,4,3,2,1,0,511,510,509,508,507,506
fixture-gpt-oss 1,17,300,42,42,511,7,256,99,100,3,480,12,13,77,200
fixture-phimoe 2,40,41,42,43,44,45,300,301,302,303,100,90,80,70,60
fixture-deepseek-v2 1,17,300,42,42,511,7,256,99,100,3,480,12,13,77,200
fixture-deepseek-v3 5,6,7,8,9,10,11,12,400,401,402,3,4,5,6,7
LIST

# The trained bundled models on a sentence of real text (BOS + the sentence's
# ids; the byte-level model has no BOS, so its ids are the sentence's).
for name in tiny-moe tiny-qwen3-moe; do
  [ -f "models/$name/model.safetensors" ] || continue
  out=tests/data/reference/$name
  mkdir -p "$out"
  ids=$("$EPWA" tokenize -m "models/$name" --special \
    --text "The package manager installs the library, and the user reads the manual before running the program.")
  echo "[$ids]" > "$out/ids.json"
  "$PY" tools/reference_forward.py "models/$name" --ids "$ids" \
    --logits-out "$out/logits.npy" --routing-out "$out/routing.json"
done

# 16-bit KV caches (epwa --kv-cache): the reference rounds the cached keys and
# values (for MLA the normalised latent and the rotated shared key) as the
# cache stores them. Directory <preset>-<dtype>-kv-<type>.
while read -r preset dtype kv ids; do
  out=tests/data/reference/$preset-$dtype-kv-$kv
  mkdir -p "$out"
  "$EPWA" synth --preset "$preset" --dtype "$dtype" --out "$tmp/$preset-$dtype-kv" >/dev/null 2>&1
  echo "[$ids]" > "$out/ids.json"
  "$PY" tools/reference_forward.py "$tmp/$preset-$dtype-kv" --ids "$ids" --kv-cache "$kv" \
    --logits-out "$out/logits.npy" --routing-out "$out/routing.json"
done <<'LIST'
fixture-olmoe f32 f16 1,250,251,2,3,4,100,101,102,103,500,9,8,7,6,5
fixture-qwen3-moe bf16 bf16 5,6,7,8,9,10,11,12,400,401,402,3,4,5,6,7
fixture-deepseek-v2 f32 f16 1,17,300,42,42,511,7,256,99,100,3,480,12,13,77,200
LIST
