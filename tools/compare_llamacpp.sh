#!/usr/bin/env bash
# epwa against llama.cpp on one synthetic MoE model, same threads, same
# prompt and decode lengths, at three weight precisions. An optional tool,
# never run in CI: it needs a llama.cpp build that this repository does not
# contain (nothing of llama.cpp is committed; pass its folders in).
#
#   tools/compare_llamacpp.sh LLAMA_BUILD_DIR [LLAMA_SRC_DIR]
#
# LLAMA_BUILD_DIR holds llama-bench and llama-quantize (in bin/ or at the
# top); LLAMA_SRC_DIR (default LLAMA_BUILD_DIR/..) holds gguf-py/. Build
# llama.cpp with e.g.
#   cmake -S SRC -B BUILD -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
#   cmake --build BUILD --target llama-bench llama-quantize
#
# Environment (defaults in brackets):
#   EPWA [build/epwa]  THREADS [2]  PRESET [olmoe-1b-7b]  LAYERS [4]
#   PROMPT_TOKENS [128]  GEN_TOKENS [32]  ROUNDS [3]  REPEATS [2]
#   OUT [/tmp/epwa-vs-llamacpp]  PYTHON [python3, else /usr/bin/python3]
#   LLAMA_QUANT_ARGS [--pure --leave-output-tensor]
#   EPWA_BENCH_ARGS, LLAMA_BENCH_ARGS [none]: extra flags for each side's
#     bench, e.g. LLAMA_BENCH_ARGS="-fa 1" or EPWA_BENCH_ARGS=--float-activations
#   LEVELS [fp16 int8 int4]: the levels to run, any of those three, e.g.
#     LEVELS=fp16 EPWA_BENCH_ARGS=--split-activations
#
# Steps:
#  1. `epwa synth` writes the model (bf16 safetensors, Hugging Face layout).
#  2. tools/compare_llamacpp_report.py writes it as a BF16 GGUF with
#     llama.cpp's gguf-py (see that file for why not convert_hf_to_gguf.py),
#     and llama-quantize makes Q8_0 and Q4_0 copies of it.
#  3. ROUNDS rounds, each running every level once on each side:
#     `epwa bench --quant fp16|int8|int4` against llama-bench on
#     model-bf16|q8_0|q4_0.gguf. epwa's fp16 level uses the bf16 weights as
#     stored, so fp16/bf16 is the same bytes on both sides.
#  4. A table of prefill and decode tokens/s per level with the ratio
#     epwa / llama.cpp, printed and written to $OUT/compare.json.
#
# The model, GGUF files and epwa's quantized-weight cache stay under $OUT and
# are reused by a later run with the same PRESET and LAYERS; delete $OUT to
# start over. The default model (olmoe-1b-7b cut to 4 layers) is 3.8 GB of
# bf16; all files together, epwa's cache included, take about 13 GB.
set -euo pipefail

die() {
  echo "compare_llamacpp: error: $*" >&2
  exit 1
}

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  die "usage: $0 LLAMA_BUILD_DIR [LLAMA_SRC_DIR]"
fi
LLAMA_BUILD=$1
LLAMA_SRC=${2:-$LLAMA_BUILD/..}
EPWA=${EPWA:-build/epwa}
THREADS=${THREADS:-2}
PRESET=${PRESET:-olmoe-1b-7b}
LAYERS=${LAYERS:-4}
PROMPT_TOKENS=${PROMPT_TOKENS:-128}
GEN_TOKENS=${GEN_TOKENS:-32}
ROUNDS=${ROUNDS:-3}
# Each call runs REPEATS times and reports its best. Two, because epwa bench
# has no warm-up run: at fp16 it reads the weights in place from the
# memory-mapped file, and the first prefill pays the page faults. llama-bench
# does its own warm-up run and gets the same REPEATS, so both sides report
# the best of REPEATS runs per call.
REPEATS=${REPEATS:-2}
OUT=${OUT:-/tmp/epwa-vs-llamacpp}
# --pure quantizes every matrix to the named type (no k-quant mixture that
# raises some tensors), and --leave-output-tensor keeps the lm_head bf16:
# that is epwa's recipe at int8 and int4 (every projection quantized in
# blocks of 32 with one 16-bit scale, the same bytes per weight as Q8_0 and
# Q4_0; lm_head kept 16-bit; router and norms float32), so both sides read
# the same bytes per decoded token and the ratio compares engines rather
# than recipes. Set it empty for llama.cpp's stock files (lm_head Q6_K in
# Q4_0, Q8_0 in Q8_0). LLAMA_QUANT_ARGS=--pure with EPWA_BENCH_ARGS=--int8-lm-head
# compares int8 lm_heads on both sides at int8 (Q8_0 and Q8), and at int4
# llama.cpp's Q4_0 lm_head against epwa's Q8.
LLAMA_QUANT_ARGS=${LLAMA_QUANT_ARGS-"--pure --leave-output-tensor"}
EPWA_BENCH_ARGS=${EPWA_BENCH_ARGS:-}
LLAMA_BENCH_ARGS=${LLAMA_BENCH_ARGS:-}
# The flag lists split on spaces, once, into arrays.
read -r -a quant_args <<<"$LLAMA_QUANT_ARGS"
read -r -a epwa_args <<<"$EPWA_BENCH_ARGS"
read -r -a llama_args <<<"$LLAMA_BENCH_ARGS"

for v in THREADS LAYERS PROMPT_TOKENS GEN_TOKENS ROUNDS REPEATS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[ "$GEN_TOKENS" -ge 2 ] || die "GEN_TOKENS must be at least 2 (epwa bench's minimum)"

# llama.cpp's CMake puts programs in bin/; a hand-made layout may not.
find_tool() {
  local name=$1
  for p in "$LLAMA_BUILD/bin/$name" "$LLAMA_BUILD/$name"; do
    [ -x "$p" ] && { echo "$p"; return 0; }
  done
  die "$LLAMA_BUILD has no $name (looked in bin/ and the top); build it with: cmake --build $LLAMA_BUILD --target $name"
}
[ -d "$LLAMA_BUILD" ] || die "$LLAMA_BUILD is not a folder"
LLAMA_BENCH=$(find_tool llama-bench)
LLAMA_QUANTIZE=$(find_tool llama-quantize)
# llama-bench gained -d (decode after a filled cache) in 2025; an older build
# decodes from an empty cache instead, which the report then shows as
# "after None" tokens: say so rather than fail.
depth_args=(-d "$PROMPT_TOKENS")
if ! "$LLAMA_BENCH" --help 2>&1 | grep -q -- "--n-depth"; then
  echo "compare_llamacpp: warning: this llama-bench has no -d; its decode starts from an empty cache" >&2
  depth_args=()
fi
GGUF_PY=$LLAMA_SRC/gguf-py
[ -f "$GGUF_PY/gguf/__init__.py" ] ||
  die "$GGUF_PY/gguf is missing; pass llama.cpp's source folder as the second argument"
[ -x "$EPWA" ] || die "$EPWA is not an executable (set EPWA=path/to/epwa)"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPORT=$HERE/compare_llamacpp_report.py
[ -f "$REPORT" ] || die "$REPORT is missing"

# gguf-py needs numpy and PyYAML. A pyenv or venv `python3` first on PATH
# often lacks them while the system one has them, so try both.
if [ -z "${PYTHON:-}" ]; then
  for p in python3 /usr/bin/python3; do
    if "$p" -c 'import numpy, yaml' 2>/dev/null; then PYTHON=$p; break; fi
  done
  [ -n "${PYTHON:-}" ] || die "no python3 with numpy and PyYAML found (set PYTHON=...)"
fi
"$PYTHON" -c 'import numpy, yaml' 2>/dev/null || die "$PYTHON lacks numpy or PyYAML, which gguf-py needs"

mkdir -p "$OUT/runs" "$OUT/logs" "$OUT/bin"
# A private copy of the binary: a rebuild of build/epwa during the run must
# not swap engines between rounds.
cp "$EPWA" "$OUT/bin/epwa.part" && mv "$OUT/bin/epwa.part" "$OUT/bin/epwa"
EPWA_BIN=$OUT/bin/epwa
# Quantized weights are cached between rounds (loading is not timed) and
# kept with the rest of the run's files instead of in ~/.cache/epwa.
export EPWA_CACHE_DIR=$OUT/epwa-cache

# run_step LOG CMD...: runs CMD with stderr to LOG; on failure, says which
# step failed and shows the end of its log, then stops the script.
run_step() {
  local log=$1
  shift
  if ! "$@" 2>"$log"; then
    echo "compare_llamacpp: error: this step failed: $*" >&2
    echo "--- last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
}

MODEL=$OUT/model
STAMP="preset=$PRESET layers=$LAYERS dtype=bf16"
# Each epwa level with the llama.cpp type that has its bytes per weight.
LEVELS_WANTED=${LEVELS:-fp16 int8 int4}
LEVELS=""
for level in $LEVELS_WANTED; do
  case $level in
    fp16) LEVELS="$LEVELS fp16:bf16" ;;
    int8) LEVELS="$LEVELS int8:q8_0" ;;
    int4) LEVELS="$LEVELS int4:q4_0" ;;
    *) die "LEVELS takes fp16, int8 and int4, got '$level'" ;;
  esac
done
LEVELS=${LEVELS# }
[ -n "$LEVELS" ] || die "LEVELS names no level"

# 1-2. The model in both formats, unless a previous run left the same one.
if [ "$(cat "$OUT/model.stamp" 2>/dev/null)" != "$STAMP" ]; then
  rm -f "$OUT/model.stamp" "$OUT"/model-*.gguf
  rm -rf "$EPWA_CACHE_DIR"
  echo "== writing $PRESET with $LAYERS layers to $MODEL" >&2
  run_step "$OUT/logs/synth.log" \
    "$EPWA_BIN" synth --preset "$PRESET" --layers "$LAYERS" --dtype bf16 --out "$MODEL" --force
  echo "== writing $OUT/model-bf16.gguf" >&2
  run_step "$OUT/logs/gguf.log" \
    "$PYTHON" "$REPORT" gguf --gguf-py "$GGUF_PY" "$MODEL" "$OUT/model-bf16.gguf"
  echo "$STAMP" >"$OUT/model.stamp"
else
  echo "== reusing $MODEL and its bf16 GGUF ($STAMP)" >&2
fi
# The quantized GGUFs depend on LLAMA_QUANT_ARGS too (the lm_head's type):
# each records the arguments it was made with and is remade when they change.
for type in q8_0 q4_0; do
  case " $LEVELS " in *":$type "*) ;; *) continue ;; esac  # only the levels asked for
  if [ -s "$OUT/model-$type.gguf" ] && [ "$(cat "$OUT/model-$type.args" 2>/dev/null)" = "$LLAMA_QUANT_ARGS" ]; then
    continue
  fi
  rm -f "$OUT/model-$type.args"
  echo "== llama-quantize $LLAMA_QUANT_ARGS -> $OUT/model-$type.gguf" >&2
  run_step "$OUT/logs/quantize-$type.log" \
    "$LLAMA_QUANTIZE" "${quant_args[@]}" "$OUT/model-bf16.gguf" "$OUT/model-$type.gguf.part" \
    "${type^^}" "$THREADS" >"$OUT/logs/quantize-$type.stdout.log"
  mv "$OUT/model-$type.gguf.part" "$OUT/model-$type.gguf"
  echo "$LLAMA_QUANT_ARGS" >"$OUT/model-$type.args"
done
for type in bf16 q8_0 q4_0; do
  case " $LEVELS " in *":$type "*) ;; *) continue ;; esac
  [ -s "$OUT/model-$type.gguf" ] || die "$OUT/model-$type.gguf is missing; delete $OUT/model.stamp to rebuild"
done

epwa_run() {
  local level=$1 r=$2
  local f=$OUT/runs/epwa-$level-r$r.json
  # --ctx holds exactly the prompt and the generated tokens, as llama-bench
  # sizes its context, so neither side allocates a larger KV cache.
  run_step "$OUT/logs/epwa-$level-r$r.log" \
    "$EPWA_BIN" bench -m "$MODEL" --quant "$level" -t "$THREADS" \
    --prompt-tokens "$PROMPT_TOKENS" --gen-tokens "$GEN_TOKENS" --ctx $((PROMPT_TOKENS + GEN_TOKENS)) \
    --repeats "$REPEATS" --json "${epwa_args[@]}" >"$f"
}

llama_run() {
  local type=$1 r=$2
  local m=$OUT/model-$type.gguf
  # Two calls so each phase matches epwa bench's: prefill of the prompt
  # into an empty cache, and decode with the prompt already in the cache
  # (-d fills it untimed); one call with -p and -n would decode from an
  # empty cache instead.
  run_step "$OUT/logs/llama-$type-pp-r$r.log" \
    "$LLAMA_BENCH" -m "$m" -t "$THREADS" -p "$PROMPT_TOKENS" -n 0 -r "$REPEATS" -o json "${llama_args[@]}" \
    >"$OUT/runs/llama-$type-pp-r$r.json"
  run_step "$OUT/logs/llama-$type-tg-r$r.log" \
    "$LLAMA_BENCH" -m "$m" -t "$THREADS" -p 0 -n "$GEN_TOKENS" "${depth_args[@]}" -r "$REPEATS" -o json "${llama_args[@]}" \
    >"$OUT/runs/llama-$type-tg-r$r.json"
}

# 3. Alternate the engines so that drift of a shared machine (neighbours'
# load, memory bandwidth) lands on both sides; the order flips every round
# so neither always runs on the cache the other left.
rm -f "$OUT"/runs/*.json
# Recorded because the figures mean little on a busy machine: with more
# runnable threads than cores, a thread that waits at a barrier for a
# descheduled sibling stalls the whole step, and the two engines do not
# suffer from it equally.
load_start=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
for ((r = 1; r <= ROUNDS; r++)); do
  for pair in $LEVELS; do
    level=${pair%%:*}
    type=${pair##*:}
    echo "== round $r/$ROUNDS: epwa $level vs llama.cpp $type" >&2
    if ((r % 2)); then
      epwa_run "$level" "$r"
      llama_run "$type" "$r"
    else
      llama_run "$type" "$r"
      epwa_run "$level" "$r"
    fi
  done
done

# 4. The report.
load_end=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
cores=$(nproc 2>/dev/null || echo unknown)
setup=$("$PYTHON" -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' \
  preset "$PRESET" layers "$LAYERS" threads "$THREADS" repeats_per_call "$REPEATS" \
  llama_quant_args "$LLAMA_QUANT_ARGS" epwa_bench_args "$EPWA_BENCH_ARGS" llama_bench_args "$LLAMA_BENCH_ARGS" \
  llama_src_commit "$( ([ -e "$LLAMA_SRC/.git" ] && git -C "$LLAMA_SRC" rev-parse HEAD) 2>/dev/null || echo unknown)" \
  epwa_version "$("$EPWA_BIN" --version 2>/dev/null || echo unknown)" \
  load_average_start "$load_start" load_average_end "$load_end" cores "$cores" \
  cpu "$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || true)")
levels_csv=$(echo "$LEVELS" | tr ' ' ',')
echo >&2
echo "epwa ($PRESET, $LAYERS layers, $THREADS threads) vs llama.cpp ($LLAMA_BENCH)"
echo "load average (1, 5, 15 min) on $cores cores: $load_start at the start, $load_end at the end"
run_step "$OUT/logs/report.log" \
  "$PYTHON" "$REPORT" table --runs "$OUT/runs" --levels "$levels_csv" --rounds "$ROUNDS" \
  --json "$OUT/compare.json" --setup "$setup"
