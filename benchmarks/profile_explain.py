"""Where the threads of `saliency explain` spend a run's streaming: py-spy
samples a real run on copies of the sample photos, and the tables list the
functions that took the main thread's time (what keeps the host from
feeding a GPU: launching work, waiting for it, the records and jobs of each
image) and the writer threads' time.

Only the samples taken while the main thread is inside the streaming loop
(`pipeline._stream`) count for it, so start-up and model loading are left
out; samples of waiting threads are kept (py-spy's --idle): a main thread
waiting for the device or for the next batch shows as such.

    python benchmarks/profile_explain.py                               # CPU, grad-cam, 256 photos
    python benchmarks/profile_explain.py --device cuda --images 1024 -m gradient
    python benchmarks/profile_explain.py --jpeg --raw out.txt          # JPEG photos; keep py-spy's stacks
    python benchmarks/profile_explain.py --gil                         # only samples holding Python's GIL

Needs py-spy (`pip install py-spy`), which must be allowed to trace its child.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from common import copy_photos, sample_photos

_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
LOOP = "_stream (saliency_cli/pipeline.py"  # the main thread's streaming loop
IDLE_WRITER = "_worker (concurrent/futures/thread.py"  # a writer thread waiting for a job


def frames(stack: str) -> list[str]:
    """'fn (file:line)' frames -> 'fn (file)': lines of one function counted together."""
    out = []
    for frame in stack.split(";"):
        match = _FRAME.match(frame)
        out.append(f"{match['name']} ({match['file']})" if match else frame)
    return out


def parse(raw: str) -> dict[str, list[tuple[list[str], int]]]:
    """py-spy's raw output (--threads) -> {thread name: [(frames, samples)]}."""
    threads: dict[str, list[tuple[list[str], int]]] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        head, _, rest = stack.partition(";")
        name = head.split(": ", 1)[1] if ": " in head else head  # "thread (123): MainThread"
        threads.setdefault(re.sub(r"_\d+$", "", name), []).append((frames(rest), int(count)))
    return threads


def table(title: str, stacks: list[tuple[list[str], int]], rows: int, inclusive: bool) -> None:
    total = sum(n for _, n in stacks)
    counts: Counter[str] = Counter()
    for fs, n in stacks:
        for f in set(fs) if inclusive else fs[-1:]:
            counts[f] += n
    print(f"\n# {title}: {total} samples, {'inclusive' if inclusive else 'self'} share\n")
    print("| function (file) | share |")
    print("|---|---|")
    for f, n in counts.most_common(rows):
        print(f"| `{f}` | {100 * n / max(1, total):.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("-m", "--method", action="append", dest="methods")
    parser.add_argument("--batch", type=int, default=None, help="--batch-size of the run (default: the config's)")
    parser.add_argument("--jpeg", action="store_true", help="the photos as JPEGs (quality 90)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy's samples per second")
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--raw", type=Path, help="keep py-spy's stacks in this file")
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding Python's GIL: "
                        "what keeps the others waiting for it")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "in"
        if args.jpeg:
            copy_photos(photos, args.images, jpeg=True)
        else:  # the sample files themselves, linked: copy_photos re-encodes each PNG (30 ms apiece)
            photos.mkdir()
            samples = sample_photos()
            for i in range(args.images):
                src = samples[i % len(samples)]
                (photos / f"{i:04d}{src.suffix}").symlink_to(src)
        raw = args.raw or Path(tmp) / "raw.txt"
        run = [sys.executable, "-m", "saliency_cli", "explain", str(photos), "-o", str(Path(tmp) / "out"), "-q",
               "--device", args.device, *[a for m in args.methods or ["grad-cam"] for a in ("-m", m)],
               *(["--batch-size", str(args.batch)] if args.batch else [])]
        sampling = ["--gil"] if args.gil else ["--idle"]
        subprocess.run([spy, "record", "--rate", str(args.rate), "--threads", *sampling, "--format", "raw",
                        "-o", str(raw), "--", *run], check=True, stdout=subprocess.DEVNULL)
        threads = parse(raw.read_text())
    main_thread = []  # its stacks inside the streaming loop, from the loop's frame down
    for fs, n in threads.get("MainThread", []):
        at = next((i for i, f in enumerate(fs) if f.startswith(LOOP)), None)
        if at is not None:
            main_thread.append((fs[at:], n))
    writers = threads.get("saliency-writer", [])
    waiting = sum(n for fs, n in writers if fs[-1].startswith(IDLE_WRITER))
    busy = [(fs, n) for fs, n in writers if not fs[-1].startswith(IDLE_WRITER)]
    what = f"{args.images} {'JPEG' if args.jpeg else 'sample'} photos, -m {' -m '.join(args.methods or ['grad-cam'])}"
    sampled = "only the thread holding the GIL" if args.gil else "waits included"
    print(f"# saliency explain, {what}, --device {args.device}; py-spy at {args.rate} Hz, {sampled}")
    if args.gil:  # py-spy takes one sample per tick, of the thread holding the GIL: samples / rate = seconds held
        held: Counter[str] = Counter()
        for name, stacks in threads.items():  # py-spy names a thread by its id until Python has named it
            known = name if name in ("MainThread", "saliency-writer") else "others (start-up, before naming)"
            held[known] += sum(n for _, n in stacks) / args.rate
        print("# seconds holding the GIL, whole run: " + ", ".join(f"{name} {s:.2f}" for name, s in held.items()))
    table("main thread in the streaming loop", main_thread, args.rows, inclusive=False)
    table("main thread in the streaming loop", main_thread, args.rows, inclusive=True)
    share = 100 * waiting / max(1, waiting + sum(n for _, n in busy))
    table(f"writer threads, while busy (waiting for work {share:.0f}% of their samples)", busy, args.rows,
          inclusive=False)


if __name__ == "__main__":
    main()
