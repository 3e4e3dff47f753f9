"""Channels-last and bfloat16 autocast against the default layout.

For a few convnets (torchvision architectures, random weights: speed does not
depend on the values, and nothing is downloaded) plus the demo model, time
`saliency_cli.attribute(model, x, "gradient")` on one batch, interleaved,
median of the repeats, three ways:

  contiguous       weights and input in the default memory format, float32
  channels_last    weights and input channels-last (runtime.channels_last)
  + bf16 autocast  channels-last under torch.autocast(bfloat16) (--amp)

    python benchmarks/layouts.py [--device cuda] [--batch 8] [--models resnet50 ...]
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

import saliency_cli as sal
from saliency_cli.runtime import amp_context, prepare_model

from common import build, interleaved_medians


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="+",
                    default=["efficientnet_lite0", "resnet50", "mobilenet_v2", "densenet121", "convnext_tiny"])
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    print(f"# gradient, batch {args.batch} x 224x224 on {device}; seconds per batch (median of {args.repeats})\n")
    print("| model | contiguous | channels_last | ratio | channels_last + bf16 autocast | ratio |")
    print("|---|---|---|---|---|---|")

    def gradient(model, inputs, amp):
        with amp_context(device, amp):
            return sal.attribute(model, inputs, "gradient")

    for name in args.models:
        plain = prepare_model(build(name), device)
        last = prepare_model(build(name), device, channels_last=True)
        inputs = x.contiguous(memory_format=torch.channels_last)

        med = interleaved_medians({
            "contiguous": partial(gradient, plain, x, False),
            "channels_last": partial(gradient, last, inputs, False),
            "bf16": partial(gradient, last, inputs, True),
        }, args.repeats, device)
        print(f"| {name} | {med['contiguous']:.3f} | {med['channels_last']:.3f} | "
              f"{med['channels_last'] / med['contiguous']:.2f} | {med['bf16']:.3f} | "
              f"{med['bf16'] / med['contiguous']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
