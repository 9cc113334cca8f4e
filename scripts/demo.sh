#!/usr/bin/env bash
# The main job, end to end, on the bundled default model (then, more briefly,
# on the second bundled model when it is present): what the model is,
# its memory plan, how a prompt tokenizes, a streamed generation (16-bit and
# int4), a scored text with its MoE routing, and the EPW-A watermark: a
# watermarked and an unwatermarked generation from the same prompt and seed,
# and detection of both.
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


WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
KEY="$WORK/demo.key"
WM_PROMPT="The history of the computer"

step "epwa keygen --out demo.key   (32 random bytes, mode 0600)"
"$EPWA" keygen --out "$KEY"

step "epwa hash -m $MODEL   (IRSH: the router hash that binds green lists to this model)"
"$EPWA" hash -m "$MODEL"

step "epwa run ... --watermark epw2-et --key-file demo.key -n 120 --seed 11"
"$EPWA" run -m "$MODEL" -p "$WM_PROMPT" -n 120 --seed 11 --ignore-eos --watermark epw2-et --key-file "$KEY"
"$EPWA" run -m "$MODEL" -p "$WM_PROMPT" -n 120 --seed 11 --ignore-eos --watermark epw2-et --key-file "$KEY" \
  --json 2>/dev/null > "$WORK/marked.json"

step "epwa run ... -n 120 --seed 11   (the same prompt and seed, no watermark)"
"$EPWA" run -m "$MODEL" -p "$WM_PROMPT" -n 120 --seed 11 --ignore-eos --json 2>/dev/null > "$WORK/plain.json"
python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["text"].strip())' "$WORK/plain.json"

for name in marked plain; do
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); json.dump(d["ids"], open(sys.argv[2], "w"))' \
    "$WORK/$name.json" "$WORK/$name.ids.json"
done

step "epwa detect --key-file demo.key --ids marked.ids.json --prompt ...   (full: one forward pass)"
"$EPWA" detect -m "$MODEL" --key-file "$KEY" --ids "$WORK/marked.ids.json" --prompt "$WM_PROMPT" 2>/dev/null

step "epwa detect --key-file demo.key --ids plain.ids.json --prompt ..."
"$EPWA" detect -m "$MODEL" --key-file "$KEY" --ids "$WORK/plain.ids.json" --prompt "$WM_PROMPT" 2>/dev/null

step "epwa detect --key-file demo.key --ids marked.ids.json   (without the prompt)"
"$EPWA" detect -m "$MODEL" --key-file "$KEY" --ids "$WORK/marked.ids.json" 2>/dev/null

step "epwa detect --method cspv --ids marked.ids.json   (confidence-stratified sample of 48 tokens)"
"$EPWA" detect -m "$MODEL" --key-file "$KEY" --ids "$WORK/marked.ids.json" --method cspv 2>/dev/null

# detect assumes EPW-A v2's epw2-et, the default scheme; text marked with v1
# (gsg) is found when its scheme is named.
step "epwa run ... --watermark gsg, then epwa detect --watermark gsg   (EPW-A v1)"
"$EPWA" run -m "$MODEL" -p "$WM_PROMPT" -n 120 --seed 11 --ignore-eos --watermark gsg --key-file "$KEY" \
  --json 2>/dev/null > "$WORK/marked-v1.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); json.dump(d["ids"], open(sys.argv[2], "w"))' \
  "$WORK/marked-v1.json" "$WORK/marked-v1.ids.json"
"$EPWA" detect -m "$MODEL" --key-file "$KEY" --ids "$WORK/marked-v1.ids.json" --watermark gsg 2>/dev/null

# The second bundled model: 32 experts (top-4) in the Qwen3-MoE layout with a
# byte-level BPE tokenizer, beside the first; the same watermark, with 32
# green lists instead of 8.
SECOND=${SECOND_MODEL:-models/tiny-qwen3-moe}
if [ "$SECOND" != "$MODEL" ] && [ -f "$SECOND/model.safetensors" ]; then
  step "epwa info -m $SECOND   (the many-expert bundled model)"
  "$EPWA" info -m "$SECOND"

  step "epwa run -m $SECOND -p \"$PROMPT\" -n 48 --seed 7"
  "$EPWA" run -m "$SECOND" -p "$PROMPT" -n 48 --seed 7

  step "epwa run -m $SECOND ... --watermark epw2-et --key-file demo.key -n 120 --seed 11"
  "$EPWA" run -m "$SECOND" -p "$WM_PROMPT" -n 120 --seed 11 --ignore-eos --watermark epw2-et --key-file "$KEY" \
    --json 2>/dev/null > "$WORK/marked2.json"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["text"].strip()); json.dump(d["ids"], open(sys.argv[2], "w"))' \
    "$WORK/marked2.json" "$WORK/marked2.ids.json"

  step "epwa detect -m $SECOND --key-file demo.key --ids marked2.ids.json --prompt ..."
  "$EPWA" detect -m "$SECOND" --key-file "$KEY" --ids "$WORK/marked2.ids.json" --prompt "$WM_PROMPT" 2>/dev/null
fi

# The same from Python (`import epwa`, built beside the CLI), with
# transformers' result names; skipped when the module was not built.
PYDIR=$(dirname "$EPWA")/python
if [ -f "$PYDIR/epwa/__init__.py" ] && ls "$PYDIR"/epwa/_epwa*.so >/dev/null 2>&1; then
  step "python3: import epwa; Engine.generate(..., watermark=WatermarkingConfig(...)); WatermarkDetector.detect(...)"
  PYTHONPATH=$PYDIR /usr/bin/python3 - "$MODEL" "$KEY" "$WM_PROMPT" <<'PYEOF'
import sys
import epwa
model, key, prompt = sys.argv[1:4]
engine = epwa.Engine(model)
config = epwa.WatermarkingConfig(key_file=key)  # epw2-et, gamma 0.25, delta 2
out = engine.generate(prompt, max_new_tokens=120, seed=11, watermark=config, ignore_eos=True)
print(out.text.strip()[:240], "...")
print(f"experts under which each token was sampled: {out.experts.shape} (tokens, MoE layers, top-k)")
detector = epwa.WatermarkDetector(engine, config)
for name, text in (("watermarked", out.text), ("unmarked", engine.generate(prompt, max_new_tokens=120, seed=11, ignore_eos=True).text)):
    r = detector.detect(text)
    print(f"{name:12s} num_tokens_scored={r.num_tokens_scored} green_fraction={r.green_fraction:.3f} "
          f"z_score={r.z_score:.2f} p_value={r.p_value:.3g} prediction={r.prediction}")
PYEOF
fi
