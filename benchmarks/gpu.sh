#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md ("On a GPU"), and the CUDA-only tests.
#
#   bash benchmarks/gpu.sh [RESULTS_DIR] [STEP...]
#
# RESULTS_DIR (default benchmarks/results/gpu) gets one STEP.md per step (its
# table and log), STEP.json where the script writes one, and machine.md (the
# GPU, driver and versions). STEP is any of
#   tests effnet host resnet50 chunks suite profile layouts amp evaluate vit workers large convnext gil
# (default: all, in that order: the most wanted first). A device
# lease is short, so the run keeps to a budget: BUDGET seconds in all
# (default 420) and STEP_TIMEOUT seconds per step (default 150); a step that
# would start after the budget is spent is skipped and listed, one that runs
# past its timeout is stopped (what it printed is kept). A failing step is
# reported and the others still run; the exit code is the number of failed
# or skipped steps. Without a CUDA device only `tests`, `host` (the CPU's
# share, no device needed), `suite`, `profile` and `gil` run, on the CPU, so the
# script can be tried anywhere first; `SMOKE=1 bash benchmarks/gpu.sh DIR`
# tries every step there, on the CPU at toy sizes.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python || command -v python3)}  # a GPU image may have only python3
results=${1:-benchmarks/results/gpu}
shift $(( $# > 0 ? 1 : 0 ))
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(tests effnet host resnet50 chunks suite profile layouts amp evaluate vit workers large convnext gil)
mkdir -p "$results"
export PYTHONUNBUFFERED=1
BUDGET=${BUDGET:-420}
STEP_TIMEOUT=${STEP_TIMEOUT:-150}

# A machine without network: wheels brought in .whl/ (benchmarks/gpu_wheels.sh),
# and the tool run from this tree, with a `saliency` command beside python.
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"  # py-spy's binary
fi
# This tree first on the path: `python -c "import saliency_cli"` from here would find it
# anyway, but a script in benchmarks/ or a test's `saliency` run from another folder would not.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
bin=$(dirname "$($PY -c 'import sys; print(sys.executable)')")
if [ ! -e "$bin/saliency" ] && [ -w "$bin" ]; then
  printf '#!/bin/sh\nexec "%s" -m saliency_cli "$@"\n' "$bin/$(basename "$($PY -c 'import sys; print(sys.executable)')")" >"$bin/saliency"
  chmod +x "$bin/saliency"
fi

# SMOKE=1: every step on the CPU at toy sizes (a minute or so each), to try the whole script,
# its imports and arguments included, before a GPU is at hand. The toy sizes come last on each
# command line, where they override the real ones.
DEV=cuda
[ "${SMOKE:-0}" = 1 ] && DEV=cpu
small() { if [ "${SMOKE:-0}" = 1 ]; then echo "$@"; fi; }
METHODS_SMALL="--batch 2 --size 64 --repeats 1 --smoothgrad-n 2 --masks 8 --ig-steps 2 --rise-masks 8
  --score-cam-images 1 --occlusion-window 32 --occlusion-stride 32 --e2e-images 4 --e2e-repeats 1"

step() {
  case "$1" in
    tests)    $PY -m pytest -m cuda -q -p no:cacheprovider ;;
    # the whole suite but the browser tests (no Chromium there), on 6 processes where pytest-xdist is
    # installed (4.5 minutes on 2 cores in one process): each takes 2 torch threads (conftest.py), so
    # 12 of 16 cores, leaving room for the timing contrasts of tests/test_png.py
    # (on 2 cores, 8 processes made the GIL test fail once)
    suite)    $PY -m pytest -q -p no:cacheprovider -m "not browser" \
                $($PY -c "import xdist" 2>/dev/null && echo "-n 6") ;;
    effnet)   $PY benchmarks/run.py --device $DEV --batch 32 --repeats 3 --e2e-images 256 --json "$results/effnet.json" \
                $(small $METHODS_SMALL) ;;
    resnet50) $PY benchmarks/run.py --device $DEV --model resnet50 --batch 32 --repeats 3 --fc-layer fc \
                --json "$results/resnet50.json" $(small $METHODS_SMALL) ;;
    convnext) $PY benchmarks/run.py --device $DEV --model convnext_tiny --batch 32 --json "$results/convnext.json" \
                $(small $METHODS_SMALL) --methods gradient guided-backprop smoothgrad grad-cam guided-grad-cam ;;
    host)     $PY benchmarks/host_threads.py ;;  # the writer's threads on this host's cores
    chunks)   $PY benchmarks/chunk_size.py --auto --device $DEV --repeats 2 --masks 500 \
                $(small --repeats 1 --masks 8 --smoothgrad-n 2 --batch 1) ;;  # sizes from free memory
    layouts)  $PY benchmarks/layouts.py --device $DEV --batch 32 $(small --batch 1 --repeats 1) ;;
    amp)      $PY benchmarks/amp_fidelity.py --device $DEV $(small --methods gradient grad-cam) ;;
    workers)  $PY benchmarks/workers.py --device $DEV --workers 0 2 4 $(small --images 8 --repeats 1) ;;
    large)    $PY benchmarks/large_photos.py --device $DEV $(small --images 2 --width 1200 --height 800 --repeats 1) ;;
    vit)      $PY benchmarks/transformers.py --device $DEV --batch 64 --json "$results/vit.json" \
                $(small --batch 1 --repeats 1) ;;
    profile)  $PY benchmarks/profile_explain.py --device auto --images 1024 -m gradient --batch 32 \
                --raw "$results/profile-stacks.txt" $(small --images 8) ;;  # the main thread's time while streaming
    gil)      $PY benchmarks/profile_explain.py --gil --device auto --images 1024 -m gradient --batch 32 \
                $(small --images 8) ;;  # how long the writer's threads hold the GIL the launching thread needs
    evaluate) $PY benchmarks/evaluate.py --device $DEV --batch 32 --maps 8 --chunk 512 \
                --json "$results/evaluate.json" $(small --batch 2 --maps 2 --steps 4 --chunk 8 --repeats 1) ;;
    *)        echo "unknown step: $1 (tests effnet host resnet50 chunks suite profile layouts amp evaluate vit workers large convnext gil)" >&2; return 2 ;;
  esac
}

export PY results DEV SMOKE METHODS_SMALL
export -f step small
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'torchvision', torchvision.__version__, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
  nproc
} >"$results/machine.md" 2>&1
cat "$results/machine.md" >&2

failed=0
skipped=()
t0=$SECONDS
cuda=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
for s in "${steps[@]}"; do
  if [ "$cuda" != 1 ] && [ "$DEV" = cuda ] && [[ ! " tests host suite profile gil " =~ " $s " ]]; then
    echo "== $s: no CUDA device here, skipped (tests, host, suite, profile and gil still run; the CUDA tests skip)" >&2
    continue
  fi
  if (( SECONDS - t0 >= BUDGET )); then
    skipped+=("$s")
    continue
  fi
  echo "== $s" >&2
  start=$SECONDS
  if ! timeout --kill-after=10 "$STEP_TIMEOUT" bash -c 'step "$0"' "$s" 2>&1 | tee "$results/$s.md"; then
    echo "== $s FAILED or stopped at ${STEP_TIMEOUT} s (see $results/$s.md)" >&2
    failed=$((failed + 1))
  fi
  echo "== $s took $((SECONDS - start)) s" >&2
done
if [ ${#skipped[@]} -gt 0 ]; then
  echo "== skipped, budget of ${BUDGET} s spent: ${skipped[*]}" >&2
fi
echo "== all steps took $((SECONDS - t0)) s" >&2
exit $((failed + ${#skipped[@]}))
