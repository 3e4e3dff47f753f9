"""Writing outputs: atomic files, a background thread pool, the manifest.

- Every file is written to `OUT/.tmp/` and renamed into place, so a killed
  run never leaves a half-written PNG or .npy under its final name.
- PNG encoding and .npy writing run on a thread pool (PIL and numpy release
  the GIL while encoding), so the device does not wait on the disk.
- `OUT/manifest.jsonl` gets one JSON line per processed image, written with a
  single append once all of that image's files are in place, in input order.
  It is append-only across runs: the last record of an input is the current one.
- A shard of a sharded run (`--shard K/N`, torchrun) appends to its own part,
  `manifest.shard-K-of-N.jsonl`; `merge_manifests` folds the parts into
  `manifest.jsonl` (the last shard to finish does it, or `saliency merge`).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger("saliency")

MANIFEST = "manifest.jsonl"
PART = "manifest.shard-{k}-of-{n}.jsonl"
_PART_RE = re.compile(r"manifest\.shard-(\d+)-of-(\d+)\.jsonl$")
TMP_DIR = ".tmp"
# zlib level 1 with the run-length strategy: on a 512x512 overlay it took 24 ms
# for 381 KiB, against 32 ms / 424 KiB for level 1's default strategy and
# 135 ms / 383 KiB for PIL's default level 6. Overlays of photos compress little.
PNG_COMPRESS_LEVEL = 1
PNG_STRATEGY = 3  # zlib Z_RLE
# memory that queued images (their photos for the overlays, their maps) may
# hold before the run waits for the writer: 24 queued 24-megapixel photos
# would otherwise hold 1.7 GiB
MAX_PENDING_BYTES = 512 * 2**20


def output_files(key: str, method: str, *, png: bool, npy: bool) -> dict[str, str]:
    """File names, relative to OUT, of one image's outputs for one method."""
    files = {}
    if png:
        files["png"] = f"{key}/{method}.png"
    if npy:
        files["npy"] = f"{key}/{method}.npy"
    return files


class Writer:
    def __init__(self, out_dir: Path, *, threads: int | None = None, manifest: str = MANIFEST,
                 on_record: Callable[[dict[str, Any]], None] | None = None,
                 max_pending_bytes: int = MAX_PENDING_BYTES):
        self.out = Path(out_dir)
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
        self._atomic(rel, lambda p: np.save(p, array, allow_pickle=False))

    def save_png(self, rel: str, image: Image.Image) -> None:
        self._atomic(rel, lambda p: image.save(p, format="PNG", compress_level=PNG_COMPRESS_LEVEL,
                                               compress_type=PNG_STRATEGY))

    # -- records

    def submit(self, record: dict[str, Any], jobs: list[Callable[[], None]] = (), nbytes: int = 0) -> None:
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
    def _run_jobs(record: dict[str, Any], jobs: list[Callable[[], None]]) -> dict[str, Any]:
        try:
            for job in jobs:
                job()
        except Exception as exc:  # disk full, permissions... the run goes on
            record["status"] = "error"
            record["error"] = f"writing outputs failed: {exc}"
        return record

    def _commit(self, block: bool) -> None:
        while self.pending and (block or self.pending[0][0].done()):
            future, nbytes = self.pending.popleft()
            self.pending_bytes -= nbytes
            self._append(future.result())
            block = block and self._full()

    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.manifest_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write of a whole line: readers never see half a record
        finally:
            os.close(fd)
        self.counts["ok" if record.get("status") == "ok" else "error"] += 1
        if record.get("status") != "ok":
            log.error("%s: %s", record.get("input"), record.get("error"))
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


def manifest_files(out_dir: Path) -> list[Path]:
    """manifest.jsonl first, then the shard parts (in shard order)."""
    out_dir = Path(out_dir)
    parts = sorted((Path(p) for p in glob.glob(str(out_dir / "manifest.shard-*-of-*.jsonl"))),
                   key=lambda p: tuple(int(g) for g in _PART_RE.search(p.name).groups()[::-1]))
    main = out_dir / MANIFEST
    return ([main] if main.exists() else []) + parts


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of one manifest file; unreadable lines (a run killed in
    mid-write on a filesystem without atomic appends) are skipped."""
    records = []
    with Path(path).open("rb") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                records.append(record)
    return records


def read_manifest(out_dir: Path) -> dict[str, dict[str, Any]]:
    """The last record per output key, over manifest.jsonl and shard parts."""
    return {r["key"]: r for path in manifest_files(out_dir) for r in read_records(path)}


def merge_manifests(out_dir: Path) -> int:
    """Fold shard parts into manifest.jsonl, keeping the last record per key
    (in key order), written atomically; the parts are removed. Returns the
    number of records."""
    out_dir = Path(out_dir)
    sources = manifest_files(out_dir)
    records = read_manifest(out_dir)
    tmp = out_dir / f".{MANIFEST}.{uuid.uuid4().hex}"
    with tmp.open("w", encoding="utf-8") as fh:
        for key in sorted(records):
            fh.write(json.dumps(records[key], ensure_ascii=False) + "\n")
    os.replace(tmp, out_dir / MANIFEST)
    for path in sources:
        if path.name != MANIFEST:
            path.unlink(missing_ok=True)
    return len(records)


def finish_shard(out_dir: Path, k: int, n: int) -> bool:
    """Mark shard k of n done; the shard that finds all n done merges.
    Returns True if this call merged."""
    out_dir = Path(out_dir)
    (out_dir / f"manifest.shard-{k}-of-{n}.done").touch()
    if not all((out_dir / f"manifest.shard-{i}-of-{n}.done").exists() for i in range(n)):
        return False
    lock = out_dir / "manifest.merge.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:  # another shard is merging
        return False
    try:
        os.close(fd)
        merge_manifests(out_dir)
        for i in range(n):
            (out_dir / f"manifest.shard-{i}-of-{n}.done").unlink(missing_ok=True)
    finally:
        lock.unlink(missing_ok=True)
    return True


def recorded_files(entry: Any) -> list[str]:
    """The file names of one method's `outputs` entry (a name or a list per kind)."""
    files: list[str] = []
    for value in (entry or {}).values():
        files.extend(value if isinstance(value, list) else [value])
    return files


def finished_methods(out_dir: Path, record: dict[str, Any] | None,
                     expected: dict[str, dict[str, str]]) -> set[str]:
    """Methods whose `expected` files and recorded files (a previous run
    wrote them and said so) are all still on disk."""
    if not record or record.get("status") != "ok":
        return set()
    recorded = record.get("outputs") or {}
    return {
        method for method, files in expected.items()
        if method in recorded
        and all((Path(out_dir) / rel).is_file() for rel in {*files.values(), *recorded_files(recorded[method])})
    }
