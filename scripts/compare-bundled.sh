#!/usr/bin/env bash
# The two bundled models side by side under one protocol (README, "The two
# bundled models"): `epwa eval quant` (65,536 held-out tokens, window 512, each
# level against float32) and `epwa eval watermark` (fp16, public evaluation
# key, gamma 0.25, delta 2, 100 texts x 200 tokens per scheme, 1,000 held-out
# paragraphs, 200 unwatermarked texts). A few minutes per model on 2 cores.
#   scripts/compare-bundled.sh [path/to/epwa] [MODEL ...]
set -euo pipefail
EPWA=${1:-build/epwa}
shift || true
MODELS=("$@")
[ ${#MODELS[@]} -eq 0 ] && MODELS=(models/tiny-moe models/tiny-qwen3-moe)
OUT=${OUT:-$(mktemp -d)}
for m in "${MODELS[@]}"; do
  name=$(basename "$m")
  # With OUT set to an earlier run's folder, models already evaluated there are not run again.
  [ -s "$OUT/$name.quant.json" ] && [ -s "$OUT/$name.wm.json" ] && continue
  "$EPWA" eval quant -m "$m" --text data/heldout/jargon.txt --window 512 --max-tokens "${QUANT_TOKENS:-65536}" --json \
    2>/dev/null > "$OUT/$name.quant.json"
  # shellcheck disable=SC2086  # WM_ARGS (e.g. "--generations 5") is split on purpose
  "$EPWA" eval watermark -m "$m" ${WM_ARGS:-} --json 2>/dev/null > "$OUT/$name.wm.json"
done
/usr/bin/python3 - "$OUT" "${MODELS[@]}" <<'PY'
import json, os, sys
out, models = sys.argv[1], sys.argv[2:]
names = [os.path.basename(m) for m in models]
q = {n: json.load(open(f"{out}/{n}.quant.json")) for n in names}
w = {n: json.load(open(f"{out}/{n}.wm.json")) for n in names}
cfg = {n: json.load(open(f"{m}/config.json")) for n, m in zip(names, models)}
def experts(n):
    c = cfg[n]
    return f"{c.get('num_local_experts') or c.get('num_experts')} top-{c['num_experts_per_tok']}"
print("| | " + " | ".join(names) + " |")
print("|---|" + "---:|" * len(names))
print("| experts | " + " | ".join(experts(n) for n in names) + " |")
for lvl in ("fp16", "int8", "int4"):
    row = []
    for n in names:
        L = next(l for l in q[n]["levels"] if l["level"] == lvl)
        r = L["router_top1_agreement"]
        row.append(f"ppl {L['perplexity']:.2f} (fp32 {L['reference_perplexity']:.2f}), KL {L['mean_kl']:.5f}, "
                   f"top-1 {100*L['top1_agreement']:.2f}%, router {100*min(r):.1f}-{100*max(r):.1f}%")
    print(f"| eval quant {lvl} | " + " | ".join(row) + " |")
for i, scheme in enumerate(("gsg", "ewp", "kgw")):
    def cell(n, f):
        s = next(s for s in w[n]["schemes"] if s["scheme"] == scheme)
        return f(s)
    print(f"| {scheme}: detected, median z (with prompt) | " + " | ".join(
        cell(n, lambda s: f"{s['full_with_prompt']['detected']}/{s['full_with_prompt']['n']}, {s['full_with_prompt']['median']:.1f}") for n in names) + " |")
    print(f"| {scheme}: distinct scored pairs per 200 tokens | " + " | ".join(
        cell(n, lambda s: f"{s['mean_scored_pairs']:.1f}") for n in names) + " |")
    print(f"| {scheme}: detected after 10/20/30% substitution | " + " | ".join(
        cell(n, lambda s: " / ".join(str(s[f'substituted_{p}pct']['detected']) for p in (10, 20, 30))) for n in names) + " |")
    if scheme != "kgw":
        print(f"| {scheme}: experts recovered with / without prompt | " + " | ".join(
            cell(n, lambda s: f"{100*s['expert_recovery_with_prompt']:.1f}% / {100*s['expert_recovery_without_prompt']:.1f}%") for n in names) + " |")
print("| human paragraphs: false alarms, z mean (sd), max | " + " | ".join(
    f"{w[n]['human']['full']['detected']}/{w[n]['human']['full']['n']}, {w[n]['human']['full']['mean']:.2f} ({w[n]['human']['full']['sd']:.2f}), {w[n]['human']['full']['max']:.2f}" for n in names) + " |")
print("| unwatermarked generations: false alarms | " + " | ".join(
    f"{w[n]['unwatermarked_generations']['full']['detected']}/{w[n]['unwatermarked_generations']['full']['n']}" for n in names) + " |")
print("| eval watermark seconds | " + " | ".join(f"{w[n]['seconds']:.0f}" for n in names) + " |")
PY
