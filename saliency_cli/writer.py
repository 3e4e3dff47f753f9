"""Writing outputs: atomic files, a background thread pool, the manifest.

- Every file is written to `OUT/.tmp/<manifest>/` and renamed into place, so
  a killed run never leaves a half-written PNG or .npy under its final name.
- PNG encoding and .npy writing run on a thread pool (PIL and numpy release
  the GIL while encoding), so the device does not wait on the disk.
- The manifest gets one line per processed image (`Record.to_line()`),
  written with a single append once all of that image's files are in place,
  in input order. A shard of a sharded run appends to its own part (see
  records.py for how parts are merged).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from . import png
from .outputs import MANIFEST, TMP_DIR
from .profile import Profile
from .records import Record

log = logging.getLogger("saliency")

# memory that queued images (their photos for the overlays, their maps) may
# hold before the run waits for the writer: 24 queued 24-megapixel photos
# would otherwise hold 1.7 GiB
MAX_PENDING_BYTES = 512 * 2**20


class Writer:
    def __init__(self, out_dir: Path, *, threads: int | None = None, manifest: str = MANIFEST,
                 on_record: Callable[[Record], None] | None = None,
                 max_pending_bytes: int = MAX_PENDING_BYTES, png_compression: png.Compression = "fast",
                 profile: Profile | None = None):
        self.out = Path(out_dir)
        self.png_compression = png_compression
        self.profile = profile or Profile()
        self.out.mkdir(parents=True, exist_ok=True)
        # each process its own temporary folder: shards share OUT; a killed run's leftovers go
        self.tmp = self.out / TMP_DIR / manifest.removesuffix(".jsonl")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        threads = threads or min(8, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="saliency-writer")
        # queued images hold their photo and maps: bounded in number and in bytes
        self.max_pending, self.max_pending_bytes = 4 * threads + 16, max_pending_bytes
        self.pending: deque[tuple[Future, int]] = deque()
        self.pending_bytes = 0
        self.manifest_path = self.out / manifest
        self.on_record = on_record
        self.counts = {"ok": 0, "error": 0}

    # -- files

    def _atomic(self, rel: str, write: Callable[[Path], None]) -> None:
        final = self.out / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"{uuid.uuid4().hex}{final.suffix}"
        try:
            write(tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def save_npy(self, rel: str, array: np.ndarray) -> None:
        with self.profile.timed("write"):
            self._atomic(rel, lambda p: np.save(p, array, allow_pickle=False))

    def save_png(self, rel: str, image: np.ndarray | Image.Image) -> None:
        """An RGB image (uint8 [h,w,3] or PIL) as OUT/<rel> (see png.py)."""
        with self.profile.timed("encode"):
            data = png.encode(image, self.png_compression)
        with self.profile.timed("write"):
            self._atomic(rel, lambda p: p.write_bytes(data))

    # -- records

    def submit(self, record: Record, jobs: list[Callable[[], None]] = (), nbytes: int = 0) -> None:
        """Run an image's file jobs in the background; its manifest record is
        appended once they all finished (status 'error' if one failed).
        `nbytes`: memory the jobs hold until they are done (photo, maps);
        the caller waits while too much is queued."""
        self.pending.append((self.pool.submit(self._run_jobs, record, list(jobs)), nbytes))
        self.pending_bytes += nbytes
        self._commit(block=self._full())

    def _full(self) -> bool:
        return len(self.pending) > self.max_pending or (
            len(self.pending) > 1 and self.pending_bytes > self.max_pending_bytes)

    @staticmethod
    def _run_jobs(record: Record, jobs: list[Callable[[], None]]) -> Record:
        try:
            for job in jobs:
                job()
        except Exception as exc:  # disk full, permissions... the run goes on
            record.fail(f"writing outputs failed: {exc}")
        return record

    def _commit(self, block: bool) -> None:
        while self.pending and (block or self.pending[0][0].done()):
            future, nbytes = self.pending.popleft()
            self.pending_bytes -= nbytes
            if not future.done():  # the run waits for the writer: idle for the model
                with self.profile.timed("idle"):
                    future.result()
            self._append(future.result())
            block = block and self._full()

    def _append(self, record: Record) -> None:
        line = record.to_line().encode("utf-8")
        with self.profile.timed("write"):
            fd = os.open(self.manifest_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)  # one write of a whole line: readers never see half a record
            finally:
                os.close(fd)
        self.counts["ok" if record.ok else "error"] += 1
        if not record.ok:
            log.error("%s: %s", record.input, record.error)
        if self.on_record is not None:
            self.on_record(record)

    def close(self) -> None:
        """Finish the queued work and append its records."""
        self.pool.shutdown(wait=True)
        stopped = None
        while self.pending:
            try:
                self._append(self.pending.popleft()[0].result())
            except KeyboardInterrupt as exc:  # raised by on_record after the line was written: flush the rest
                stopped = stopped or exc
        shutil.rmtree(self.tmp, ignore_errors=True)
        try:
            self.tmp.parent.rmdir()  # OUT/.tmp, once no shard uses it
        except OSError:
            pass
        if stopped is not None:
            raise stopped
