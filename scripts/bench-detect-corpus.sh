#!/usr/bin/env bash
# Corpus detection throughput: `epwa detect --jsonl` (one process) against
# `python3 -m epwa.detect_corpus` on a Dask LocalCluster of 1 and 2 worker
# processes, on the same corpus (paragraphs of the committed held-out text,
# data/heldout/jargon.txt), with the same key. Prints texts/s and checks
# that every run's results equal the CLI's (timings aside).
#
#   scripts/bench-detect-corpus.sh [BUILD_DIR] [MODEL_DIR] [TEXTS]
set -euo pipefail
BUILD=${1:-build}
MODEL=${2:-models/tiny-qwen3-moe}
TEXTS=${3:-2000}
CORES=$(nproc)
PY=/usr/bin/python3
export PYTHONPATH=$BUILD/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PY" - "$work/corpus.jsonl" "$TEXTS" <<'PYEOF'
import json, sys
with open("data/heldout/jargon.txt", encoding="utf-8") as f:
    paragraphs = [" ".join(p.split()) for p in f.read().split("\n\n")]
# Paragraphs that fit the bundled models' 512-token context.
paragraphs = [p for p in paragraphs if 200 <= len(p) <= 1500]
out, n = sys.argv[1], int(sys.argv[2])
with open(out, "w", encoding="utf-8") as f:
    for i in range(n):
        f.write(json.dumps({"text": paragraphs[i % len(paragraphs)]}, ensure_ascii=False) + "\n")
PYEOF
"$BUILD/epwa" keygen --out "$work/k.key" >/dev/null 2>&1 || "$PY" -c "import epwa; epwa.keygen('$work/k.key')"

echo "model $MODEL, $TEXTS texts, $CORES cores"
start=$(date +%s.%N)
"$BUILD/epwa" detect -m "$MODEL" --key-file "$work/k.key" --jsonl "$work/corpus.jsonl" --json \
  >"$work/cli.jsonl" 2>"$work/cli.err" || true
end=$(date +%s.%N)
grep '^detect:' "$work/cli.err" | sed 's/^/  cli, 1 process, all cores: /'
"$PY" -c "print(f'  cli wall time (load included): {$end - $start:.2f} s')"

run_dask() {  # workers threads
  "$PY" -m epwa.detect_corpus "$work/corpus.jsonl" --out "$work/dask-$1.jsonl" --model "$MODEL" \
    --key-file "$work/k.key" --local-workers "$1" --threads "$2" --restart 2>"$work/dask-$1.err" || true
  grep 'texts detected' "$work/dask-$1.err" | sed "s/^detect_corpus: /  dask, $1 worker(s) x $2 thread(s): /"
  "$PY" - "$work/cli.jsonl" "$work/dask-$1.jsonl" <<'PYEOF'
import json, sys
strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "detect_ms"}
a = [strip(l) for l in open(sys.argv[1])]
b = [strip(l) for l in open(sys.argv[2])]
print("    results equal to the CLI's:", a == b)
if a != b:
    sys.exit(1)
PYEOF
}
run_dask 1 "$CORES"
run_dask 1 1
run_dask 2 $(( CORES / 2 > 0 ? CORES / 2 : 1 ))
