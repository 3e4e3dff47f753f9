"""Do the outputs load? Cheap checks for resume, thorough ones for `saliency verify`.

A machine that crashes (power, kernel panic: not a killed process) between
a file's rename and its data reaching the disk can leave an empty or
truncated file under its final name, listed in the manifest as done. Resume
(plan.py) counts a file only when `quick_problem` finds none, from its size
and header, without decoding: an `.npy` header parses and the file is as
long as that header says (and holds the recorded shape and dtype); a PNG
starts with its signature and IHDR chunk and ends with its IEND chunk.
`verify_folder` adds a full decode of every PNG, at the size it was drawn (png_size, else size).
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from .records import read_manifest
from .render import open_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def npy_problem(path: Path, shape: list[int] | None = None, dtype: str | None = None) -> str | None:
    """What keeps an .npy from loading as recorded (None: nothing), from its header and size."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return "empty file"
            try:
                version = np.lib.format.read_magic(fh)
                found_shape, _, found_dtype = _NPY_HEADERS[version](fh)
            except (ValueError, KeyError, SyntaxError):
                return "not an .npy file (damaged header)"
            expected = fh.tell() + math.prod(found_shape) * found_dtype.itemsize
    except OSError as exc:
        return _os_problem(exc)
    if size != expected:
        return f"truncated: {size} of {expected} bytes" if size < expected else f"{size - expected} bytes too long"
    if shape is not None and list(found_shape) != list(shape):
        return f"shape {list(found_shape)}, recorded {list(shape)}"
    if dtype is not None and found_dtype != np.dtype(dtype):
        return f"dtype {found_dtype}, recorded {dtype}"
    return None


def png_problem(path: Path, size: list[int] | None = None) -> str | None:
    """What keeps a PNG from loading (None: nothing), from its first and last bytes;
    `size`: the (width, height) it must have."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)  # signature, IHDR's length and type, width, height
            length = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, length - len(PNG_END)))
            tail = fh.read()
    except OSError as exc:
        return _os_problem(exc)
    if length == 0:
        return "empty file"
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return "not a PNG file (damaged header)"
    if tail != PNG_END:
        return "truncated: no IEND chunk at the end"
    width, height = struct.unpack(">II", head[16:24])
    if size is not None and [width, height] != list(size):
        return f"{width}x{height} pixels, recorded {size[0]}x{size[1]}"
    return None


def quick_problem(path: Path, shape: list[int] | None = None, dtype: str | None = None) -> str | None:
    """Resume's check of one output: size and header only."""
    if path.suffix == ".npy":
        return npy_problem(path, shape, dtype)
    if path.suffix == ".png":
        return png_problem(path)
    return None if path.is_file() else "missing"


def decode_problem(path: Path, size: list[int] | None = None) -> str | None:
    """`png_problem`, then a full decode."""
    problem = png_problem(path, size)
    if problem is not None:
        return problem
    try:
        with open_image(path) as image:
            image.load()
    except Exception as exc:  # zlib, CRC, truncation: whatever PIL finds
        return f"does not decode: {exc}"
    return None


def _os_problem(exc: OSError) -> str:
    return "missing" if isinstance(exc, FileNotFoundError) else f"unreadable: {exc.strerror or exc}"


# ------------------------------------------------------------------ saliency verify


@dataclass
class Verification:
    images: int = 0  # current records with status ok
    failed: int = 0  # current records of inputs that failed (no files to check)
    files: int = 0
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (key, file, problem)


def verify_folder(out_dir: Path, threads: int | None = None) -> Verification:
    """Check every file of every current record: it exists, an .npy has its
    recorded shape and dtype and its full length, a PNG decodes whole at the
    size it was drawn at (a grid: decodes). PNGs are decoded on a thread pool."""
    out_dir = Path(out_dir)
    result = Verification()
    checks: list[tuple[str, str, Callable[[], str | None]]] = []
    for key, record in sorted(read_manifest(out_dir).items()):
        if not record.ok:
            result.failed += 1
            continue
        result.images += 1
        for files in record.outputs.values():
            if files.npy:
                checks.append((key, files.npy, partial(npy_problem, out_dir / files.npy, files.shape, files.dtype)))
            shown = record.png_size or record.size
            checks += [(key, png, partial(decode_problem, out_dir / png, shown)) for png in files.pngs]
        if record.grid:
            checks.append((key, record.grid, partial(decode_problem, out_dir / record.grid)))
    result.files = len(checks)
    with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
        found = list(pool.map(lambda check: check[2](), checks))
    result.problems = [(key, rel, problem) for (key, rel, _), problem in zip(checks, found) if problem]
    return result
