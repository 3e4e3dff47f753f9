"""Decoding in DataLoader workers or in the main process, end to end.

Times whole `saliency explain` runs (the pipeline's `run`, model loading
included) on a folder of copies of the sample photos, for each number of
decoding workers (0: each batch decodes on threads of the main process on
a CPU, ThreadedLoader), interleaved, median of the repeats after a warm-up
round.
This is the measurement behind `default_workers` in saliency_cli/loading.py.

    python benchmarks/workers.py [--workers 0 2] [--images 96] [--repeats 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from saliency_cli.config import load_config
from saliency_cli.pipeline import run
from saliency_cli.runtime import reuse_freed_memory

from common import copy_photos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--methods", nargs="+", default=["gradient", "grad-cam"])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    reuse_freed_memory()  # as `saliency explain` runs (runtime.reuse_memory)
    with tempfile.TemporaryDirectory() as tmp:
        folder = copy_photos(Path(tmp) / "in", args.images)
        print(f"# saliency explain on {args.images} photos, batch 8, {args.device}; "
              f"seconds per run (median of {args.repeats})\n")
        print("| method | outputs | " + " | ".join(f"{w} workers" for w in args.workers) + " |")
        print("|---|---|" + "---|" * len(args.workers))
        for method in args.methods:
            for outputs, png in (("png+npy", "true"), ("npy only", "false")):
                times: dict[int, list[float]] = {w: [] for w in args.workers}
                for round_ in range(args.repeats + 1):  # round 0 warms up
                    for w in args.workers:
                        cfg = load_config(None, ["runtime.batch_size=8", f"runtime.device={args.device}",
                                                 f"runtime.workers={w}", f"output.png={png}"])
                        start = time.perf_counter()
                        run(cfg, [str(folder)], Path(tmp) / f"out-{method}-{png}-{w}-{round_}", methods=[method])
                        if round_:
                            times[w].append(time.perf_counter() - start)
                cells = " | ".join(f"{statistics.median(times[w]):.2f}" for w in args.workers)
                print(f"| {method} | {outputs} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
