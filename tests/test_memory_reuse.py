"""runtime.reuse_memory: glibc keeps the memory a batch freed for the next
batch instead of mapping it afresh (runtime.reuse_freed_memory)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import SAMPLES
from .test_cli import saliency

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")

# 20 "batches": tensors of 6-40 MiB (122 MiB) filled, then freed; prints the page faults they cost
MIB = (40, 12, 24, 40, 6)
FAULTS = """
import resource, torch
from saliency_cli.runtime import reuse_freed_memory
applied = {reuse} and reuse_freed_memory()
def batch():
    held = [torch.ones(n << 20, dtype=torch.uint8) for n in {mib}]
# the first batches take their memory from the system either way: the heap grows until the blocks
# fit in what earlier batches freed whatever the order (on some machines once, on others by a
# 40 MiB block at each of the next 1-4 batches, and rarely once more later)
for _ in range(8):
    batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    batch()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(reuse: bool) -> tuple[bool, int]:
    proc = subprocess.run([sys.executable, "-c", FAULTS.format(reuse=reuse, mib=MIB)], capture_output=True, text=True,
                          check=True)
    applied, count = proc.stdout.split()
    return applied == "True", int(count)


@glibc
def test_freed_blocks_are_reused_not_faulted_in_again():
    pages = 20 * (sum(MIB) << 20) // 4096  # what taking every block afresh from the system costs
    applied, reused = faults(True)
    # the memory of the first batches serves the others: 0-1 faults in most runs, now and then a 40 MiB block
    # more (10,240 faults, 1.6%) where the heap still had to grow
    assert applied and reused < pages // 20
    applied, default = faults(False)
    assert not applied
    if "[always]" not in _transparent_hugepages():  # else a fault maps 2 MiB: few faults either way
        assert default > pages // 4  # glibc's default: 42% measured


def _transparent_hugepages() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read()
    except OSError:
        return ""


@glibc
def test_the_cli_reuses_memory_unless_told_not_to(tmp_path):
    sample_image = SAMPLES / "rocket.jpg"
    said = "freed memory is kept for the next batch"
    on = saliency("explain", str(sample_image), "-o", str(tmp_path / "on"), "-m", "gradient", "--debug")
    assert on.returncode == 0 and said in on.stderr, on.stderr
    off = saliency("explain", str(sample_image), "-o", str(tmp_path / "off"), "-m", "gradient", "--debug",
                   "--set", "runtime.reuse_memory=false")
    assert off.returncode == 0 and said not in off.stderr, off.stderr
    scored = saliency("evaluate", str(tmp_path / "on"), "--metric", "deletion", "--steps", "4", "--debug")
    assert scored.returncode == 0 and said in scored.stderr, scored.stderr
