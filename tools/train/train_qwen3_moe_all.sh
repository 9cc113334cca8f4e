#!/bin/bash
# Reproducible pipeline for epwa's second bundled model, tiny-qwen3-moe (Hugging Face
# Qwen3MoeForCausalLM layout, byte-level BPE tokenizer in the Qwen style).
#   tools/train/train_qwen3_moe_all.sh           full run (~56 min of training + balance) -> models/tiny-qwen3-moe
#   tools/train/train_qwen3_moe_all.sh --quick   few-minute smoke run -> $WORK/qwen3/quick-model
# Environment: WORK (default /tmp/epwa-train; the text is shared with train_all.sh), MINUTES
#   (training budget of the full run's main phase, default 56), STEPS (fixed step count instead
#   of a time budget, for exact reproduction), BALANCE_STEPS (steps of a balance round,
#   default 80; up to three rounds run, only while an expert of some layer is under 1/(2E)
#   of the top-1 choices on held-out text; --quick always runs one of 10 steps to exercise
#   the path), TOP1_ROUNDS (top-1 balance rounds that follow, STEPS:COEF:WINDOW[:LR] each
#   (LR default 3e-4), run only while an expert of some layer is under the floor; the default
#   "200:1:512 300:4:512 300:4:32 300:8:32 150:8:16:1e-4" reproduces the committed model;
#   "" stops after the Switch balance rounds), TOP1_COEF (weight of the soft top-1 term in
#   the main run, default 0: tried at 1.0, it did not raise the rarest expert's held-out
#   share; see the card),
#   MODEL_OUT (where the full run writes, default models/tiny-qwen3-moe), EPWA (build/epwa),
#   NODE_PATH (node modules holding @anush008/tokenizers, default
#   /tmp/tokjs/node_modules).
# Needs: apt-get install python3-torch libopenblas0-pthread python3-regex nodejs npm
#        mkdir -p /tmp/tokjs && cd /tmp/tokjs && npm install @anush008/tokenizers
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
WORK=${WORK:-/tmp/epwa-train}
QWORK="$WORK/qwen3"
EPWA=${EPWA:-build/epwa}
export NODE_PATH=${NODE_PATH:-/tmp/tokjs/node_modules}
PY=/usr/bin/python3
SEED=1234
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
for p in python3-torch libopenblas0-pthread python3-regex; do
  dpkg -s "$p" >/dev/null 2>&1 || { echo "missing Debian package $p (apt-get install $p)"; exit 1; }
done
[ -d "$NODE_PATH/@anush008/tokenizers" ] || {
  echo "the reference tokenizer is missing: mkdir -p /tmp/tokjs && cd /tmp/tokjs && npm install @anush008/tokenizers"
  exit 1; }
[ -x "$EPWA" ] || { echo "no $EPWA: build epwa first"; exit 1; }
mkdir -p "$QWORK"

echo "== 1. text ($(date -u +%H:%M:%S))"
tools/train/fetch_text.sh "$WORK"

echo "== 2. byte-level BPE tokenizer ($(date -u +%H:%M:%S))"
$PY tools/train/bytelevel_bpe.py --docs "$WORK/train_docs.json" --out "$QWORK/tok" --vocab 6144
$PY tools/train/verify_bytelevel_tokenizer.py --tokenizer "$QWORK/tok/tokenizer.json" \
    --heldout data/heldout/jargon.txt --train-docs "$WORK/train_docs.json" --epwa "$EPWA" \
    --stats-out "$QWORK/tok/verify.json"

echo "== 3. model ($(date -u +%H:%M:%S))"
CHECK="$QWORK/check"
mkdir -p "$CHECK"
TRAIN=($PY tools/train/train_qwen3_moe.py --work "$WORK" --tok "$QWORK/tok" --seed $SEED
       --check-out "$CHECK" --top1-coef "${TOP1_COEF:-0}")
below_floor() {
  $PY -c "import json, sys; m = json.load(open('$OUT/metrics.json')); sys.exit(0 if m['min_expert_share'] < m['expert_share_floor'] else 1)"
}
if [ $QUICK = 1 ]; then
  OUT="$QWORK/quick-model"
  "${TRAIN[@]}" --out "$OUT" --quick
  # One short balance round, whatever the balance, to exercise that path.
  "${TRAIN[@]}" --out "$OUT" --init "$OUT" --steps "${BALANCE_STEPS:-10}" --lr 3e-4 --warmup 10 \
      --aux-coef 0.5 --eval-tokens 32768
else
  OUT="${MODEL_OUT:-$ROOT/models/tiny-qwen3-moe}"
  EXTRA=()
  [ -n "${STEPS:-}" ] && EXTRA=(--steps "$STEPS")
  "${TRAIN[@]}" --out "$OUT" --minutes "${MINUTES:-56}" "${EXTRA[@]}"
  # Balance rounds: short continuations with a strong load-balancing loss (stronger each
  # round), run only while some expert of some layer takes under 1/(2E) of the top-1 choices
  # on held-out text. Each round is deterministic, so STEPS reproduces the same rounds.
  for COEF in 0.5 1.0 2.0; do
    below_floor || break
    echo "== balance round, aux coefficient $COEF ($(date -u +%H:%M:%S))"
    "${TRAIN[@]}" --out "$OUT" --init "$OUT" --steps "${BALANCE_STEPS:-80}" --lr 3e-4 \
        --warmup 10 --aux-coef "$COEF"
  done
  # Top-1 rounds: the Switch term above balances which experts are selected,
  # not which one comes first, and left experts under the floor on the
  # held-out text. These rounds add the hard top-1 term (Switch's f*P with f
  # the share of first choices, per window of tokens; see the card): STEPS:
  # COEFFICIENT:WINDOW[:LR] each, run while an expert is still under the floor.
  for ROUND in ${TOP1_ROUNDS-200:1:512 300:4:512 300:4:32 300:8:32 150:8:16:1e-4}; do
    below_floor || break
    IFS=: read -r R_STEPS R_COEF R_WINDOW R_LR <<< "$ROUND"
    R_LR=${R_LR:-3e-4}
    echo "== top-1 balance round: $R_STEPS steps, coefficient $R_COEF, window $R_WINDOW, lr $R_LR ($(date -u +%H:%M:%S))"
    "${TRAIN[@]}" --out "$OUT" --init "$OUT" --steps "$R_STEPS" --lr "$R_LR" --warmup 10 --aux-coef 0.1 \
        --top1-kind hard --top1-coef "$R_COEF" --top1-window "$R_WINDOW"
  done
  if below_floor; then echo "WARNING: an expert is still under the 1/(2E) floor (metrics.json)"; fi
fi
cp "$QWORK/tok/verify.json" "$OUT/tokenizer_verify.json"
cp "$WORK/versions.txt" "$OUT/source_packages.txt"

echo "== 4. three-way check: torch vs epwa vs NumPy reference ($(date -u +%H:%M:%S))"
IDS=$($PY -c "import json; print(','.join(map(str, json.load(open('$CHECK/torch_check.json'))['ids'])))")
"$EPWA" info -m "$OUT"
"$EPWA" score -m "$OUT" --ids "$IDS" --json --logits-out "$CHECK/epwa_logits.npy" > "$CHECK/epwa_score.json"
$PY tools/reference_forward.py "$OUT" --ids "$IDS" --logits-out "$CHECK/ref_logits.npy" \
    --routing-out "$CHECK/ref_routing.json" > /dev/null
$PY tools/train/compare_qwen3_moe.py "$CHECK" --out "$OUT/three_way_check.json"
"$EPWA" run -m "$OUT" -p "The" -n 40 --seed 1
echo "== done ($(date -u +%H:%M:%S)): $OUT"
