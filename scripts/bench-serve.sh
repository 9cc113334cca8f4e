#!/usr/bin/env bash
# Throughput through `epwa serve`, measured at its clients (tools/bench_serve.py):
# 1, 2, 4 and 8 concurrent streams on the same seeded synthetic OLMoE-1B-7B
# cut to a few layers as scripts/bench-batch.sh (the engine alone), so the two
# tables compare the engine with the engine behind HTTP.
#   scripts/bench-serve.sh [path/to/epwa] [DIR]
# Environment: PRESET (olmoe-1b-7b), LAYERS (4), LEVELS ("fp16 int4"),
# COUNTS (1,2,4,8), PROMPT_TOKENS (64), GEN_TOKENS (32), REQUESTS (3),
# THREADS (all cores).
set -euo pipefail
EPWA=${1:-build/epwa}
DIR=${2:-build/bench-batch}
PRESET=${PRESET:-olmoe-1b-7b}
LAYERS=${LAYERS:-4}
LEVELS=${LEVELS:-fp16 int4}
model=$DIR/$PRESET-$LAYERS
mkdir -p "$DIR"
if [ ! -f "$model/config.json" ]; then
  "$EPWA" synth --preset "$PRESET" --layers "$LAYERS" --out "$model" >&2
fi
for level in $LEVELS; do
  echo "== $PRESET cut to $LAYERS layers, --quant $level, through epwa serve"
  /usr/bin/python3 tools/bench_serve.py "$EPWA" "$model" --quant "$level" --counts "${COUNTS:-1,2,4,8}" \
      --prompt-tokens "${PROMPT_TOKENS:-64}" --gen-tokens "${GEN_TOKENS:-32}" --requests "${REQUESTS:-3}" \
      --threads "${THREADS:-0}"
  echo
done
