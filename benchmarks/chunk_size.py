"""Per-image cost of one forward+backward to the input, by images per call.

Reproduces the rule behind CPU_CHUNK in saliency_cli/memory.py:
    python benchmarks/chunk_size.py [--models efficientnet_lite0 resnet18] [--sizes 1 2 4 8 16 32 64 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import saliency_cli as sal
from saliency_cli.runtime import prepare_model

from common import build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet18"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 64, 128])
    ap.add_argument("--images", type=int, default=128, help="images per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print("model               images/call  ms/image (median of repeats)")
    for name in args.models:
        model = prepare_model(build(name), torch.device("cpu"))
        for size in args.sizes:
            x = torch.randn(size, 3, 224, 224)
            sal.attribute(model, x, "gradient")  # warm-up
            times = []
            for _ in range(args.repeats):
                calls = max(1, args.images // size)
                t0 = time.perf_counter()
                for _ in range(calls):
                    sal.attribute(model, x, "gradient")
                times.append((time.perf_counter() - t0) / (calls * size) * 1e3)
            print(f"{name:20s}{size:>11d}  {statistics.median(times):8.2f}")


if __name__ == "__main__":
    main()
