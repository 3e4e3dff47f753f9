"""Several runs into one output folder: they take turns (locking.py), a
killed holder frees the folder at once, and every image ends done once with
every method any run finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saliency_cli.locking import OutLock

from .test_cli import records
from .test_reliability import assert_outputs_intact, many_images

TINY = ["--set", "model.factory=tests.helpers:TinyCNN", "--batch-size", "2", "-q"]

# the run waits at its first record while PAUSE exists: it holds OUT meanwhile
PAUSED = """
import os, time
from saliency_cli import writer
submit = writer.Writer.submit
def paused(self, *args, **kwargs):
    while os.path.exists({pause!r}):
        time.sleep(0.05)
    return submit(self, *args, **kwargs)
writer.Writer.submit = paused
from saliency_cli.cli import app
app({args!r})
"""


def start(args: list[str], log: Path, pause: Path | None = None) -> subprocess.Popen:
    """`saliency ARGS` in the background, its stderr in `log`."""
    if pause is None:
        cmd = [sys.executable, "-m", "saliency_cli", *args]
    else:
        cmd = [sys.executable, "-c", PAUSED.format(pause=str(pause), args=args)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def holder_pid(out: Path) -> int | None:
    try:
        return json.loads((out / ".lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def finish(proc: subprocess.Popen, log: Path) -> str:
    assert proc.wait(timeout=300) == 0, log.read_text()
    return log.read_text()


def test_runs_into_one_folder_take_turns_and_keep_every_method(tmp_path):
    """The situation users meet: `-m gradient`, then, while it runs, `-m
    grad-cam` and the same `-m gradient` again into the same folder."""
    many_images(tmp_path / "in", 6)
    out, pause = tmp_path / "out", tmp_path / "pause"
    pause.touch()
    first = start(["explain", str(tmp_path / "in"), "-m", "gradient", "-o", str(out), *TINY[:-1]],
                  tmp_path / "first.log", pause)
    wait_for(lambda: holder_pid(out) == first.pid, "the first run to hold OUT")
    others = {m: start(["explain", str(tmp_path / "in"), "-m", m, "-o", str(out), *TINY[:-1]],
                       tmp_path / f"{m}.log") for m in ("grad-cam", "gradient")}
    for method in others:  # each says whom it waits for, by pid
        wait_for(lambda m=method: f"pid {first.pid} on" in (tmp_path / f"{m}.log").read_text(), f"{method} to wait")
    assert "waiting for it to finish" in (tmp_path / "grad-cam.log").read_text()
    pause.unlink()
    first_log = finish(first, tmp_path / "first.log")
    logs = {m: finish(p, tmp_path / f"{m}.log") for m, p in others.items()}
    assert "6 image(s) written" in first_log and "6 image(s) written" in logs["grad-cam"]
    assert "6 of 6 image(s) already done" in logs["gradient"]  # it planned after the first run finished
    lines = records(out)
    assert len(lines) == 12  # every image computed once per method
    current = {r["key"]: r for r in lines}
    assert len(current) == 6
    assert all(r["status"] == "ok" and sorted(r["outputs"]) == ["grad-cam", "gradient"] for r in current.values())
    assert_outputs_intact(out)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no .lock, no .tmp left


def test_a_killed_holder_frees_the_folder_and_the_waiting_run_finishes(tmp_path):
    many_images(tmp_path / "in", 4)
    out, pause = tmp_path / "out", tmp_path / "pause"
    pause.touch()
    args = ["explain", str(tmp_path / "in"), "-m", "gradient", "-o", str(out), *TINY]
    holder = start(args, tmp_path / "holder.log", pause)
    wait_for(lambda: holder_pid(out) == holder.pid and (out / ".tmp").exists(), "the holder to start writing")
    waiting = start(args[:-1], tmp_path / "waiting.log")
    wait_for(lambda: f"pid {holder.pid} on" in (tmp_path / "waiting.log").read_text(), "the second run to wait")
    holder.send_signal(signal.SIGKILL)  # the lock file stays, naming a dead process: the lock does not
    holder.wait(timeout=60)
    log = finish(waiting, tmp_path / "waiting.log")
    assert "is free: going on" in log and "4 image(s) written" in log
    current = {r["key"]: r for r in records(out)}
    assert len(current) == 4 and all(r["status"] == "ok" for r in current.values())
    assert_outputs_intact(out)
    assert not (out / ".lock").exists() and not (out / ".tmp").exists()


def _can_lock(out: Path, shard: tuple[int, int] | None) -> bool:
    """Whether another process could take OUT now for `shard` (None: unsharded)."""
    pid = os.fork()
    if pid == 0:  # the child tries once and says by its exit status: 0 admitted, 1 kept out
        code = 2  # an exception: neither answer
        try:
            lock = OutLock(out)
            lock._open()
            code = {True: 0, False: 1}.get(lock._attempt(shard), 3)  # 3: "the gate is busy", unexpected here
        finally:
            os._exit(code)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    assert status in (0, 1), f"the attempt for {shard} failed instead of answering (exit {status})"
    return status == 0


@pytest.mark.parametrize(("held", "admitted", "kept_out"), [
    (None, [], [None, (0, 2), (1, 3)]),
    ((0, 2), [(1, 2)], [None, (0, 2), (0, 3), (2, 3)]),
])
def test_which_runs_may_share_a_folder(tmp_path, held, admitted, kept_out):
    """Shards of one split run side by side; an unsharded run, the same shard
    twice or a split of another size wait. Leaving frees everything."""
    lock = OutLock(tmp_path / "out")
    lock.acquire(held)
    try:
        assert [s for s in admitted + kept_out if _can_lock(tmp_path / "out", s)] == admitted
    finally:
        lock.release()
    assert not (tmp_path / "out").exists()  # free again: made for the lock alone, and removed with it
