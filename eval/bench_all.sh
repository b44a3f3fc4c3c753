#!/usr/bin/env bash
# Every benchmark (eval/bench_*.py) in a short but real mode, one after another; each one's output goes to a folder,
# and every summary line is printed at the end (and written to <folder>/summary.txt).
#
#   eval/bench_all.sh [OUT_DIR]        default OUT_DIR: /tmp/cascade_jax_bench
#
# Runs from the repository root whatever the current folder. Interpreter: $PYTHON if set, else .venv/bin/python
# (what `./run setup` builds). About 5 minutes on 2 idle CPU cores (docs/bench_short.md); less on a bigger machine.
# bench_model and bench_train run each framework's variants in spawned processes of their own (eval/workers.py).
# The benchmarks time JAX on the CPU (they pin jax_platforms=cpu, as the comparisons with PyTorch are on the CPU).
# A benchmark that fails does not stop the others; the exit status is then 1.
#
# Shortened settings (see each benchmark's --help and docs/bench_*.md for the full runs):
#   bench_model       minilm-l6, batch 256, length 64 only, 2 timed runs (fp32 and bf16, library defaults only)
#   bench_train       batch 32 x length 64 (fp32 and bf16; not the YNN-off variant), 2 rounds, DAR 3 rounds, no forced-device part
#   bench_difficulty  64 examples, K=2 x S=2, max length 32, 1 step-only repeat, a 256 MiB fresh-memory probe
#   bench_cascade     batch 64 only, 1 timed run, the first 400 dev sentences
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-/tmp/cascade_jax_bench}
PY=${PYTHON:-.venv/bin/python}
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "bench_all: no interpreter $PY (run ./run setup, or set PYTHON)" >&2
  exit 2
fi
mkdir -p "$OUT"
# The same malloc environment as ./run gives its commands (huge pages for large blocks; see malloc_env in ./run).
eval "$(sed -n '/^malloc_env() {/,/^}/p' run)"
malloc_env
echo "[bench_all] GLIBC_TUNABLES=${GLIBC_TUNABLES:-}" >&2

# The summary lines the benchmarks end with ("<prefix>: <number>").
SUMMARY='^(jax/torch forward throughput, worst case|bf16 jax/torch forward throughput, worst case|fraction of GEMM rate|jax/torch train step, worst case|jax train step, fraction of GEMM rate|jax bf16/fp32 train step time, worst case|dar/ce step time|vmapped/loop time|wall-clock/layer speed-up, worst case): '

failed=0
declare -a RAN=()
declare -A SECONDS_OF=() STATUS_OF=()

bench() {  # bench NAME ARGS...: python -m eval.NAME ARGS, stdout to OUT/NAME.txt, stderr to OUT/NAME.stderr
  local name=$1
  shift
  echo "[bench_all] $name $* -> $OUT/$name.txt" >&2
  local t0=$SECONDS
  "$PY" -m "eval.$name" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.stderr"
  local rc=$?
  RAN+=("$name")
  SECONDS_OF[$name]=$((SECONDS - t0))
  STATUS_OF[$name]=$rc
  if [ "$rc" -ne 0 ]; then
    failed=1
    echo "[bench_all] $name FAILED (exit $rc); last lines of $OUT/$name.stderr:" >&2
    tail -n 20 "$OUT/$name.stderr" >&2
  fi
}

start=$SECONDS
bench bench_model --models minilm-l6 --batch-sizes 256 --lengths 64 --repeats 2 --min-seconds 0 --gemm-repeats 3 \
  --no-xla-default
bench bench_train --lengths 64 --no-ynn-off --repeats 2 --dar-repeats 3 --warmup 1 --skip devices --gemm-repeats 3 \
  --json "$OUT/bench_train.json"
bench bench_difficulty --subset 64 --folds 2 --seeds 2 --max-length 32 --batch-size 16 --repeats 1 \
  --memory-probe-mib 256
bench bench_cascade --batch-sizes 64 --repeats 1 --examples 400

{
  echo "== summary: every benchmark's summary lines ($((SECONDS - start)) s in all; outputs in $OUT) =="
  for name in "${RAN[@]}"; do
    echo "$name (${SECONDS_OF[$name]} s, exit ${STATUS_OF[$name]}):"
    grep -E "$SUMMARY" "$OUT/$name.txt" | sed 's/^/  /' || echo "  (no summary line)"
  done
} | tee "$OUT/summary.txt"
exit "$failed"
