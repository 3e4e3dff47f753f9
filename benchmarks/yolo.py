"""D-RISE on YOLOv8n at 640: masked images through the network in batches
against one masked image per call (what a wrapper around `predict` does).

Random weights (nothing is downloaded), batch-norm statistics calibrated so
that detections exist; one 640x427 sample photo; the same N masks either way.

    python benchmarks/yolo.py                    # CPU, 256 masks
    python benchmarks/yolo.py --device cuda --masks 1000
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
from PIL import Image

import saliency_cli as sal

from common import ROOT, interleaved_medians


def random_yolo(device: torch.device):
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")
    net = yolo.model
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(4, 3, 320, 320))
        for branch in net.model[-1].cv3:
            branch[-1].bias.fill_(-1.0)
    net.eval().to(device)
    return yolo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--masks", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    device = torch.device(args.device)
    yolo = random_yolo(device)
    with Image.open(ROOT / "sample_images" / "rocket.jpg") as img:
        image = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1).float().div(255).to(device)
    params = dict(num_masks=args.masks, grid=16, score_threshold=0.8, max_detections=3)
    variants = {
        "batched (auto)": lambda: sal.explain_detections(yolo, image, **params),
        "one mask per call": lambda: sal.explain_detections(yolo, image, mask_batch=1, **params),
    }
    (explained,) = variants["batched (auto)"]()
    times = interleaved_medians(variants, args.repeats, device)
    print(f"# D-RISE, YOLOv8n (random weights), 640x427 photo, {args.masks} masks, {len(explained.detections)} "
          f"detection(s) explained, {args.device}\n")
    print("| masks per call | s per image | masks/s | vs one per call |")
    print("|---|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.2f} | {args.masks / seconds:.0f} | "
              f"{times['one mask per call'] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
