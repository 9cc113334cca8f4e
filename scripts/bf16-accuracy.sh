#!/usr/bin/env bash
# What --bf16-activations costs in accuracy: 8 windows of held-out text
# (data/heldout/jargon.txt, about 370 tokens each) scored by each bundled
# model with float32 activations and with bf16 activations in the prefill;
# prints the mean KL(float || bf16) per position, the top-1 agreement and the
# largest logit difference. Needs numpy (Debian python3-numpy).
set -euo pipefail
EPWA=${EPWA:-build/epwa}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for m in tiny-moe tiny-qwen3-moe; do
  for i in 0 1 2 3 4 5 6 7; do
    text=$(python3 -c "import sys; t = open('data/heldout/jargon.txt').read(); s = $i * 1500; print(t[s:s + 1200])")
    "$EPWA" score -m "models/$m" -p "$text" --logits-out "$OUT/$m-$i-f32.npy" > /dev/null 2>&1
    "$EPWA" score -m "models/$m" -p "$text" --bf16-activations --logits-out "$OUT/$m-$i-bf16.npy" > /dev/null 2>&1
  done
done
OUT=$OUT "${PYTHON:-/usr/bin/python3}" - <<'PY'
import os
import numpy as np
out = os.environ["OUT"]
for m in ["tiny-moe", "tiny-qwen3-moe"]:
    kl, agree, maxd = [], [], 0.0
    for i in range(8):
        a = np.load(f"{out}/{m}-{i}-f32.npy").astype(np.float64)
        b = np.load(f"{out}/{m}-{i}-bf16.npy").astype(np.float64)
        la = a - a.max(1, keepdims=True)
        la -= np.log(np.exp(la).sum(1, keepdims=True))
        lb = b - b.max(1, keepdims=True)
        lb -= np.log(np.exp(lb).sum(1, keepdims=True))
        kl += list((np.exp(la) * (la - lb)).sum(1))
        agree += list(a.argmax(1) == b.argmax(1))
        maxd = max(maxd, float(np.abs(a - b).max()))
    print(f"{m}: {len(kl)} positions, mean KL {np.mean(kl):.2e}, top-1 agreement {100 * np.mean(agree):.2f}%, "
          f"largest logit difference {maxd:.3f}")
PY
