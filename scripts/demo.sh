#!/usr/bin/env bash
# The main job, end to end, on the bundled default model: what the model is,
# its memory plan, how a prompt tokenizes, a streamed generation (16-bit and
# int4), and a scored text with its MoE routing.
set -euo pipefail
EPWA=$1
MODEL=$2
PROMPT=${3:-Once upon a time}

if [ -t 1 ]; then
  step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  step() { printf '\n== %s\n' "$*"; }
fi

step "epwa info -m $MODEL"
"$EPWA" info -m "$MODEL"

step "epwa plan -m $MODEL --ctx 512"
"$EPWA" plan -m "$MODEL" --ctx 512

step "epwa tokenize -m $MODEL --text \"$PROMPT\" --json"
"$EPWA" tokenize -m "$MODEL" --text "$PROMPT" --json | tr -d '\n ' ; echo

step "epwa run -m $MODEL -p \"$PROMPT\" -n 48 --seed 7"
"$EPWA" run -m "$MODEL" -p "$PROMPT" -n 48 --seed 7

step "EPW_LOAD_IN_4BIT=true epwa run -m $MODEL -p \"$PROMPT\" -n 48 --seed 7   (int4 weights)"
EPW_LOAD_IN_4BIT=true "$EPWA" run -m "$MODEL" -p "$PROMPT" -n 48 --seed 7

step "epwa score -m $MODEL -p \"$PROMPT\"   (log-probabilities and the experts of the last MoE layer)"
"$EPWA" score -m "$MODEL" -p "$PROMPT"

