"""Writing outputs: atomic files, a background thread pool, the manifest.

- Every file is written to `OUT/.tmp/<manifest>@<pid>/` and renamed into place, so
  a killed run never leaves a half-written PNG or .npy under its final name.
- Rendering, PNG encoding and .npy writing run on a thread pool, so the
  device does not wait on the disk. (Pillow's decoding and resizing and
  numpy's larger loops release the GIL; of the PNG encoders, fpng holds it,
  so the run picks one by where the writer's threads run: png.py.) With the
  model on the CPU the same threads decode the batches between the model's
  (loading.ThreadedLoader).
- The manifest gets one line per processed image (`Record.to_line()`),
  written with a single append once all of that image's files are in place,
  in input order. A shard of a sharded run appends to its own part (see
  records.py for how parts are merged). A short append (a full disk) is cut
  back, so the manifest never holds half a record.
- A full disk, a quota or a read-only mount (errors.OUT_OF_SPACE) stops the
  writing at the first such error: the image being written and those queued
  after it get no record (a rerun redoes them); `full` says why.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from PIL import Image

from . import png
from .errors import out_of_space
from .locking import OutLock
from .outputs import MANIFEST, TMP_DIR, write_atomic
from .profile import Profile
from .records import Record

log = logging.getLogger("saliency")

# memory that queued images (their photos for the overlays, their maps) may
# hold before the run waits for the writer: 24 queued 24-megapixel photos
# would otherwise hold 1.7 GiB
MAX_PENDING_BYTES = 512 * 2**20


def default_threads(device_type: str) -> int:
    """Writer threads (rendering, PNG encoding, files) for a model on `device_type`.

    With a GPU the CPU's cores are free for the host's work: up to 8. On the
    CPU, where the batches decode on threads of the main process, the run
    gives the writer one thread per core instead and decodes on them too
    (pipeline.py, loading.ThreadedLoader): its work then waits while the model
    runs. Otherwise (worker processes decode) the writer shares the cores
    with torch's threads, and its work (3-4 core-ms per image and method on
    0.25-megapixel photos, BENCHMARKS.md) is a small share of the model's,
    so it gets a quarter of the cores, at least one."""
    cores = os.cpu_count() or 1
    return min(8, cores) if device_type == "cuda" else max(1, min(8, cores // 4))


class Writer:
    def __init__(self, out_dir: Path, *, threads: int | None = None, manifest: str = MANIFEST,
                 on_record: Callable[[Record], None] | None = None,
                 max_pending_bytes: int = MAX_PENDING_BYTES, lock: OutLock | None = None,
                 png_encoder: png.Encoder | png.Compression = "fast", profile: Profile | None = None):
        self.out = Path(out_dir)
        self.png_encoder = png.named(png_encoder)
        log.debug("PNGs are encoded by %s", self.png_encoder)
        self.profile = profile or Profile()
        self.out.mkdir(parents=True, exist_ok=True)
        # a temporary folder per process, named after its manifest. The lock on OUT
        # (locking.py) admits one run per manifest at a time, so the holder clears
        # what killed runs of its manifest left; where the file system has no locks,
        # runs side by side at least never touch each other's files
        stem = manifest.removesuffix(".jsonl")
        if lock is None or lock.held:
            for old in (self.out / TMP_DIR).glob(f"{stem}@*"):
                shutil.rmtree(old, ignore_errors=True)
        self.tmp = self.out / TMP_DIR / f"{stem}@{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        threads = threads or default_threads("cuda")
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="saliency-writer")
        # queued images hold their photo and maps: bounded in number and in bytes
        self.max_pending, self.max_pending_bytes = 4 * threads + 16, max_pending_bytes
        self.pending: deque[tuple[Future, int, Sequence[str]]] = deque()
        self.pending_bytes = 0
        self.manifest_path = self.out / manifest
        self.lock = lock  # the run's lock on OUT: appends share its manifest lock
        self.tail_checked = False
        self.on_record = on_record
        self.counts = {"ok": 0, "error": 0}
        self.full: OSError | None = None  # the first out-of-space error: nothing more is written

    # -- files

    def _atomic(self, rel: str, write: Callable[[Path], None]) -> None:
        """OUT/<rel> written whole or not at all, through OUT/.tmp (outputs.write_atomic)."""
        write_atomic(self.out / rel, self.tmp, write)

    def save_npy(self, rel: str, array: np.ndarray) -> None:
        # serialised in memory, then one write: numpy's own file writer reports a full
        # disk as "N requested and M written", without the errno that says why
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        with self.profile.timed("write"):
            self._atomic(rel, lambda p: p.write_bytes(buffer.getbuffer()))

    def save_png(self, rel: str, image: np.ndarray | Image.Image) -> None:
        """An RGB image (uint8 [h,w,3] or PIL) as OUT/<rel> (see png.py)."""
        with self.profile.timed("encode"):
            data = png.encode(image, self.png_encoder)
        with self.profile.timed("write"):
            self._atomic(rel, lambda p: p.write_bytes(data))

    # -- records

    def submit(self, record: Record, jobs: list[Callable[[], None]] = (), nbytes: int = 0,
               replaces: Sequence[str] = ()) -> None:
        """Run an image's file jobs in the background; its manifest record is
        appended once they all finished (status 'error' if one failed).
        `nbytes`: memory the jobs hold until they are done (photo, maps);
        the caller waits while too much is queued. `replaces`: files of the
        image's previous record that this one redoes; those it no longer
        names (D-RISE with fewer detections) are removed once it is in.
        Once OUT is full, nothing more is queued."""
        if self.full is not None:
            return
        self.pending.append((self.pool.submit(self._run_jobs, record, list(jobs)), nbytes, replaces))
        self.pending_bytes += nbytes
        self._commit(block=self._full())

    def _full(self) -> bool:
        return len(self.pending) > self.max_pending or (
            len(self.pending) > 1 and self.pending_bytes > self.max_pending_bytes)

    def _run_jobs(self, record: Record, jobs: list[Callable[[], None]]) -> Record | None:
        """The image's record, or None when OUT is full (before or during its jobs)."""
        if self.full is not None:
            return None
        try:
            for job in jobs:
                job()
        except Exception as exc:
            if out_of_space(exc):  # every later write would fail too
                self.full = self.full or exc
                return None
            record.fail(f"writing outputs failed: {exc}")  # permissions, a bad path... the run goes on
        return record

    def _commit(self, block: bool) -> None:
        while self.pending and (block or self.pending[0][0].done()):
            future, nbytes, replaces = self.pending.popleft()
            self.pending_bytes -= nbytes
            if not future.done():  # the run waits for the writer: idle for the model
                with self.profile.timed("idle"):
                    future.result()
            self._append(future.result(), replaces)
            block = block and self._full()

    def _append(self, record: Record | None, replaces: Sequence[str] = ()) -> None:
        if record is None:
            return
        try:
            with self.profile.timed("write"):
                self._write_line(record.to_line().encode("utf-8"))
        except OSError as exc:
            if not out_of_space(exc):
                raise
            self.full = self.full or exc  # no record: the next run redoes this image
            return
        self.counts["ok" if record.ok else "error"] += 1
        if not record.ok:
            log.error("%s: %s", record.input, record.error)
        elif replaces:
            for rel in set(replaces) - set(record.files()):
                try:
                    (self.out / rel).unlink(missing_ok=True)
                except OSError:  # left as it is: no record names it
                    pass
        if self.on_record is not None:
            self.on_record(record)

    def _write_line(self, line: bytes) -> None:
        """One write of a whole line: readers never see half a record. A
        short write (a full disk) is cut back; a torn last line left by a
        crash is ended first, so it cannot swallow this record."""
        with self.lock.manifest() if self.lock else nullcontext():
            fd = os.open(self.manifest_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                end = os.fstat(fd).st_size
                if not self.tail_checked:
                    self.tail_checked = True
                    if end and os.pread(fd, 1, end - 1) != b"\n":
                        line = b"\n" + line
                if os.write(fd, line) < len(line):
                    os.ftruncate(fd, end)
                    self.tail_checked = False
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.manifest_path))
            finally:
                os.close(fd)

    def close(self) -> None:
        """Finish the queued work and append its records."""
        self.pool.shutdown(wait=True)
        stopped = None
        while self.pending:
            future, _, replaces = self.pending.popleft()
            try:
                self._append(future.result(), replaces)
            except KeyboardInterrupt as exc:  # raised by on_record after the line was written: flush the rest
                stopped = stopped or exc
        shutil.rmtree(self.tmp, ignore_errors=True)
        try:
            self.tmp.parent.rmdir()  # OUT/.tmp, once no shard uses it
        except OSError:
            pass
        if stopped is not None:
            raise stopped
