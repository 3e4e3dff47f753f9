"""What making every record durable would cost: fsync each output file before
its rename and the manifest after each append, against the writer as it is.

Writes the outputs of `--images` images through the real Writer (its thread
pool, atomic renames, one manifest line per image): a 224x224 float32 .npy
and a heatmap PNG at a photo's size (chelsea.png, 451x300, overlaid), then
the same with the fsyncs, rounds interleaved, median milliseconds per image.
Run it on the disk you care about (`--dir`): a local SSD, a network file
system and a tmpfs differ by orders of magnitude.

    python benchmarks/fsync_cost.py [--dir /scratch/here] [--images 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from saliency_cli.records import Files, Record
from saliency_cli.writer import Writer

from common import ROOT

SYNC_SECONDS: list[float] = []  # every fsync's own time (list.append is atomic across threads)


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        os.fsync(fd)
        SYNC_SECONDS.append(time.perf_counter() - start)
    finally:
        os.close(fd)


class DurableWriter(Writer):
    """The writer with an fsync of every file before its rename and of the
    manifest after every append (what a crash-proof record would need; the
    folder entries would need one more fsync of each folder)."""

    def _atomic(self, rel, write):
        def synced(path: Path) -> None:
            write(path)
            fsync(path)

        super()._atomic(rel, synced)

    def _write_line(self, line: bytes) -> None:
        super()._write_line(line)
        fsync(self.manifest_path)


def write_all(kind: type[Writer], out: Path, images: int, npy: np.ndarray, png: Image.Image) -> float:
    """Seconds to write every image's two files and record, from an empty folder."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    writer = kind(out)
    for i in range(images):
        key = f"img{i:05d}"
        files = Files(npy=f"{key}/gradient.npy", pngs=[f"{key}/gradient.png"])
        files.describe(npy)
        record = Record(input=f"{key}.png", key=key, size=list(png.size), outputs={"gradient": files})
        writer.submit(record, [partial(writer.save_npy, files.npy, npy), partial(writer.save_png, files.pngs[0], png)])
    writer.close()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    npy = rng.standard_normal((224, 224)).astype(np.float32)
    photo = np.asarray(Image.open(ROOT / "sample_images" / "chelsea.png").convert("RGB"))
    heat = rng.integers(0, 255, photo.shape, dtype=np.uint8)
    png = Image.fromarray(((photo.astype(np.uint16) + heat) // 2).astype(np.uint8))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        times: dict[str, list[float]] = {"as now": [], "fsync files + manifest": []}
        for round_ in range(args.repeats + 1):  # round 0 warms up
            for label, kind in (("as now", Writer), ("fsync files + manifest", DurableWriter)):
                seconds = write_all(kind, Path(tmp) / "out", args.images, npy, png)
                if round_:
                    times[label].append(seconds)
        where = args.dir or Path(tempfile.gettempdir())
        print(f"# writing {args.images} images (.npy 224x224 float32 + PNG {png.size[0]}x{png.size[1]}) into {where}; "
              f"ms per image, median of {args.repeats}\n")
        print("| writer | ms per image |")
        print("|---|---|")
        medians = {label: statistics.median(t) * 1000 / args.images for label, t in times.items()}
        for label, ms in medians.items():
            print(f"| {label} | {ms:.2f} |")
        print(f"\nfsync adds {medians['fsync files + manifest'] - medians['as now']:.2f} ms per image to the wall "
              f"time; the fsync calls themselves took {statistics.median(SYNC_SECONDS) * 1000:.2f} ms each "
              f"(median), {sum(SYNC_SECONDS) * 1000 / len(SYNC_SECONDS) * 3:.2f} ms per image (3 per image)")


if __name__ == "__main__":
    main()
