"""The manifest record: one typed object per processed image, serialised here
and nowhere else, and the manifest files that hold them.

A line of `OUT/manifest.jsonl` is `Record.to_json()`:

    {"schema_version": 1, "input": "photos/cat.jpg", "key": "cat", "status": "ok",
     "size": [451, 300], <the task's fields: predictions and target, or detections>,
     "outputs": {"grad-cam": {"png": "cat/grad-cam.png", "npy": "cat/grad-cam.npy",
                              "shape": [224, 224], "dtype": "float32"}},
     "seconds": {"decode": 0.007, "grad-cam": 0.02}, "settings": {"grad-cam": "3f9c..."},
     "grid": "cat/grid.png"}

A method's `png` is one name, or a list of names when its task writes one
PNG per detection; `shape` and `dtype` describe its `.npy` (since version 2;
`saliency verify` checks them). Records of versions 0 (before
`schema_version` existed) and 1 have the same fields but those two, and are
read alike. The manifest is append-only
across runs: the last record of a key is the current one.
"""

from __future__ import annotations

import glob
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .locking import OutLock
from .outputs import MANIFEST, MERGE_LOCK, PART_GLOB, PART_RE, SHARD_DONE

T = TypeVar("T")

SCHEMA_VERSION = 2


@dataclass
class Files:
    """One method's files for one image, relative to OUT."""

    npy: str | None = None
    pngs: list[str] = field(default_factory=list)
    many_pngs: bool = False  # `png` is a list in JSON (one PNG per detection), even of one or none
    shape: list[int] | None = None  # the .npy's array (None in records before version 2)
    dtype: str | None = None

    def all(self) -> list[str]:
        return [*self.pngs, *([self.npy] if self.npy else [])]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.many_pngs:
            data["png"] = list(self.pngs)
        elif self.pngs:
            data["png"] = self.pngs[0]
        if self.npy:
            data["npy"] = self.npy
        if self.shape is not None:
            data["shape"], data["dtype"] = list(self.shape), self.dtype
        return data

    def describe(self, array: Any) -> None:
        """Record the shape and dtype of the array saved as `npy`."""
        self.shape, self.dtype = list(array.shape), str(array.dtype)

    @classmethod
    def from_json(cls, data: Any) -> Files:
        data = data if isinstance(data, dict) else {}
        png = data.get("png")
        many = isinstance(png, list)
        pngs = [str(p) for p in png] if many else ([str(png)] if png else [])
        npy, shape = data.get("npy"), data.get("shape")
        return cls(npy=str(npy) if npy else None, pngs=pngs, many_pngs=many,
                   shape=[int(s) for s in shape] if isinstance(shape, list) else None,
                   dtype=str(data["dtype"]) if isinstance(shape, list) and data.get("dtype") else None)


_CORE = ("schema_version", "input", "key", "status", "error", "size", "png_size", "outputs", "seconds", "settings",
         "grid")


@dataclass
class Record:
    input: str
    key: str
    status: str = "ok"  # ok | error
    error: str | None = None
    size: list[int] | None = None  # the photo's (width, height)
    png_size: list[int] | None = None  # its PNGs' (width, height) where smaller (output.png_max_side)
    fields: dict[str, Any] = field(default_factory=dict)  # the task's own: predictions, target, detections
    outputs: dict[str, Files] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)  # settings digest per method
    grid: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def files(self) -> list[str]:
        """Every file the record names."""
        return [f for files in self.outputs.values() for f in files.all()] + ([self.grid] if self.grid else [])

    def fail(self, error: str) -> None:
        self.status, self.error = "error", error

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema_version": self.schema_version, "input": self.input, "key": self.key,
                                "status": self.status}
        if self.error is not None:
            data["error"] = self.error
        if self.size is not None:
            data["size"] = list(self.size)
        if self.png_size is not None:
            data["png_size"] = list(self.png_size)
        data.update(self.fields)
        if self.outputs:
            data["outputs"] = {name: files.to_json() for name, files in self.outputs.items()}
        for name in ("seconds", "settings"):
            if getattr(self, name):
                data[name] = dict(getattr(self, name))
        if self.grid is not None:
            data["grid"] = self.grid
        return data

    def to_line(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, data: Any) -> Record | None:
        """A record from one parsed manifest line; None when it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("key"), str):
            return None
        return cls(
            input=str(data.get("input", "")), key=data["key"], status=str(data.get("status", "error")),
            error=data.get("error"), size=data.get("size"), png_size=data.get("png_size"),
            fields={k: v for k, v in data.items() if k not in _CORE},
            outputs={str(name): Files.from_json(files) for name, files in (data.get("outputs") or {}).items()},
            seconds=dict(data.get("seconds") or {}), settings=dict(data.get("settings") or {}),
            grid=data.get("grid"), schema_version=int(data.get("schema_version", 0)),
        )


# ------------------------------------------------------------------ manifest files


def manifest_files(out_dir: Path) -> list[Path]:
    """manifest.jsonl first, then the shard parts (in shard order)."""
    out_dir = Path(out_dir)
    parts = sorted((Path(p) for p in glob.glob(str(out_dir / PART_GLOB))),
                   key=lambda p: tuple(int(g) for g in PART_RE.search(p.name).groups()[::-1]))
    main = out_dir / MANIFEST
    return ([main] if main.exists() else []) + parts


def read_jsonl(path: Path, parse: Callable[[Any], T | None]) -> Iterator[T]:
    """The records of a JSON-lines file, each parsed by `parse`; unreadable
    lines (a run killed in mid-write on a filesystem without atomic appends)
    and those `parse` rejects (None) are skipped."""
    with Path(path).open("rb") as fh:
        for line in fh:
            try:
                record = parse(json.loads(line))
            except ValueError:
                continue
            if record is not None:
                yield record


def read_records(path: Path) -> list[Record]:
    """Records of one manifest file (see read_jsonl)."""
    return list(read_jsonl(path, Record.from_json))


def read_manifest(out_dir: Path) -> dict[str, Record]:
    """The current (last) record per key, over manifest.jsonl and shard parts."""
    return {r.key: r for path in manifest_files(out_dir) for r in read_records(path)}


def merge_manifests(out_dir: Path, lock: OutLock | None = None) -> int:
    """Fold shard parts into manifest.jsonl, keeping the last record per key
    (in key order), written atomically; the parts are removed. Returns the
    number of records. `lock`: the calling run's lock on OUT (else one is
    taken here); no record is appended meanwhile."""
    own = lock is None
    lock = OutLock(out_dir) if own else lock
    try:
        with lock.manifest(exclusive=True):
            return _merge(Path(out_dir))
    finally:
        if own:
            lock.release()


def _merge(out_dir: Path) -> int:
    sources = manifest_files(out_dir)
    records = read_manifest(out_dir)
    tmp = out_dir / f".{MANIFEST}.{uuid.uuid4().hex}"
    with tmp.open("w", encoding="utf-8") as fh:
        for key in sorted(records):
            fh.write(records[key].to_line())
    os.replace(tmp, out_dir / MANIFEST)
    for path in sources:
        if path.name != MANIFEST:
            path.unlink(missing_ok=True)
    return len(records)


def finish_shard(out_dir: Path, k: int, n: int, lock: OutLock | None = None) -> bool:
    """Mark shard k of n done; the shard that finds all n done merges.
    Returns True if this call merged."""
    out_dir = Path(out_dir)
    (out_dir / SHARD_DONE.format(k=k, n=n)).touch()
    if not all((out_dir / SHARD_DONE.format(k=i, n=n)).exists() for i in range(n)):
        return False
    merging = out_dir / MERGE_LOCK
    try:
        fd = os.open(merging, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:  # another shard is merging
        return False
    try:
        os.close(fd)
        merge_manifests(out_dir, lock)
        for i in range(n):
            (out_dir / SHARD_DONE.format(k=i, n=n)).unlink(missing_ok=True)
    finally:
        merging.unlink(missing_ok=True)
    return True
