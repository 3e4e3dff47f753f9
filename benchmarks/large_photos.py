"""What large photos cost per PNG, by `output.png_max_side`.

A folder of 24-megapixel photos (the sample photos enlarged to 6000x4000,
JPEG quality 90) through `saliency explain -m grad-cam`, once per cap:
seconds per image for the whole run (after a warm-up), the host's work per
image from the run's profile (decoding, rendering, PNG encoding, writing),
and the PNG's size on disk.

    python benchmarks/large_photos.py                     # caps 1024, 2048 (default), 4096, none
    python benchmarks/large_photos.py --images 4 --caps 2048 none
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from saliency_cli.config import load_config
from saliency_cli.pipeline import run
from saliency_cli.runtime import reuse_freed_memory

from common import sample_photos

PHASES = ("decode", "transfer", "render", "encode", "write")


def make_folder(folder: Path, count: int, size: tuple[int, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    photos = sample_photos()
    for i in range(count):
        with Image.open(photos[i % len(photos)]) as img:
            img.convert("RGB").resize(size, Image.BICUBIC).save(folder / f"{i:03d}.jpg", quality=90)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--caps", nargs="*", default=["1024", "2048", "4096", "none"])
    ap.add_argument("--method", default="grad-cam")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    reuse_freed_memory()  # as `saliency explain` runs (runtime.reuse_memory)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp) / "in", args.images, (args.width, args.height))
        print(f"# {args.images} photos of {args.width}x{args.height}, -m {args.method}\n")
        print("| output.png_max_side | PNG size | s per image (whole run) | host ms per image | PNG MiB |")
        print("|---|---|---|---|---|")
        for cap in args.caps:
            value = "null" if cap == "none" else cap
            cfg = load_config(None, [f"output.png_max_side={value}", f"runtime.device={args.device}"])
            run(cfg, [str(folder)], Path(tmp) / f"warm-{cap}", methods=[args.method])
            seconds, host = [], []
            for repeat in range(args.repeats):
                out = Path(tmp) / f"out-{cap}-{repeat}"
                start = time.perf_counter()
                summary = run(cfg, [str(folder)], out, methods=[args.method])
                seconds.append((time.perf_counter() - start) / args.images)
                host.append(1000 * sum(summary.profile.seconds[p] for p in PHASES) / args.images)
            pngs = sorted(out.rglob(f"{args.method}.png"))
            with Image.open(pngs[0]) as png:
                shown = f"{png.width}x{png.height}"
            mib = statistics.mean(p.stat().st_size for p in pngs) / 2**20
            print(f"| {cap} | {shown} | {statistics.median(seconds):.3f} | {statistics.median(host):.0f} | "
                  f"{mib:.1f} |", flush=True)


if __name__ == "__main__":
    main()
