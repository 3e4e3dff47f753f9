"""Who may write into an output folder: one run at a time, or the shards of
one split side by side.

`OUT/.lock` carries POSIX record locks (fcntl). The kernel drops them when
their process ends, however it ends (kill -9 included), so a lock never
outlives its run: a waiting run goes on as soon as the holder is gone, with
nothing stale to guess about or clean up. (On NFS the server drops a crashed
client's locks when its lease runs out, about 90 s.) Byte ranges of the file
stand for what is locked:

    byte 0            the manifest: shared while a record is appended,
                      exclusive while shard parts are merged into one file
    byte 1            the gate, held for a moment while a shard checks in
    byte 2 + n        an n-way split is running (shared by its shards)
    SHARD_BASE + i    shard k of n, i = n(n-1)/2 + k (exclusive)
    bytes 2 to end    an unsharded run (exclusive)

So an unsharded run waits for every other run and every run waits for it;
shards of one split run together (their images are disjoint), the same shard
twice or a split of another size waits. A run plans its work (plan.py) only
once it holds its lock, so it sees the records of every run before it. The
file holds the latest holder's pid, host and command, which a waiting run
names; the last run to leave removes it (and OUT, if it made OUT and left
nothing in it).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: runs are not coordinated
    fcntl = None  # type: ignore[assignment]

from .outputs import LOCK

log = logging.getLogger("saliency")

MANIFEST_BYTE, GATE, SPLITS = 0, 1, 2
MAX_SPLIT = 1 << 20  # larger splits lock like unsharded runs
SHARD_BASE = SPLITS + MAX_SPLIT + 1
POLL_SECONDS = 0.2
_BUSY = (errno.EACCES, errno.EAGAIN)


class OutLock:
    """The locks of one process on one OUT (a process must not open the lock
    file twice: closing either descriptor drops all its POSIX locks)."""

    def __init__(self, out_dir: Path):
        self.out = Path(out_dir)
        self.path = self.out / LOCK
        self.fd: int | None = None
        self.created: list[Path] = []  # folders made for the lock file, deepest first
        self.supported = fcntl is not None
        self.held = False  # a run lock: the file cannot be removed under it

    # -- the run lock

    def acquire(self, shard: tuple[int, int] | None = None) -> None:
        """Wait until this run may write into OUT, naming the run it waits for."""
        told = None
        while self.supported:
            self._open()
            got = self._attempt(shard)
            if got is None:  # another shard is checking in this very moment
                time.sleep(0.01)
                continue
            if got:
                if self._same_file():
                    break
                self._close()  # the last holder removed the file meanwhile: lock the new one
                continue
            holder = self._holder()
            if holder != told:
                log.warning("%s is in use by another run (%s): waiting for it to finish (Ctrl-C stops waiting)",
                            self.out, holder)
                told = holder
            time.sleep(POLL_SECONDS)
        if told:
            log.info("%s is free: going on", self.out)
        self.held = self.supported
        self._write_holder()

    def _attempt(self, shard: tuple[int, int] | None) -> bool | None:
        """Take this run's locks if free: True, False (another run holds
        them), None (the gate is busy for an instant: try again)."""
        if shard is None or shard[1] >= MAX_SPLIT:
            return self._try(fcntl.LOCK_EX, SPLITS, 0)  # 0: to the end of the file, however far
        k, n = shard
        if not self._try(fcntl.LOCK_EX, GATE):
            return None
        try:
            mine = SHARD_BASE + n * (n - 1) // 2 + k
            if not self._try(fcntl.LOCK_EX, mine):
                return False
            # no split of another size is running: nobody holds the other split bytes
            ranges = [(SPLITS, n), (SPLITS + n + 1, MAX_SPLIT - n)]
            free = [r for r in ranges if self._try(fcntl.LOCK_EX, *r)]
            for start, length in free:
                self._unlock(start, length)
            if len(free) < len(ranges) or not self._try(fcntl.LOCK_SH, SPLITS + n):
                self._unlock(mine)
                return False
            return True
        finally:
            self._unlock(GATE)

    def release(self) -> None:
        """Drop every lock; the last run to leave removes the file, and the
        folders made for it when nothing else landed in them."""
        if self.fd is not None:
            if self.supported and self._try(fcntl.LOCK_EX, 0, 0) and self._same_file():
                try:
                    self.path.unlink(missing_ok=True)
                except OSError:  # OUT turned read-only: the next run takes the file as it is
                    pass
            self._close()
        self.held = False
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:
                break
        self.created = []

    # -- the manifest lock

    @contextmanager
    def manifest(self, exclusive: bool = False) -> Iterator[None]:
        """Appends share it; merging shard parts (which replaces manifest.jsonl
        and removes the parts) excludes them. Held for milliseconds, so a
        plain blocking wait."""
        while self.supported:
            self._open()
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, 1, MANIFEST_BYTE)
            except OSError as exc:
                self._unsupported(exc)
                break
            if self.held or self._same_file():
                break
            self._close()
        try:
            yield
        finally:
            if self.supported and self.fd is not None:
                self._unlock(MANIFEST_BYTE)

    # -- the file

    def _open(self) -> None:
        if self.fd is not None:
            return
        missing, folder = [], self.out
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        self.out.mkdir(parents=True, exist_ok=True)
        self.created += [f for f in missing if f not in self.created]
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _same_file(self) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
        except FileNotFoundError:
            return False

    def _try(self, kind: int, start: int, length: int = 1) -> bool:
        if not self.supported:
            return True
        try:
            fcntl.lockf(self.fd, kind | fcntl.LOCK_NB, length, start)
            return True
        except OSError as exc:
            if exc.errno in _BUSY:
                return False
            self._unsupported(exc)
            return True

    def _unlock(self, start: int, length: int = 1) -> None:
        if self.supported:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, length, start)

    def _unsupported(self, exc: OSError) -> None:
        """A file system without record locks (some network and FUSE mounts)."""
        self.supported = False
        log.warning("the file system of %s does not support file locks (%s): runs into it at the same time are "
                    "not coordinated, so start them one after the other", self.out, exc.strerror or exc)

    # -- who holds it

    def _write_holder(self) -> None:
        if self.fd is None:
            return
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": shlex.join(["saliency", *sys.argv[1:]])}
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, waiting runs just cannot name us
            pass

    def _holder(self) -> str:
        try:
            info = json.loads(os.pread(self.fd, 65536, 0))
            pid, host = int(info["pid"]), str(info["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return "a process that has not said who it is"
        if host == socket.gethostname() and not _alive(pid):
            return "another process"  # this holder left; a shard of the same split still runs
        return f"pid {pid} on {host}: {info.get('command', '?')}, since {info.get('since', '?')}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
