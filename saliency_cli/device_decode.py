"""JPEGs decoded on the model's device (nvjpeg on a GPU), resized there.

With `runtime.decode: device` (auto: when the model runs on CUDA) the
decoding workers only read a JPEG's bytes and header; the main process
decodes the batch's JPEGs in one call on the device, applies the EXIF
orientation, resizes (and crops) them there, and keeps the photo there for
the overlays. Other formats, JPEGs the device path does not take (CMYK,
unreadable headers, no end marker: truncated) and any JPEG the device fails
to decode take the CPU path (data.py), with its error messages.

Resizing is antialiased, bilinear or bicubic, as Pillow's on the CPU path
(other `preprocess.interpolation` values decode on the CPU path); the
decoders (libjpeg-turbo, nvjpeg) and the resize arithmetic differ in the
last bits, so maps from the two paths agree closely, not exactly (tested).
Center-crop takes the crop box rounded to whole pixels here (Pillow
samples the exact box); the box the PNG uses is the one the model saw.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch

from .render import open_image, pillow_quiet

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif"})
_ORIENTATION = 0x0112  # the EXIF tag


def read_jpeg(path: str) -> dict[str, Any] | None:
    """A JPEG's bytes (uint8 tensor), its displayed size and its EXIF
    orientation, if the device path can take it (RGB or greyscale); None
    sends the file to the CPU path, which also reports unreadable files."""
    if Path(path).suffix.lower() not in JPEG_SUFFIXES:
        return None
    try:
        data = Path(path).read_bytes()
        if not data.startswith(b"\xff\xd8\xff") or b"\xff\xd9" not in data[-4096:]:
            return None  # not a JPEG, or a truncated one (no end marker): the CPU path says which
        with pillow_quiet(), open_image(io.BytesIO(data)) as img:
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None
            width, height = img.size
            orientation = int(img.getexif().get(_ORIENTATION, 1) or 1)
    except Exception:  # the CPU path says what is wrong with the file
        return None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return {"jpeg": torch.frombuffer(bytearray(data), dtype=torch.uint8), "size": (width, height),
            "orientation": orientation}


def decode(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """uint8 [3,H,W] images on `device`, one batched call; where it fails,
    one call per image; None for an image the device cannot decode."""
    try:
        return list(_decode(jpegs, device))
    except RuntimeError:
        images: list[torch.Tensor | None] = []
        for jpeg in jpegs:
            try:
                images.append(_decode([jpeg], device)[0])
            except RuntimeError:
                images.append(None)
        return images


def _decode(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type == "cuda":
        # nvJPEG writes its output on a stream of its own, into memory the allocator may have just
        # freed on ours while queued kernels still read it (pytorch/vision#9606): let them finish
        torch.cuda.current_stream(device).synchronize()

    with warnings.catch_warnings():  # torchvision's image decoders announce their move to torchcodec
        warnings.simplefilter("ignore")
        return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """[3,H,W] as displayed: EXIF orientation 2-8 undone as Pillow's
    ImageOps.exif_transpose does."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(image, -1, (-2, -1))
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return torch.rot90(image, 1, (-2, -1))
    return image


INTERPOLATIONS = ("bilinear", "bicubic")  # preprocess.interpolation values this path resizes with


def resize(image: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """uint8 [3,H,W] -> uint8 [3,h,w] (size = h, w), antialiased, as Pillow
    resizes (torchvision's: on the CPU its uint8 kernel follows Pillow's arithmetic)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    from torchvision.transforms.v2.functional import InterpolationMode
    from torchvision.transforms.v2.functional import resize as tv_resize

    mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
    return tv_resize(image, list(size), interpolation=mode, antialias=True)


def classifier_input(image: torch.Tensor, cfg: Any) -> tuple[torch.Tensor, tuple[float, ...]]:
    """data.preprocess on the device: the input [3,h,w] and the box of the photo it shows."""
    height, width = image.shape[-2:]
    out_h, out_w = cfg.size
    mode = cfg.interpolation or "bilinear"
    if cfg.resize == "stretch":
        return resize(image, (out_h, out_w), mode), (0.0, 0.0, float(width), float(height))
    scale = (min(out_h, out_w) / cfg.crop_fraction) / min(width, height)
    crop_w, crop_h = min(width, round(out_w / scale)), min(height, round(out_h / scale))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    crop = image[:, top:top + crop_h, left:left + crop_w]
    return resize(crop, (out_h, out_w), mode), (float(left), float(top), float(left + crop_w), float(top + crop_h))


def detector_input(image: torch.Tensor, cfg: Any) -> tuple[torch.Tensor, tuple[float, ...]]:
    """data.preprocess_detection on the device: the photo, its longer side capped at max_size."""
    height, width = image.shape[-2:]
    box = (0.0, 0.0, float(width), float(height))
    if cfg.max_size and max(width, height) > cfg.max_size:
        scale = cfg.max_size / max(width, height)
        image = resize(image, (max(1, round(height * scale)), max(1, round(width * scale))))
    return image, box


def shown(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The photo as its PNGs show it: uint8 [h,w,3] at `size` (w, h)."""
    return resize(image, (size[1], size[0])).permute(1, 2, 0).contiguous()
