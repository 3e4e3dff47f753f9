"""How much --amp (bfloat16 autocast) changes each method's maps.

For every classification method, on the sample photos with the default
pretrained model: the cosine similarity between the float32 and the autocast
map of each photo (worst photo reported), the relative L2 error, and whether
the top-1 class is the same.

    python benchmarks/amp_fidelity.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import saliency_cli as sal
from saliency_cli.config import Config
from saliency_cli.data import load_image, normalize, preprocess
from saliency_cli.methods import registry
from saliency_cli.models import efficientnet_lite0
from saliency_cli.runtime import amp_context

from common import sample_photos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", nargs="*", default=None, help="default: every classification method")
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = Config().preprocess
    photos = sample_photos()
    x = torch.cat([normalize(preprocess(load_image(str(p)), cfg)[0][None], cfg) for p in photos]).to(device)
    model = efficientnet_lite0().eval().to(device)
    with torch.no_grad():
        top32 = model(x).argmax(1)
        with amp_context(device, True):
            top16 = model(x).argmax(1)
    print(f"# --amp on {device}, {len(photos)} sample photos, EfficientNet-Lite0; top-1 unchanged: "
          f"{int((top32 == top16).sum())}/{len(photos)}\n")
    print("| method | cosine fp32 vs amp (worst photo) | relative L2 error (worst photo) |")
    print("|---|---|---|")
    for name in args.methods or registry.names("classification"):
        extra = {"n": 16} if name == "smoothgrad" else {}
        full = sal.attribute(model, x, name, targets=top32, **extra).float()
        with amp_context(device, True):
            half = sal.attribute(model, x, name, targets=top32, **extra).float()
        cos = F.cosine_similarity(full.flatten(1), half.flatten(1), dim=1)
        err = (full - half).flatten(1).norm(dim=1) / full.flatten(1).norm(dim=1)
        print(f"| {name} | {float(cos.min()):.4f} | {float(err.max()):.3f} |")


if __name__ == "__main__":
    main()
