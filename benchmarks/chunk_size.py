"""Per-image cost of one forward+backward to the input, by images per call.

Reproduces the rule behind CPU_CHUNK in saliency_cli/memory.py:
    python benchmarks/chunk_size.py [--models efficientnet_lite0 resnet18] [--sizes 1 2 4 8 16 32 64 128]

With --auto: the call size SmoothGrad (noisy copies) and D-RISE (masked
images) choose by themselves (memory.run_in_chunks: on CUDA from the memory
the first call used and the memory free, on the CPU CPU_CHUNK) against fixed
sizes, each variant timed in turns, median of the rounds:
    python benchmarks/chunk_size.py --auto --device cuda                  # n=50, batch 32, 1000 masks
    python benchmarks/chunk_size.py --auto --smoothgrad-n 4 --batch 4 --masks 32   # a quick CPU try
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import saliency_cli as sal
from saliency_cli import memory
from saliency_cli.runtime import prepare_model

from common import build, interleaved_medians


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet18"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 64, 128])
    ap.add_argument("--images", type=int, default=128, help="images per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--auto", action="store_true", help="the sizes SmoothGrad and D-RISE choose, against fixed ones")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="with --auto")
    ap.add_argument("--model", default="efficientnet_lite0", help="with --auto: SmoothGrad's model")
    ap.add_argument("--batch", type=int, default=32, help="with --auto: SmoothGrad's images per batch")
    ap.add_argument("--smoothgrad-n", type=int, default=50, help="with --auto")
    ap.add_argument("--masks", type=int, default=1000, help="with --auto: D-RISE's masks")
    ap.add_argument("--detector", default="fasterrcnn_mobilenet_v3_large_320_fpn", help="with --auto")
    args = ap.parse_args()
    if args.auto:
        auto_against_fixed(args)
        return
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


def auto_against_fixed(args) -> None:
    import torchvision

    device = torch.device(args.device)
    model = prepare_model(build(args.model), device)
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    copies = args.smoothgrad_n * args.batch

    def smoothgrad(size):
        return lambda: sal.attribute(model, x, "smoothgrad", n=args.smoothgrad_n, noise_batch=size)

    report(f"SmoothGrad on {args.model}, batch {args.batch}, n={args.smoothgrad_n}: {copies} noisy copies",
           "noisy copies", smoothgrad, copies, args, device)
    torch.manual_seed(0)
    detector = torchvision.models.get_model(args.detector, weights=None, weights_backbone=None,
                                            box_score_thresh=0.0).eval().to(device)
    image = torch.rand(3, 320, 320, generator=torch.Generator().manual_seed(0)).to(device)

    def d_rise(size):
        return lambda: sal.explain_detections(detector, image, num_masks=args.masks, mask_batch=size,
                                              score_threshold=0.0, max_detections=3)

    report(f"D-RISE on {args.detector} (random weights), 320x320: {args.masks} masked images", "masks",
           d_rise, args.masks, args, device)


def report(title: str, what: str, variant, total: int, args, device: torch.device) -> None:
    """One table: the automatic size, then fixed sizes up to all `total` items at once."""
    fixed = [s for s in (8, 32, 128, 512, 2048) if s < total] + [total]
    chosen = []

    def automatic():
        variant(None)()
        chosen.append(memory.chosen[what])  # the size it ended at, before a fixed size runs

    variants = {"auto": automatic} | {str(s): variant(s) for s in fixed}
    times = interleaved_medians(variants, args.repeats, device)
    auto = chosen[-1]
    if device.type == "cuda":
        whole = torch.cuda.mem_get_info(device)[1]
        title += f"; {memory.available(device) / 2**30:.0f} of {whole / 2**30:.0f} GiB free after the runs"
    print(f"\n# {title}; {device.type}, median of {args.repeats}\n")
    print("| items per call | calls | s per run | x the automatic size |")
    print("|---|---|---|---|")
    for label, seconds in times.items():
        size = min(total, auto if label == "auto" else int(label))
        name = f"{size} (automatic)" if label == "auto" else label  # at most all the items in one call
        print(f"| {name} | {-(-total // size)} | {seconds:.3f} | {seconds / times['auto']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
