"""How the writer's work scales with its threads: overlays rendered, encoded
as PNGs and written, per second, on 1, 2, 4... threads up to the cores, with
each PNG encoder.

On a GPU host this is what has to keep up with the device: the writer runs
up to 8 threads (writer.default_threads). Pillow's resizing and numpy's
larger loops release Python's GIL; fpng's encoder holds it, so fpng alone
cannot encode faster than one core however many threads there are, while
ISA-L's releases it (png.py): the `only` columns show both.

The second table is what the writer costs the model beside it: Grad-CAM on
EfficientNet-Lite0 alone, then beside writer threads rendering, encoding and
writing without pause, with each encoder. On the CPU the model gets the
cores the writer thread leaves (so the cores are not oversubscribed and
what is left is the GIL); on a GPU (the default where there is one), as
many writer threads as a run there starts (writer.default_threads).

    python benchmarks/host_threads.py
    python benchmarks/host_threads.py --images 256 --threads 1 2 4 8 16 --device cpu
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

import saliency_cli as sal
from saliency_cli import png
from saliency_cli.data import load_image
from saliency_cli.render import render_heatmap
from saliency_cli.runtime import prepare_model, reuse_freed_memory
from saliency_cli.writer import default_threads

from common import build, sample_photos, sync

ENCODERS = [name for name in png.installed() if name != "pillow"]  # Pillow's zlib: 20x slower


def jobs(args, out: Path) -> dict[str, list]:
    """{column: one callable per image}, cycling through the sample photos;
    CAM-style (a 7x7 map) and pixel-space (224x224, weighted) alternate."""
    photos = [np.asarray(load_image(str(p))) for p in sample_photos()]
    rng = np.random.default_rng(0)
    maps = [rng.random((7, 7), dtype=np.float32), rng.random((224, 224), dtype=np.float32)]
    overlays = {}

    def overlay(i):
        photo, values = photos[i % len(photos)], maps[i % 2]
        height, width = photo.shape[:2]
        return render_heatmap(values, style="minmax" if i % 2 == 0 else "positive", colormap="jet",
                              size=(width, height), box=(0, 0, width, height), original=photo,
                              weighted=i % 2 == 1)

    def everything(i, using):
        (out / f"{i}.png").write_bytes(png.encode(overlay(i), using))

    for i in range(len(photos) * 2):
        overlays[i] = overlay(i)
    columns = {"render only": [lambda i=i: overlay(i) for i in range(args.images)]}
    for using in ENCODERS:
        columns[f"render + {using} + write"] = [lambda i=i, u=using: everything(i, u) for i in range(args.images)]
    for using in ENCODERS:
        columns[f"{using} only"] = [lambda i=i, u=using: png.encode(overlays[i % len(overlays)], u)
                                    for i in range(args.images)]
    return columns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cores = os.cpu_count() or 1
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="*",
                    default=sorted({t for t in (1, 2, 4, 8, 16, cores) if t <= cores}))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="the model's, for the second table")
    ap.add_argument("--batch", type=int, default=4, help="the model's batch, for the second table")
    args = ap.parse_args()
    reuse_freed_memory()  # as `saliency explain` runs
    with tempfile.TemporaryDirectory() as tmp:
        columns = jobs(args, Path(tmp))
        print(f"# overlays of the sample photos per second, {args.images} per round, median of "
              f"{args.repeats}; {cores} cores; `fast` takes {png.encoder('fast')} with the model on the CPU, "
              f"{png.encoder('fast', beside_model=True)} on a GPU\n")
        print("| threads | " + " | ".join(columns) + " |")
        print("|---|" + "---|" * len(columns))
        for threads in args.threads:
            rates = []
            with ThreadPoolExecutor(threads) as pool:
                for calls in columns.values():
                    list(pool.map(lambda call: call(), calls[:threads * 4]))  # warm-up
                    seconds = []
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        list(pool.map(lambda call: call(), calls))
                        seconds.append(time.perf_counter() - start)
                    rates.append(args.images / statistics.median(seconds))
            print(f"| {threads} | " + " | ".join(f"{r:.0f}" for r in rates) + " |", flush=True)
        beside_the_model(args, columns)


def beside_the_model(args, columns: dict[str, list]) -> None:
    device = torch.device(args.device)
    threads = default_threads(device.type)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - threads))
    model = prepare_model(build("efficientnet_lite0"), device)
    x = torch.randn(args.batch, 3, 224, 224, device=device)

    def model_seconds() -> float:  # per batch, median of the rounds
        seconds = []
        for _ in range(args.repeats * 3):
            start = time.perf_counter()
            sal.attribute(model, x, "grad-cam")
            sync(device)
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)

    model_seconds()  # warm-up
    alone = model_seconds()
    print(f"\n# Grad-CAM on EfficientNet-Lite0, batch {args.batch}, {device.type} "
          f"({torch.get_num_threads()} torch thread(s)), beside {threads} writer thread(s) working without pause\n")
    print("| writer's work | model s per batch | x alone | overlays/s |")
    print("|---|---|---|---|")
    print(f"| none | {alone:.4f} | 1.00 | |")
    for name, calls in columns.items():
        if name.endswith("only") and name != "render only":
            continue
        stop, done = threading.Event(), []

        def work(calls=calls):
            while not stop.is_set():
                calls[len(done) % len(calls)]()
                done.append(1)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        start = time.perf_counter()
        try:
            beside = model_seconds()
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        rate = len(done) / (time.perf_counter() - start)
        print(f"| {name} | {beside:.4f} | {beside / alone:.2f} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
