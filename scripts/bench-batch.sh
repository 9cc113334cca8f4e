#!/usr/bin/env bash
# Continuous batching on a real MoE shape: `epwa bench --parallel` runs 1, 2,
# 4 and 8 sequences together on a seeded synthetic OLMoE-1B-7B cut to a few
# layers and reports, per count, the aggregate decode tokens/s, its ratio to
# one sequence, p50/p99 time to first token and per-token latency, the
# distinct experts a decode step streams per layer, and (DIVERGENCE=1) how
# often tokens and chosen experts differ from each prompt generated alone.
# Writes the model once under DIR (about 3.8 GB of bf16 for 4 layers).
#   scripts/bench-batch.sh [path/to/epwa] [DIR]
# Environment: PRESET (olmoe-1b-7b), LAYERS (4), LEVELS ("fp16 int4"),
# COUNTS (1,2,4,8), PROMPT_TOKENS (64), GEN_TOKENS (32), REPEATS (3),
# THREADS (all cores), DIVERGENCE (1).
set -euo pipefail
EPWA=${1:-build/epwa}
DIR=${2:-build/bench-batch}
PRESET=${PRESET:-olmoe-1b-7b}
LAYERS=${LAYERS:-4}
LEVELS=${LEVELS:-fp16 int4}
COUNTS=${COUNTS:-1,2,4,8}
PROMPT_TOKENS=${PROMPT_TOKENS:-64}
GEN_TOKENS=${GEN_TOKENS:-32}
REPEATS=${REPEATS:-3}
THREADS=${THREADS:-0}
DIVERGENCE=${DIVERGENCE:-1}
model=$DIR/$PRESET-$LAYERS
mkdir -p "$DIR"
if [ ! -f "$model/config.json" ]; then
  "$EPWA" synth --preset "$PRESET" --layers "$LAYERS" --out "$model" >&2
fi
args=(--parallel "$COUNTS" --prompt-tokens "$PROMPT_TOKENS" --gen-tokens "$GEN_TOKENS"
      --repeats "$REPEATS" -t "$THREADS" --no-cache)
[ "$DIVERGENCE" = 1 ] && args+=(--divergence)
for level in $LEVELS; do
  echo "== $PRESET cut to $LAYERS layers, --quant $level"
  "$EPWA" bench -m "$model" --quant "$level" "${args[@]}" 2>/dev/null
  echo
done
