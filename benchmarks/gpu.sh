#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md ("On a GPU"), and the CUDA-only tests.
#
#   bash benchmarks/gpu.sh [RESULTS_DIR] [STEP...]
#
# RESULTS_DIR (default benchmarks/results/gpu) gets one STEP.md per step (its
# table and log) and STEP.json where the script writes one. STEP is any of
#   tests effnet resnet50 convnext layouts amp workers evaluate
# (default: all, in that order; the whole set takes about 15-25 minutes on an
# H100). A failing step is reported and the others still run; the exit code
# is the number of failed steps.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
results=${1:-benchmarks/results/gpu}
shift $(( $# > 0 ? 1 : 0 ))
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(tests effnet resnet50 convnext layouts amp workers evaluate)
mkdir -p "$results"
export PYTHONUNBUFFERED=1

step() {
  case "$1" in
    tests)    $PY -m pytest -m cuda -q -p no:cacheprovider ;;
    effnet)   $PY benchmarks/run.py --device cuda --batch 32 --json "$results/effnet.json" ;;
    resnet50) $PY benchmarks/run.py --device cuda --model resnet50 --batch 32 --fc-layer fc \
                --json "$results/resnet50.json" ;;
    convnext) $PY benchmarks/run.py --device cuda --model convnext_tiny --batch 32 --json "$results/convnext.json" \
                --methods gradient guided-backprop smoothgrad grad-cam guided-grad-cam ;;
    layouts)  $PY benchmarks/layouts.py --device cuda --batch 32 ;;
    amp)      $PY benchmarks/amp_fidelity.py --device cuda ;;
    workers)  $PY benchmarks/workers.py --device cuda --workers 0 2 4 ;;
    evaluate) $PY benchmarks/evaluate.py --device cuda --batch 32 --maps 8 --chunk 512 \
                --json "$results/evaluate.json" ;;
    *)        echo "unknown step: $1 (tests effnet resnet50 convnext layouts amp workers evaluate)" >&2; return 2 ;;
  esac
}

failed=0
for s in "${steps[@]}"; do
  echo "== $s" >&2
  start=$SECONDS
  if ! step "$s" 2>&1 | tee "$results/$s.md"; then
    echo "== $s FAILED (see $results/$s.md)" >&2
    failed=$((failed + 1))
  fi
  echo "== $s took $((SECONDS - start)) s" >&2
done
exit $failed
