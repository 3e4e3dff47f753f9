"""A full disk, a quota or a read-only output: the run stops at the first
such error with one line and exit code 4, keeps every finished image (and
records none it did not finish), and a rerun after the fix does the rest."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saliency_cli.config import load_config
from saliency_cli.errors import OutputFull
from saliency_cli.pipeline import run

from .test_cli import records, saliency
from .test_reliability import assert_outputs_intact, many_images

TINY_SET = "model.factory=tests.helpers:TinyCNN"
IMAGES = 6

# Every write into OUT counts against the free space left; a write that does
# not fit fails as on a full disk (at the write call of Python's files, which
# PIL and the writer use, and of os.write, which appends records). Like a
# real disk, what the failed image's temporary file held is free again.
FAULT = """
import builtins, io, os
OUT, BUDGET, ERROR = os.path.abspath({out!r}), [{budget}], {error}
open_, write_ = io.open, os.write

def spend(n):
    if n > BUDGET[0]:
        raise OSError(ERROR, os.strerror(ERROR))
    BUDGET[0] -= n

class Budgeted:
    def __init__(self, file):
        self._file = file
    def write(self, data):  # bytes, or text (OUT/settings/*.json)
        spend(len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes)
        return self._file.write(data)
    def __getattr__(self, name):
        return getattr(self._file, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self._file.close()

def open_budgeted(file, mode="r", *args, **kwargs):
    opened = open_(file, mode, *args, **kwargs)
    if set(mode) & set("wax+") and os.path.abspath(os.fspath(file)).startswith(OUT):
        return Budgeted(opened)
    return opened

def write_budgeted(fd, data):  # the manifest's appends
    spend(memoryview(data).nbytes)
    return write_(fd, data)

builtins.open = io.open = open_budgeted
os.write = write_budgeted
from saliency_cli.cli import app
app({args!r})
"""


def explain_args(folder: Path, out: Path) -> list[str]:
    return ["explain", str(folder), "-m", "gradient", "-o", str(out), "--set", TINY_SET, "--batch-size", "2", "-q"]


def check_stopped(proc: subprocess.CompletedProcess, out: Path, error: str, fix: str) -> int:
    """Exit 4, one line naming OUT, the error and the fix; records only for
    finished images; nothing half-written. Returns the number kept."""
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    kept = len(records(out)) if (out / "manifest.jsonl").exists() else 0
    assert lines == [f"saliency: error: cannot write to {str(out)!r}: {error}; {fix}, then rerun the same command: "
                     f"{kept} finished image(s) are kept"], proc.stderr
    assert 0 < kept < IMAGES and all(r["status"] == "ok" for r in records(out))
    assert_outputs_intact(out)
    assert not (out / ".tmp").exists() and not (out / ".lock").exists()
    return kept


def check_rerun_finishes(folder: Path, out: Path, kept: int) -> None:
    summary = run(load_config(None, [TINY_SET]), [str(folder)], out, methods=["gradient"])
    assert (summary.skipped, summary.ok, summary.exit_code) == (kept, IMAGES - kept, 0)
    lines = records(out)
    assert len(lines) == IMAGES and len({r["key"] for r in lines}) == IMAGES  # every image done once
    assert saliency("verify", str(out)).returncode == 0


@pytest.mark.parametrize(("code", "error", "fix"), [
    (errno.ENOSPC, "No space left on device (ENOSPC)", "free space"),
    (errno.EROFS, "Read-only file system (EROFS)", "make it writable"),
])
def test_a_write_that_meets_a_full_disk_stops_the_run(tmp_path, code, error, fix):
    many_images(tmp_path / "in", IMAGES)
    out = tmp_path / "out"
    # room for two images' .npy (200 KiB each), their small PNGs and records: the third fails
    script = FAULT.format(out=str(out), budget=450_000, error=code, args=explain_args(tmp_path / "in", out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    kept = check_stopped(proc, out, error, fix)
    check_rerun_finishes(tmp_path / "in", out, kept)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root and the right to mount needed: skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_filesystem_stops_the_run_and_a_rerun_finishes(tmp_path, small_disk):
    many_images(tmp_path / "in", IMAGES)
    out = small_disk / "out"
    proc = saliency(*explain_args(tmp_path / "in", out))
    kept = check_stopped(proc, out, "No space left on device (ENOSPC)", "free space")
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)  # space freed
    check_rerun_finishes(tmp_path / "in", out, kept)


def test_a_read_only_output_folder_is_said_before_anything_runs(tmp_path, small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(OutputFull) as caught:
        run(load_config(None, [TINY_SET]), [str(tmp_path)], small_disk / "out", methods=["gradient"])
    assert caught.value.exit_code == 4
    assert str(caught.value) == (f"cannot write to {str(small_disk / 'out')!r}: Read-only file system (EROFS); "
                                 "make it writable, then rerun the same command")


def test_a_short_manifest_append_is_cut_back(tmp_path, monkeypatch):
    """A record that only partly fits leaves no half line to glue the next
    record onto, and a torn line left by a crash cannot swallow one."""
    from saliency_cli.records import Record, read_manifest
    from saliency_cli.writer import Writer

    (tmp_path / "manifest.jsonl").write_bytes(b'{"key": "torn", "sta')  # a crash mid-line
    writer = Writer(tmp_path)
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))  # the disk fills mid-line
    writer.submit(Record(input="a.png", key="a"))
    writer.close()
    assert isinstance(writer.full, OSError) and writer.full.errno == errno.ENOSPC
    assert (tmp_path / "manifest.jsonl").read_bytes() == b'{"key": "torn", "sta'
    monkeypatch.setattr(os, "write", real_write)
    writer = Writer(tmp_path)
    writer.submit(Record(input="b.png", key="b"))
    writer.close()
    first, second = (tmp_path / "manifest.jsonl").read_bytes().split(b"\n")[:2]
    assert first == b'{"key": "torn", "sta' and list(read_manifest(tmp_path)) == ["b"]
