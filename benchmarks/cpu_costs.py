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
import time

import numpy as np
import torch

from saliency_cli.config import load_config
from saliency_cli.data import load_image, preprocess
from saliency_cli.render import render_heatmap
from saliency_cli.writer import PNG_COMPRESS_LEVEL, PNG_STRATEGY

from common import sample_photos


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
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

        def png(**options):
            return lambda: heat.save(io.BytesIO(), format="PNG", **options)

        measured = {
            "decode (load_image)": lambda: load_image(str(path)),
            "resize + to tensor (preprocess)": lambda: preprocess(image, cfg.preprocess),
            "overlay (render_heatmap)": lambda: render_heatmap(values, style="minmax", colormap="jet",
                                                              size=image.size, box=box, original=original),
            "PNG encode (as written: zlib level 1, Z_RLE)": png(compress_level=PNG_COMPRESS_LEVEL,
                                                                compress_type=PNG_STRATEGY),
            "PNG encode, zlib level 1, default strategy": png(compress_level=1),
            "PNG encode, Pillow's default (level 6)": png(),
            ".npy write (to memory)": lambda: np.save(io.BytesIO(), values),
        }
        for step, fn in measured.items():
            steps.setdefault(step, []).append(median_ms(fn, args.repeats))
    print(f"# CPU cost per image and method, one thread ({', '.join(sizes)})\n")
    print("| step | ms per image (median over photos) | once per |")
    print("|---|---|---|")
    for step, ms in steps.items():
        per = "image" if step.startswith(("decode", "resize")) else "image and method"
        if "encode," in step:
            per = "(not used)"
        print(f"| {step} | {statistics.median(ms):.2f} | {per} |")


if __name__ == "__main__":
    main()
