#!/usr/bin/env bash
# Speed on the real shapes of the new families: `epwa bench` at every level on
# qwen3-30b-a3b cut to 4 layers and the full real-layout olmoe-1b-7b, each
# figure beside the read bandwidth and FMA peak measured in the same run.
# Writes the models once (about 6 GB and 14 GB of bf16) under DIR.
#   scripts/bench-families.sh [path/to/epwa] [DIR]
set -euo pipefail
EPWA=${1:-build/epwa}
DIR=${2:-build/bench-families}
LEVELS=${LEVELS:-none fp16 int8 int4 mixed}
MODELS=${MODELS:-qwen3-30b-a3b:4 olmoe-1b-7b:0}
mkdir -p "$DIR"
printf '%-20s %-6s %12s %10s %12s %10s %10s %8s\n' model level prefill_tok/s prefill_%peak decode_tok/s decode_GB/s %bandwidth weights
for item in $MODELS; do
  preset=${item%%:*}
  layers=${item##*:}
  name=$preset$([ "$layers" != 0 ] && echo "-$layers" || true)
  model=$DIR/$name
  if [ ! -f "$model/config.json" ]; then
    args=(synth --preset "$preset" --out "$model")
    [ "$layers" != 0 ] && args+=(--layers "$layers")
    "$EPWA" "${args[@]}" >&2
  fi
  for level in $LEVELS; do
    if ! out=$("$EPWA" bench -m "$model" --quant "$level" --ctx 512 --no-cache --json 2>/tmp/bench-families.err); then
      printf '%-20s %-6s %s\n' "$name" "$level" "does not fit: $(tail -1 /tmp/bench-families.err)"
      continue
    fi
    /usr/bin/python3 - "$name" "$level" "$out" <<'PY'
import json, sys
name, level, j = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
print(f"{name:20s} {level:6s} {j['prefill_tokens_per_s']:12.1f} {100*j['prefill_fraction_of_peak']:9.1f}% ({j['prefill_instruction']}) "
      f"{j['decode_tokens_per_s']:12.2f} {j['decode_gbs']:10.1f} {100*j['decode_fraction_of_bandwidth']:9.1f}% "
      f"{j['weight_bytes']/2**30:6.2f}G  (bw {j['measured_read_bandwidth_gbs']:.1f} GB/s, fma {j['measured_fma_peak_gflops']:.0f} GFLOP/s)")
PY
  done
done
