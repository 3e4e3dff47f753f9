"""Decoding images in DataLoader workers, preprocessing, batching (finding
them is discovery.py's)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from . import device_decode, png
from .discovery import InputItem
from .errors import InputError
from .render import open_image, pillow_quiet, shown_size

if TYPE_CHECKING:  # types only: the config imports the tasks, which use this module
    from .config import PreprocessConfig

log = logging.getLogger("saliency")

# ------------------------------------------------------------------ decoding


def load_image(path: str) -> Image.Image:
    """Decode as displayed (EXIF orientation applied) and as 8-bit RGB."""
    return decode_photo(path)[0]


def decode_photo(path: str) -> tuple[Image.Image, np.ndarray | None]:
    """load_image's image, and its pixels (uint8 [h,w,3]) where they came
    first, from libpng (a plain PNG: _plain_png)."""
    try:
        pixels = _plain_png(path)
        if pixels is not None:
            return Image.fromarray(pixels, "RGB"), pixels
        with pillow_quiet():  # PIL's warnings (big image, odd palette) would print raw
            with open_image(path) as img:
                img.load()
                return to_rgb(_upright(img)), None
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


def _plain_png(path: str) -> np.ndarray | None:
    """A plain PNG photo's pixels by png.decode_plain (most photos stored as
    PNGs: the same pixels as Pillow's, in a third to two thirds of the time),
    else None: Pillow decodes every other file."""
    with open(path, "rb") as f:
        if f.read(8) != png.SIGNATURE:
            return None
        f.seek(0)
        return png.decode_plain(f.read(), Image.MAX_IMAGE_PIXELS)


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, in place: the photo was just decoded, and a
    copy of a 24-megapixel photo costs 18 ms. A photo with damaged EXIF
    stays as stored."""
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:
        pass
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16/32-bit greyscale: PIL's own conversion clips at 255 (a white image)
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    return img if img.mode == "RGB" else img.convert("RGB")


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
             "lanczos": Image.LANCZOS}


def preprocess(img: Image.Image, cfg: PreprocessConfig) -> tuple[torch.Tensor, tuple[float, ...]]:
    """Classifier input: uint8 [3,H,W] and the box (left, top, right,
    bottom) of the photo, in its own pixels, that the input shows."""
    width, height = img.size
    out_h, out_w = cfg.size
    resample = _RESAMPLE[cfg.interpolation or "bilinear"]
    if cfg.resize == "stretch":
        box = (0.0, 0.0, float(width), float(height))
        img = img.resize((out_w, out_h), resample)
    else:  # center-crop: the shorter side scaled to size/crop_fraction, then the middle
        scale = (min(out_h, out_w) / cfg.crop_fraction) / min(width, height)
        crop_w, crop_h = out_w / scale, out_h / scale
        left, top = (width - crop_w) / 2, (height - crop_h) / 2
        box = (left, top, left + crop_w, top + crop_h)
        img = img.resize((out_w, out_h), resample, box=box)
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
    one corrupt image never stops the DataLoader.

    With a `device`, JPEGs are only read in the worker and decoded on that
    device by `finish` (see device_decode.py)."""

    def __init__(self, items: Sequence[InputItem], cfg: PreprocessConfig, keep_original: bool,
                 detection: bool = False, max_side: int | None = None, device: torch.device | None = None):
        self.items = items
        self.cfg = cfg
        self.keep_original = keep_original
        self.max_side = max_side  # the photo is kept at most this large (output.png_max_side)
        self.detection = detection
        self.device = device

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start = time.perf_counter()
        item = {"index": index, "error": None, "input": None, "original": None}
        raw = device_decode.read_jpeg(self.items[index].path) if self.device is not None else None
        if raw is not None:
            item.update(raw)
        else:
            self._decode(item)
        item["decode_seconds"] = time.perf_counter() - start
        return item

    def _decode(self, item: dict[str, Any]) -> None:
        """The CPU path: decode, preprocess and keep the photo, or set `error`."""
        try:
            img, pixels = decode_photo(self.items[item["index"]].path)
            prepare = preprocess_detection if self.detection else preprocess
            item["input"], item["box"] = prepare(img, self.cfg)
            item["size"] = img.size
            if self.keep_original:
                item["original"] = _shown(img, self.max_side, pixels)
        except InputError as exc:
            item["error"] = str(exc)

    def finish(self, batch: Batch) -> Batch:
        """Decode the batch's raw JPEGs on the device (in the main process);
        those the device cannot decode take the CPU path. Returns the batch
        with its inputs stacked on the device."""
        raw = [it for it in batch.ok if it.get("jpeg") is not None]
        if not raw:
            return batch
        images = device_decode.decode([it.pop("jpeg") for it in raw], self.device)
        for it, image in zip(raw, images):
            orientation = it.pop("orientation")
            try:
                if image is not None:
                    self._prepare_on_device(it, device_decode.orient(image, orientation))
                    continue
            except RuntimeError as exc:  # CUDA's antialiased resize refuses factors beyond about 50-90
                log.debug("%s: resizing on %s failed (%s); the CPU path takes it",
                          self.items[it["index"]].path, self.device, exc)
            self._decode(it)
        return collate([*batch.ok, *batch.failed], device=self.device)

    def _prepare_on_device(self, item: dict[str, Any], image: torch.Tensor) -> None:
        prepare = device_decode.detector_input if self.detection else device_decode.classifier_input
        item["input"], item["box"] = prepare(image, self.cfg)
        item["size"] = (int(image.shape[-1]), int(image.shape[-2]))
        if self.keep_original:
            item["original"] = device_decode.shown(image, shown_size(item["size"], self.max_side))


def _shown(img: Image.Image, max_side: int | None, pixels: np.ndarray | None = None) -> torch.Tensor:
    """The photo as its PNGs show it: uint8 [h,w,3], scaled down to
    `max_side` (a 24-megapixel photo need not cost 24-megapixel PNGs);
    `pixels`, the image's own where decoding gave them, saves a copy."""
    size = shown_size(img.size, max_side)
    if size == img.size and pixels is not None:
        return torch.from_numpy(pixels)
    if size != img.size:
        img = img.resize(size, Image.BILINEAR, reducing_gap=2.0)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())


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


def collate(items: list[dict[str, Any]], device: torch.device | None = None) -> Batch:
    """Items in index order: the decoded ones' inputs stacked (moved to
    `device` if given); none while some are raw JPEGs (ImageDataset.finish)."""
    items = sorted(items, key=lambda it: it["index"])
    ok = [it for it in items if it["error"] is None]
    failed = [it for it in items if it["error"] is not None]
    inputs = [it["input"] for it in ok]
    if any(t is None for t in inputs):
        return Batch(ok, failed, None)
    if device is not None:
        inputs = [t.to(device, non_blocking=True) for t in inputs]
    if inputs and all(t.shape == inputs[0].shape for t in inputs):
        return Batch(ok, failed, torch.stack(inputs))
    return Batch(ok, failed, inputs or None)


def normalize(inputs: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """uint8 [B,3,H,W] on the device -> float, (x/255 - mean) / std. Done on
    the device so only a quarter of the bytes cross the bus."""
    mean = torch.tensor(cfg.mean, device=inputs.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=inputs.device).view(1, 3, 1, 1)
    x = inputs.to(torch.float32, copy=True)  # then in place: the same arithmetic without temporaries
    x /= 255.0  # (on 2 cores 0.68 against 1.88 ms for 8 images at 224 px)
    x -= mean
    x /= std
    return x
