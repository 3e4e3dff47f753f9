"""Where a CPU run's time goes between the model's batches.

With the model on the CPU, `saliency explain` takes turns: the model
explains a batch on all cores, then the writer's threads render and write
that batch and decode the next one while the model waits
(loading.ThreadedLoader). This times both turns inside real runs
(`pipeline.run` on copies of the sample photos), per image, from the second
batch to the last (start-up and the last batch's flush left out):

    model      the main thread explaining a batch (attribution, the maps
               back, the records and jobs handed to the writer)
    host       from the end of one batch's explaining to the start of the
               next: the writer's jobs and the next batch's decoding
    decode, jobs   the same, as time on the writer's threads (summed over
               the threads, waits for the GIL and the cores included)

    python benchmarks/host_phase.py                        # grad-cam, sample photos
    python benchmarks/host_phase.py -m gradient --jpeg
    python benchmarks/host_phase.py --encoder isal         # the other PNG encoder on the CPU
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from saliency_cli import data, png, tasks, writer
from saliency_cli.config import load_config
from saliency_cli.pipeline import run
from saliency_cli.runtime import reuse_freed_memory

from common import copy_photos

Span = tuple[str, str, float, float]  # thread, what, start, end


def timed(owner, name: str, label: str, spans: list[Span]) -> None:
    """Record every call of owner.name as a span labelled `label`."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spans.append((threading.current_thread().name, label, start, time.perf_counter()))

    setattr(owner, name, wrapper)


def per_image(spans: list[Span], batch: int) -> dict[str, float]:
    """ms per image of each turn, from the second batch's start to the last's."""
    batches = sorted((s for s in spans if s[1] == "model"), key=lambda s: s[2])
    first, last = batches[1][2], batches[-1][2]
    images = batch * (len(batches) - 2)
    busy: dict[str, float] = defaultdict(float)
    for _, label, start, end in spans:
        if label != "model":
            busy[label] += max(0.0, min(end, last) - max(start, first))
    model = sum(end - start for _, _, start, end in batches[1:-1])
    return {"model": 1000 * model / images, "host": 1000 * (last - first - model) / images,
            "decode": 1000 * busy["decode"] / images, "jobs": 1000 * busy["jobs"] / images}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--method", default="grad-cam")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jpeg", action="store_true", help="the sample photos re-saved as JPEGs")
    ap.add_argument("--npy-only", action="store_true", help="--set output.png=false")
    ap.add_argument("--encoder", choices=png.installed(), help="the PNG encoder (default: what `fast` picks)")
    args = ap.parse_args()
    if args.images < 3 * args.batch:
        ap.error("--images: at least three batches (the first and the last are left out)")
    reuse_freed_memory()
    if args.encoder:
        png.encoder = lambda compression, beside_model=False: args.encoder
    spans: list[Span] = []
    timed(data.ImageDataset, "__getitem__", "decode", spans)
    timed(writer.Writer, "_run_jobs", "jobs", spans)
    cfg = load_config(None, [f"runtime.batch_size={args.batch}", "runtime.device=cpu"]
                      + (["output.png=false"] if args.npy_only else []))
    timed(tasks.get(cfg.task), "explain_safely", "model", spans)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = copy_photos(Path(tmp) / "in", args.images, jpeg=args.jpeg)
        run(cfg, [str(photos)], Path(tmp) / "warm", methods=[args.method])
        for i in range(args.runs):
            spans.clear()
            run(cfg, [str(photos)], Path(tmp) / f"out{i}", methods=[args.method])
            rows.append(per_image(spans, args.batch))
    encoder = "no PNGs" if args.npy_only else f"PNGs by {args.encoder or png.encoder('fast')}"
    print(f"# -m {args.method}, {args.images} {'JPEG' if args.jpeg else 'sample'} photos, batch {args.batch}, "
          f"{encoder}; ms per image, median of {args.runs} runs (each run: {[round(r['host'], 2) for r in rows]})")
    print("| model | host | model + host | decode (threads) | jobs (threads) |")
    print("|---|---|---|---|---|")
    med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    print(f"| {med['model']:.2f} | {med['host']:.2f} | {med['model'] + med['host']:.2f} | {med['decode']:.2f} | "
          f"{med['jobs']:.2f} |")


if __name__ == "__main__":
    main()
