#!/usr/bin/env bash
# What --bf16-activations and --split-activations cost in accuracy: 8
# windows of held-out text (data/heldout/jargon.txt, about 370 tokens each)
# scored by each bundled model with the float32 prefill (the default), with
# bf16 activations and with activations split into three bf16 parts (AMX
# only; elsewhere the float32 prefill runs and the figures are exact).
# Prints, against float32, the mean KL(float || other) per position, the
# top-1 agreement, the largest logit difference and the share of
# (position, MoE layer) routings whose expert set is unchanged.
# MODELS="dir ..." scores other model folders instead of the bundled ones.
# Needs numpy (Debian python3-numpy).
set -euo pipefail
EPWA=${EPWA:-build/epwa}
MODELS=${MODELS:-models/tiny-moe models/tiny-qwen3-moe}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for m in $MODELS; do
  name=$(basename "$m")
  for i in 0 1 2 3 4 5 6 7; do
    text=$(python3 -c "import sys; t = open('data/heldout/jargon.txt').read(); s = $i * 1500; print(t[s:s + 1200])")
    "$EPWA" score -m "$m" -p "$text" --json --logits-out "$OUT/$name-$i-f32.npy" > "$OUT/$name-$i-f32.json" 2>/dev/null
    "$EPWA" score -m "$m" -p "$text" --json --bf16-activations --logits-out "$OUT/$name-$i-bf16.npy" \
      > "$OUT/$name-$i-bf16.json" 2>/dev/null
    "$EPWA" score -m "$m" -p "$text" --json --split-activations --logits-out "$OUT/$name-$i-split.npy" \
      > "$OUT/$name-$i-split.json" 2>/dev/null
  done
done
OUT=$OUT MODELS=$MODELS "${PYTHON:-/usr/bin/python3}" - <<'PY'
import json
import os
import numpy as np
out = os.environ["OUT"]
for m in os.environ["MODELS"].split():
    m = os.path.basename(m)
    for variant, flag in [("bf16", "--bf16-activations"), ("split", "--split-activations")]:
        kl, agree, maxd, same, routings = [], [], 0.0, 0, 0
        for i in range(8):
            a = np.load(f"{out}/{m}-{i}-f32.npy").astype(np.float64)
            b = np.load(f"{out}/{m}-{i}-{variant}.npy").astype(np.float64)
            la = a - a.max(1, keepdims=True)
            la -= np.log(np.exp(la).sum(1, keepdims=True))
            lb = b - b.max(1, keepdims=True)
            lb -= np.log(np.exp(lb).sum(1, keepdims=True))
            kl += list((np.exp(la) * (la - lb)).sum(1))
            agree += list(a.argmax(1) == b.argmax(1))
            maxd = max(maxd, float(np.abs(a - b).max()))
            ja = json.load(open(f"{out}/{m}-{i}-f32.json"))
            jb = json.load(open(f"{out}/{m}-{i}-{variant}.json"))
            for pa, pb in zip(ja["positions"], jb["positions"]):
                for ra, rb in zip(pa["routing"], pb["routing"]):
                    routings += 1
                    same += set(ra["experts"]) == set(rb["experts"])
        print(f"{m} {flag}: {len(kl)} positions, mean KL {np.mean(kl):.2e}, top-1 agreement "
              f"{100 * np.mean(agree):.2f}%, largest logit difference {maxd:.2e}, "
              f"routing unchanged {same}/{routings} ({100 * same / max(routings, 1):.2f}%)")
PY
