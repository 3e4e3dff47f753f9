"""Where `saliency explain` spends its CPU time per image, outside the model.

On a GPU the model runs on the device while the CPU decodes, renders and
writes; on a CPU everything shares the same cores. This times, single
threaded, each step the pipeline does per image (medians over the sample
photos and repeats), so the end-to-end rows of benchmarks/run.py can be
explained:

    python benchmarks/cpu_costs.py
"""

from __future__ import annotations

import argparse
import io
import statistics

import numpy as np
import torch
from PIL import Image

from saliency_cli import png
from saliency_cli.config import load_config
from saliency_cli.data import load_image, preprocess
from saliency_cli.render import render_heatmap
from saliency_cli.render_torch import render_overlays
from saliency_cli.runtime import reuse_freed_memory

from common import median_ms, sample_photos


def pillow_only(path) -> Image.Image:
    """load_image as without imagecodecs: Pillow decodes PNGs too."""
    libpng, png._imagecodecs = png._imagecodecs, None
    try:
        return load_image(str(path))
    finally:
        png._imagecodecs = libpng


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--system-malloc", action="store_true", help="leave glibc's malloc as it is (by default "
                    "freed memory is reused, as `saliency explain` runs: runtime.reuse_memory)")
    args = ap.parse_args()
    if not args.system_malloc:
        reuse_freed_memory()
    torch.set_num_threads(1)
    cfg = load_config(None)
    photos = sample_photos()
    rng = np.random.default_rng(0)
    values = rng.random((224, 224), dtype=np.float32)  # a map at model-input resolution
    steps: dict[str, list[float]] = {}
    sizes = []
    for path in photos:
        image = load_image(str(path))
        sizes.append(f"{path.name} {image.size[0]}x{image.size[1]}")
        _, box = preprocess(image, cfg.preprocess)
        original = np.asarray(image)
        heat = render_heatmap(values, style="minmax", colormap="jet", size=image.size, box=box, original=original)
        photo, maps = torch.from_numpy(original.copy()), [torch.from_numpy(values)]

        def pil(**options):
            return lambda: Image.fromarray(heat).save(io.BytesIO(), format="PNG", **options)

        measured = {
            "decode (load_image)": lambda: load_image(str(path)),
            "(decode by Pillow alone: the fallback where imagecodecs is missing)": lambda: pillow_only(path),
            "resize + to tensor (preprocess)": lambda: preprocess(image, cfg.preprocess),
            "overlay, numpy renderer (render_heatmap), CAM-style": lambda: render_heatmap(
                values, style="minmax", colormap="jet", size=image.size, box=box, original=original),
            "overlay, numpy renderer, pixel-space (weighted)": lambda: render_heatmap(
                values, style="positive", colormap="jet", size=image.size, box=box, original=original,
                weighted=True),
            "(overlay, torch renderer on the CPU, CAM-style)": lambda: render_overlays(
                maps, ["minmax"], [100.0], [False], colormap="jet", size=image.size, box=box, photo=photo),
            "PNG encode, fpng (fast, model on the CPU)": lambda: png.encode(heat, "fpng"),
            "PNG encode, isal (fast, model on a GPU: releases the GIL)": lambda: png.encode(heat, "isal"),
            "PNG encode, zlib (level 1, Z_RLE)": lambda: png.encode(heat, "zlib"),
            "(PNG encode, Pillow's default, level 6)": pil(),
            ".npy write (to memory)": lambda: np.save(io.BytesIO(), values),
        }
        for step, fn in measured.items():
            steps.setdefault(step, []).append(median_ms(fn, args.repeats))
        for name in ("fpng", "isal", "pillow"):
            steps.setdefault(f"PNG KiB, {name}", []).append(len(png.encode(heat, name)) / 1024)
    print(f"# CPU cost per image and method, one thread ({', '.join(sizes)}); `fast` encodes by "
          f"{png.encoder('fast')} with the model on the CPU, {png.encoder('fast', beside_model=True)} on a GPU\n")
    print("| step | ms per image (median over photos) | once per |")
    print("|---|---|---|")
    for step, ms in steps.items():
        per = "image" if step.startswith(("decode", "resize")) else "image and method"
        if step.startswith("(") or "zlib" in step or "pillow" in step:
            per = "not used by default"
        unit = "" if "KiB" not in step else " (file size)"
        print(f"| {step}{unit} | {statistics.median(ms):.2f} | {per} |")


if __name__ == "__main__":
    main()
