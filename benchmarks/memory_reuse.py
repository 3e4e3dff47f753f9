"""What `runtime.reuse_memory` (runtime.reuse_freed_memory) buys on a CPU.

glibc's malloc maps each large block afresh and unmaps it when freed, so
every batch faults its activations and gradients in again. Each variant
runs in its own process (the setting is for the whole process), the two
settings interleaved, median of the repeats:

1. attribution only: seconds per batch of `saliency_cli.attribute` on
   EfficientNet-Lite0 (random inputs, batch 8), and the process's kernel
   share of CPU time;
2. whole `saliency explain` runs on a folder of copies of the sample
   photos: wall seconds, kernel share and peak resident memory.

    python benchmarks/memory_reuse.py [--methods gradient grad-cam] [--images 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, copy_photos

ATTRIBUTE = """
import sys, time, torch
sys.path.insert(0, {bench!r})
import saliency_cli as sal
from saliency_cli.runtime import prepare_model, reuse_freed_memory
from common import build
if {reuse}:
    assert reuse_freed_memory()
torch.manual_seed(0)
model = prepare_model(build("efficientnet_lite0"), torch.device("cpu"), channels_last=True)
x = torch.randn({batch}, 3, 224, 224).contiguous(memory_format=torch.channels_last)
params = {params}
sal.attribute(model, x, {method!r}, **params)  # warm-up
start = time.perf_counter()
for _ in range({batches}):
    sal.attribute(model, x, {method!r}, **params)
print((time.perf_counter() - start) / {batches})
"""

PARAMS = {"smoothgrad": {"n": 16}, "integrated-gradients": {"steps": 16}}


def child(cmd: list[str]) -> tuple[str, dict[str, float]]:
    """Run `cmd`; its stdout and what it cost: wall seconds, the kernel's
    share of its CPU time and its peak resident MiB (its own rusage, by wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode:
            sys.exit(f"{' '.join(cmd[:3])}...: exit {proc.returncode}\n{err.read().decode()[-3000:]}")
        cost = {"wall": wall, "system share": usage.ru_stime / (usage.ru_utime + usage.ru_stime),
                "peak MiB": usage.ru_maxrss / 1024}
        return out.read().decode(), cost


def attribution(method: str, reuse: bool, args) -> dict[str, float]:
    code = ATTRIBUTE.format(bench=str(ROOT / "benchmarks"), reuse=reuse, batch=args.batch, batches=args.batches,
                            method=method, params=PARAMS.get(method, {}))
    out, cost = child([sys.executable, "-c", code])
    return {"s per batch": float(out.strip().splitlines()[-1]), "system share": cost["system share"]}


def explain(folder: Path, out: Path, method: str, reuse: bool) -> dict[str, float]:
    cli = Path(sys.executable).with_name("saliency")
    _, cost = child([str(cli), "explain", str(folder), "-o", str(out), "-m", method, "-q", "--overwrite",
                     "--set", f"runtime.reuse_memory={str(reuse).lower()}"])
    return cost


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["gradient", "grad-cam", "smoothgrad", "integrated-gradients"])
    ap.add_argument("--e2e-methods", nargs="+", default=["gradient", "grad-cam"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"# {os.cpu_count()} cores; EfficientNet-Lite0, batch {args.batch}; median of {args.repeats}\n")
    print("| attribution only | off: s per batch | on: s per batch | speed-up | kernel share off | on |")
    print("|---|---|---|---|---|---|")
    for method in args.methods:
        runs = {False: [], True: []}
        for _ in range(args.repeats):
            for reuse in runs:
                runs[reuse].append(attribution(method, reuse, args))
        off, on = medians(runs[False]), medians(runs[True])
        name = method + (f" ({', '.join(f'{k}={v}' for k, v in PARAMS[method].items())})" if method in PARAMS else "")
        print(f"| {name} | {off['s per batch']:.3f} | {on['s per batch']:.3f} | "
              f"{off['s per batch'] / on['s per batch']:.2f}x | {off['system share']:.0%} | {on['system share']:.0%} |")
    print(f"\n| saliency explain, {args.images} photos, PNG + .npy | off: s | on: s | speed-up | "
          "kernel share off | on | peak MiB off | on |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = copy_photos(Path(tmp) / "in", args.images)
        for method in args.e2e_methods:
            runs = {False: [], True: []}
            for _ in range(args.repeats):
                for reuse in runs:
                    runs[reuse].append(explain(folder, Path(tmp) / "out", method, reuse))
            off, on = medians(runs[False]), medians(runs[True])
            print(f"| -m {method} | {off['wall']:.2f} | {on['wall']:.2f} | {off['wall'] / on['wall']:.2f}x | "
                  f"{off['system share']:.0%} | {on['system share']:.0%} | {off['peak MiB']:.0f} | "
                  f"{on['peak MiB']:.0f} |")


if __name__ == "__main__":
    main()
