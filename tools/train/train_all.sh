#!/bin/bash
# Reproducible pipeline for epwa's default model (tiny Mixtral-layout MoE).
#   tools/train/train_all.sh            full run (~95 min of training) -> models/tiny-moe
#   tools/train/train_all.sh --quick    few-minute smoke run -> $WORK/quick-model
# Environment: WORK (default /tmp/epwa-train), MINUTES (full-run training budget, default 95),
#   STEPS (fixed step count instead of a time budget, for exact reproduction), BALANCE_STEPS
#   (steps of the balance phase, default 80), EPWA (build/epwa).
# Needs: apt-get install sentencepiece python3-sentencepiece python3-torch libopenblas0-pthread
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
WORK=${WORK:-/tmp/epwa-train}
EPWA=${EPWA:-build/epwa}
PY=/usr/bin/python3
SEED=1234
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
for p in sentencepiece python3-sentencepiece python3-torch libopenblas0-pthread; do
  dpkg -s "$p" >/dev/null 2>&1 || { echo "missing Debian package $p (apt-get install $p)"; exit 1; }
done
[ -x "$EPWA" ] || cmake --build build

echo "== 1. text ($(date -u +%H:%M:%S))"
tools/train/fetch_text.sh "$WORK"

echo "== 2. tokenizer ($(date -u +%H:%M:%S))"
$PY tools/train/train_tokenizer.py --input "$WORK/train.txt" --out "$WORK/tok" --vocab 4096 \
    --verify data/heldout/jargon.txt --train-docs "$WORK/train_docs.json" --epwa "$EPWA" \
    --stats-out "$WORK/tok/verify.json"

echo "== 3. model ($(date -u +%H:%M:%S))"
if [ $QUICK = 1 ]; then
  OUT="$WORK/quick-model"
  $PY tools/train/train_moe.py --work "$WORK" --tok "$WORK/tok" --out "$OUT" --seed $SEED --quick
else
  OUT="$ROOT/models/tiny-moe"
  EXTRA=()
  [ -n "${STEPS:-}" ] && EXTRA=(--steps "$STEPS")
  $PY tools/train/train_moe.py --work "$WORK" --tok "$WORK/tok" --out "$OUT" --seed $SEED \
      --minutes "${MINUTES:-95}" "${EXTRA[@]}"
  # Balance phase: a short continuation with a strong load-balancing loss, so
  # that every expert of every layer takes at least 3% of the top-1 choices
  # on held-out text (the main run's coefficient leaves the last layer's
  # rarest expert just under it).
  $PY tools/train/train_moe.py --work "$WORK" --tok "$WORK/tok" --out "$OUT" --seed $SEED \
      --init "$OUT" --steps "${BALANCE_STEPS:-80}" --lr 3e-4 --warmup 10 --aux-coef 0.5
fi
cp "$WORK/tok/verify.json" "$OUT/tokenizer_verify.json"
cp "$WORK/versions.txt" "$OUT/source_packages.txt"

echo "== 4. check the export with epwa and the NumPy reference ($(date -u +%H:%M:%S))"
IDS=$($PY -c "import json;print(','.join(map(str,json.load(open('$WORK/torch_check.json'))['ids'])))")
"$EPWA" info -m "$OUT"
"$EPWA" score -m "$OUT" --ids "$IDS" --json --logits-out "$WORK/epwa_logits.npy" > "$WORK/epwa_score.json"
$PY tools/reference_forward.py "$OUT" --ids "$IDS" --logits-out "$WORK/ref_logits.npy" \
    --routing-out "$WORK/ref_routing.json" > /dev/null
$PY tools/train/compare_logits.py "$WORK"
"$EPWA" run -m "$OUT" -p "The" -n 40 --seed 1
echo "== done ($(date -u +%H:%M:%S)): $OUT"
