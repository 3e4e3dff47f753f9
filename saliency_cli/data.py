"""Finding images, decoding them in DataLoader workers, preprocessing, batching.

Each input gets a `key`: the relative path (POSIX, without suffix) under
which its outputs are written, `OUT/<key>/<method>.png`. Keys never contain
`..` or an absolute path, so no output can land outside OUT.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import PreprocessConfig
from .errors import InputError, SaliencyError
from .writer import TMP_DIR

log = logging.getLogger("saliency")

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


@dataclass(frozen=True)
class InputItem:
    path: str  # as given or found, for the manifest and messages
    key: str  # output location relative to OUT, without suffix


@dataclass
class Discovery:
    items: list[InputItem]
    skipped: list[str]  # files in folders that are not images by their suffix


# ------------------------------------------------------------------ discovery


def discover(args: Sequence[str], stdin: Iterable[str] | None = None, exclude: Path | None = None) -> Discovery:
    """Expand the command-line PATH arguments into a list of images.

    A folder is walked recursively in sorted order (following symlinks, each
    real folder once); `-` reads one path per line from stdin, in order. With
    one folder argument outputs mirror the tree inside it; with several
    arguments each output tree starts with the argument's own name.
    `exclude` (the output folder) is not walked: a rerun must not explain
    its own PNGs. A file named twice is explained once.
    """
    found: list[tuple[str, PurePosixPath]] = []
    skipped: list[str] = []
    several = len(args) > 1
    for arg in args:
        if arg == "-":
            lines = stdin if stdin is not None else sys.stdin
            for line in lines:
                path = line.rstrip("\r\n")
                if path.strip():
                    found.append((path, _relative_to_cwd(path)))
            continue
        root = Path(arg)
        if root.is_dir():
            prefix = PurePosixPath(_safe_name(root)) if several else PurePosixPath()
            for path in _walk(root, exclude):
                rel = PurePosixPath(*path.relative_to(root).parts)
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((str(path), prefix / rel))
                else:
                    skipped.append(str(path))
        elif root.exists():
            found.append((arg, PurePosixPath(root.name)))
        else:
            raise SaliencyError(f"no such file or folder: {arg!r}")
    return Discovery(_assign_keys(_once(found)), skipped)


def _walk(root: Path, exclude: Path | None = None) -> list[Path]:
    files: list[Path] = []
    seen: set[str] = set()
    skip = os.path.realpath(exclude) if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen or real == skip:  # a symlink loop, a second link to one folder, the output folder
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        files.extend(Path(dirpath) / name for name in filenames)
    return sorted(files, key=lambda p: p.relative_to(root).parts)


def _once(found: list[tuple[str, PurePosixPath]]) -> list[tuple[str, PurePosixPath]]:
    """The first mention of each path (made absolute and normalised: string
    work, no file-system calls per image); missing ones stay, to be reported
    when decoded."""
    seen: set[str] = set()
    kept = []
    for path, rel in found:
        absolute = os.path.abspath(path)
        if absolute not in seen:
            seen.add(absolute)
            kept.append((path, rel))
    return kept


def _safe_name(root: Path) -> str:
    name = root.resolve().name
    return name or "root"


def _relative_to_cwd(path: str) -> PurePosixPath:
    """A stdin path made relative and safe: `..` becomes `__`, roots vanish."""
    rel = os.path.relpath(os.path.abspath(path))
    parts = [("__" if p == ".." else p) for p in Path(rel).parts if p not in ("", ".", os.sep)]
    return PurePosixPath(*parts) if parts else PurePosixPath("input")


def _unreserved(rel: PurePosixPath) -> PurePosixPath:
    """Outputs of an input under a folder named .tmp go to _tmp/: OUT/.tmp is
    the writer's, emptied at the end of every run."""
    if rel.parts and rel.parts[0] == TMP_DIR:
        return PurePosixPath("_tmp", *rel.parts[1:])
    return rel


def _assign_keys(found: list[tuple[str, PurePosixPath]]) -> list[InputItem]:
    """Keys are paths without suffix; inputs that would share one (a.jpg next
    to a.png) keep their suffix instead, and any remaining clash gets -2, -3."""
    found = [(path, _unreserved(rel)) for path, rel in found]
    stems = [str(rel.with_suffix("")) if rel.suffix else str(rel) for _, rel in found]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    keys = [str(rel) if counts[stem] > 1 else stem for (_, rel), stem in zip(found, stems)]
    used: set[str] = set()
    items = []
    for (path, _), key in zip(found, keys):
        unique, n = key, 1
        while unique in used:
            n += 1
            unique = f"{key}-{n}"
        used.add(unique)
        items.append(InputItem(path, unique))
    return items


# ------------------------------------------------------------------ decoding


def load_image(path: str) -> Image.Image:
    """Decode as displayed (EXIF orientation applied) and as 8-bit RGB."""
    try:
        with warnings.catch_warnings():  # PIL's warnings (big image, odd palette) would print raw
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
                return to_rgb(_upright(img))
    except FileNotFoundError:
        raise InputError("file not found") from None
    except IsADirectoryError:
        raise InputError("is a folder, not an image") from None
    except PermissionError:
        raise InputError("permission denied") from None
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise InputError(f"image too large to decode safely (more than {limit:,} pixels: "
                         "a possible decompression bomb)") from None
    except UnidentifiedImageError:
        size = os.path.getsize(path)
        raise InputError("empty file" if size == 0 else "not an image, or an unsupported format") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise InputError(f"cannot decode image: {exc}") from None


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a photo with damaged EXIF stays as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16/32-bit greyscale: PIL's own conversion clips at 255 (a white image)
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    return img if img.mode == "RGB" else img.convert("RGB")


def preprocess(img: Image.Image, cfg: PreprocessConfig) -> tuple[torch.Tensor, tuple[float, ...]]:
    """Classifier input: uint8 [3,H,W] and the box (left, top, right,
    bottom) of the photo, in its own pixels, that the input shows."""
    width, height = img.size
    out_h, out_w = cfg.size
    if cfg.resize == "stretch":
        box = (0.0, 0.0, float(width), float(height))
        img = img.resize((out_w, out_h), Image.BILINEAR)
    else:  # center-crop: the shorter side scaled to size/crop_fraction, then the middle
        scale = (min(out_h, out_w) / cfg.crop_fraction) / min(width, height)
        crop_w, crop_h = out_w / scale, out_h / scale
        left, top = (width - crop_w) / 2, (height - crop_h) / 2
        box = (left, top, left + crop_w, top + crop_h)
        img = img.resize((out_w, out_h), Image.BILINEAR, box=box)
    return _to_tensor(img), box


def preprocess_detection(img: Image.Image, cfg: PreprocessConfig) -> tuple[torch.Tensor, tuple[float, ...]]:
    """Detector input: the whole photo as uint8 [3,h,w], its longer side
    capped at `max_size` (aspect kept), and the box of the whole photo."""
    width, height = img.size
    box = (0.0, 0.0, float(width), float(height))
    if cfg.max_size and max(width, height) > cfg.max_size:
        scale = cfg.max_size / max(width, height)
        img = img.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
    return _to_tensor(img), box


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


# ------------------------------------------------------------------ dataset and batches


class ImageDataset(torch.utils.data.Dataset):
    """Decodes in the worker; a bad file becomes an item with `error` set, so
    one corrupt image never stops the DataLoader."""

    def __init__(self, items: Sequence[InputItem], cfg: PreprocessConfig, keep_original: bool,
                 detection: bool = False):
        self.items = items
        self.cfg = cfg
        self.keep_original = keep_original
        self.prepare = preprocess_detection if detection else preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start = time.perf_counter()
        item = {"index": index, "error": None, "input": None, "original": None}
        try:
            img = load_image(self.items[index].path)
            item["input"], item["box"] = self.prepare(img, self.cfg)
            item["size"] = img.size
            if self.keep_original:
                item["original"] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
        except InputError as exc:
            item["error"] = str(exc)
        item["decode_seconds"] = time.perf_counter() - start
        return item


@dataclass
class Batch:
    ok: list[dict[str, Any]]  # decoded items, in order
    failed: list[dict[str, Any]]  # items whose `error` is set
    inputs: torch.Tensor | list[torch.Tensor] | None  # uint8 [B,3,H,W], or a list when sizes differ

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True), which cannot see into a
        dataclass: without it the non_blocking copies to the GPU would block."""
        x = self.inputs
        if isinstance(x, torch.Tensor):
            x = x.pin_memory()
        elif x is not None:
            x = [t.pin_memory() for t in x]
        return Batch(self.ok, self.failed, x)


def collate(items: list[dict[str, Any]]) -> Batch:
    ok = [it for it in items if it["error"] is None]
    failed = [it for it in items if it["error"] is not None]
    inputs = [it["input"] for it in ok]
    if inputs and all(t.shape == inputs[0].shape for t in inputs):
        return Batch(ok, failed, torch.stack(inputs))
    return Batch(ok, failed, inputs or None)


def default_workers(device_type: str) -> int:
    """Decoding processes when `runtime.workers` is null.

    With a GPU the CPU is free to decode while the model runs: up to 4
    workers. On the CPU, torch's threads already take the cores and workers
    would compete with them (on 2 cores, 2 workers made `saliency explain`
    slower than decoding in the main process: `python benchmarks/workers.py`,
    table in BENCHMARKS.md), so only cores that torch leaves idle get a worker."""
    cores = os.cpu_count() or 1
    if device_type == "cuda":
        return min(4, cores)
    return min(4, max(0, cores - torch.get_num_threads()))


def make_loader(dataset: ImageDataset, *, batch_size: int, workers: int | None,
                device_type: str) -> torch.utils.data.DataLoader:
    if workers is None:
        workers = default_workers(device_type)
    workers = min(workers, len(dataset))
    pin_memory = device_type == "cuda"
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        # each worker keeps 2 batches ready (PyTorch's default): 8 batches ahead of the device with
        # 4 workers, all in shared memory, which a container often limits to 64 MB
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )


def normalize(inputs: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """uint8 [B,3,H,W] on the device -> float, (x/255 - mean) / std. Done on
    the device so only a quarter of the bytes cross the bus."""
    mean = torch.tensor(cfg.mean, device=inputs.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=inputs.device).view(1, 3, 1, 1)
    return (inputs.float() / 255.0 - mean) / std
