"""Heatmap PNGs: display scaling, colormaps as 256-entry lookup tables (no
matplotlib at run time), the overlay on the original photo, detection boxes
and the side-by-side grid of a photo's maps.

The raw map is never modified; scaling happens on a copy, for display only.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .colormap_data import TABLES

Style = Literal["positive", "signed", "minmax"]


def _jet() -> np.ndarray:
    v = np.linspace(0.0, 1.0, 256)[:, None]
    centres = np.array([[3.0, 2.0, 1.0]])  # red, green, blue peaks of MATLAB's jet
    return np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)


def _gray() -> np.ndarray:
    return np.repeat(np.linspace(0.0, 1.0, 256)[:, None], 3, axis=1)


def _bwr() -> np.ndarray:
    """Blue - white - red: the diverging map for signed attributions (0 is white)."""
    v = np.linspace(0.0, 1.0, 256)
    return np.stack([np.minimum(1, 2 * v), 1 - np.abs(2 * v - 1), np.minimum(1, 2 * (1 - v))], axis=1)


def _from_hex(text: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(text), dtype=np.uint8).reshape(256, 3)


COLORMAPS: dict[str, np.ndarray] = {
    name: np.round(fn() * 255).astype(np.uint8) for name, fn in (("jet", _jet), ("gray", _gray), ("bwr", _bwr))
}
COLORMAPS.update({name: _from_hex(text) for name, text in TABLES.items()})
DIVERGING = "bwr"  # used automatically for signed maps


def to_unit(values: np.ndarray, style: Style, percentile: float = 99.0) -> np.ndarray:
    """Scale a map to [0, 1] for display.

    positive: 0 -> 0, the `percentile`-th value -> 1 (clipped above), as the
              SmoothGrad paper visualises; negatives (if any) clip to 0.
    signed:   0 -> 0.5, +-the `percentile`-th |value| -> 1 / 0.
    minmax:   min -> 0, max -> 1 (CAM, whose raw scores have no natural zero).
    """
    values = np.nan_to_num(values.astype(np.float32, copy=False))
    if style == "minmax":
        low, high = float(values.min()), float(values.max())
        return (values - low) / (high - low) if high > low else np.zeros_like(values)
    if style == "signed":
        scale = float(np.percentile(np.abs(values), percentile))
        if scale <= 0:
            return np.full_like(values, 0.5)
        return 0.5 + 0.5 * np.clip(values / scale, -1.0, 1.0)
    scale = float(np.percentile(values, percentile))
    if scale <= 0:
        scale = float(values.max())
    if scale <= 0:
        return np.zeros_like(values)
    return np.clip(values / scale, 0.0, 1.0)


def open_image(path: Any) -> Image.Image:
    """Pillow's own Image.open. Importing Ultralytics replaces it with one
    that, on a file Pillow cannot identify, tries to install and load a HEIF
    plugin (and raises ModuleNotFoundError offline): a bad input must still
    be reported as a bad input."""
    patched = sys.modules.get("ultralytics.utils.patches")
    return getattr(patched, "_image_open", Image.open)(path)


_quiet = threading.Lock()
_quiet_holders = 0
_quiet_filters: warnings.catch_warnings | None = None


@contextlib.contextmanager
def pillow_quiet() -> Iterator[None]:
    """Warnings ignored while a photo is read (Pillow's on big images, odd
    palettes, damaged EXIF would print raw; a bad file gets its one-line
    error instead). Photos are read on several threads at once and
    `warnings.catch_warnings` is not thread-safe (each thread would restore
    the filters it found, maybe another's), so the threads share one: the
    first to enter installs it, the last to leave restores the filters."""
    global _quiet_holders, _quiet_filters
    with _quiet:
        if _quiet_holders == 0:
            _quiet_filters = warnings.catch_warnings()
            _quiet_filters.__enter__()
            warnings.simplefilter("ignore")
        _quiet_holders += 1
    try:
        yield
    finally:
        with _quiet:
            _quiet_holders -= 1
            if _quiet_holders == 0 and _quiet_filters is not None:
                _quiet_filters.__exit__(None, None, None)
                _quiet_filters = None


def shown_scale(size: tuple[int, int], max_side: int | None) -> float:
    """The factor a photo of `size` (w, h) is drawn at in PNGs: 1, or less
    so that its longer side is `max_side` (`output.png_max_side`)."""
    return 1.0 if max_side is None or max(size) <= max_side else max_side / max(size)


def shown_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    scale = shown_scale(size, max_side)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def colorize(unit: np.ndarray, colormap: str) -> np.ndarray:
    """[h,w] in [0,1] -> uint8 [h,w,3]: the nearest of the 256 entries."""
    index = unit * np.float32(255.0)  # in place from here: one float temporary, not three
    index += np.float32(0.5)
    np.clip(index, 0, 255, out=index)
    return np.take(COLORMAPS[colormap], index.astype(np.uint8), axis=0)  # 3x faster than fancy indexing


def render_heatmap(
    values: np.ndarray,
    *,
    style: Style,
    colormap: str,
    size: tuple[int, int],
    box: tuple[float, float, float, float],
    original: np.ndarray | None = None,
    alpha: float = 0.5,
    percentile: float = 99.0,
    weighted: bool = False,
) -> np.ndarray:
    """The map as uint8 [h,w,3] at `size` (w, h: the photo's, or its shown
    size), placed on the `box` of the photo that the model saw, over the
    photo when `original` is given.

    `weighted` (sparse pixel-space maps): the photo is dimmed by `alpha` and
    each pixel takes the heatmap colour in proportion to its value, so the
    salient pixels stand out on a readable photo. Otherwise (CAM-style maps)
    the heatmap is blended with opacity `alpha` everywhere."""
    width, height = size
    left, top = max(0, int(round(box[0]))), max(0, int(round(box[1])))
    right, bottom = min(width, int(round(box[2]))), min(height, int(round(box[3])))
    unit = to_unit(values, style, percentile)
    unit = np.asarray(Image.fromarray(unit, mode="F").resize((right - left, bottom - top), Image.BILINEAR))
    colors = DIVERGING if style == "signed" else colormap
    if original is None:
        canvas = np.zeros((height, width, 3), dtype=np.uint8)
        canvas[top:bottom, left:right] = colorize(unit, colors)
        return canvas
    canvas = np.array(original, dtype=np.uint8, copy=True)
    band = max(1, _BAND_PIXELS // max(1, right - left))  # rows at a time: float temporaries stay small
    for y in range(0, bottom - top, band):
        region = canvas[top + y:min(bottom, top + y + band), left:right]
        region[...] = _blend(region, unit[y:y + band], colors, style, alpha, weighted)
    return canvas


# the overlay blends a band of rows at a time, about this many pixels: the float temporaries of a
# band (384 KiB) stay in the CPU's cache; 0.87x the time of 1-megapixel bands on a 640x427 photo
_BAND_PIXELS = 1 << 15


def _blend(photo: np.ndarray, unit: np.ndarray, colormap: str, style: Style, alpha: float,
           weighted: bool) -> np.ndarray:
    """The heatmap of `unit` over `photo` (uint8 [h,w,3]), as uint8:
    round(photo * (1 - alpha) + heat * alpha), or with `weighted`
    round(photo * (1 - alpha) * (1 - s) + heat * s), s the pixel's strength,
    in float32. Neither can leave [0, 255], so no clipping is needed."""
    heat = colorize(unit, colormap)
    if not weighted and alpha == 0.5:  # the default: round((photo + heat) / 2) in integers, 4x the table's speed
        total = np.add(photo, heat, dtype=np.uint16)
        total += 1
        total >>= 1
        return total.astype(np.uint8)
    if not weighted:  # each output byte depends only on (photo byte, heat byte): one table lookup
        index = photo.astype(np.uint16)
        index <<= 8
        index |= heat
        return np.take(_blend_table(float(alpha)), index)
    strength = np.abs(2 * unit - 1) if style == "signed" else unit
    keep = (1 - alpha) * (1 - strength)  # [h,w] float32: per pixel, not per channel
    # per channel as [h,w,3] arrays: numpy's loops over a broadcast [h,w,1] run 3 elements at a
    # time (0.75x the time this way, the same float32 products)
    blended = photo.astype(np.float32)
    blended *= np.repeat(keep[..., None], 3, axis=2)
    weight = np.repeat(strength[..., None], 3, axis=2)
    weight *= heat
    blended += weight
    blended += np.float32(0.5)
    return blended.astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _blend_table(alpha: float) -> np.ndarray:
    """uint8 [65536]: entry photo * 256 + heat holds the blended byte, with the
    float32 arithmetic of the weighted branch (so equal to computing it)."""
    photo = np.arange(256, dtype=np.float32)[:, None] * np.float32(1 - alpha)
    heat = np.arange(256, dtype=np.float32)[None, :] * np.float32(alpha)
    return ((photo + heat) + np.float32(0.5)).astype(np.uint8).ravel()


def draw_detection(image: np.ndarray | Image.Image, box: tuple[float, float, float, float],
                   text: str) -> Image.Image:
    """Outline a detection and label it on the image; returns a PIL image."""
    image = image if isinstance(image, Image.Image) else Image.fromarray(image, "RGB")
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 250))
    x0, y0, x1, y1 = (float(v) for v in box)
    draw.rectangle((x0, y0, x1, y1), outline=(255, 255, 255), width=width + 2)
    draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0), width=width)
    font = ImageFont.load_default(size=max(12, round(max(image.size) / 40)))
    left, top, right, bottom = draw.textbbox((x0, y0), text, font=font)
    shift = bottom - top + 2 * width
    y_text = y0 - shift if y0 - shift >= 0 else y0
    draw.rectangle((left, y_text, right + 2 * width, y_text + shift), fill=(0, 0, 0))
    draw.text((x0 + width, y_text + width / 2), text, fill=(255, 255, 255), font=font)
    return image


def compose_grid(panels: list[tuple[np.ndarray | Image.Image, str, str]], height: int = 256) -> Image.Image:
    """Panels (image, title, subtitle) side by side at one height, each
    captioned above, like the comparison figures of the papers."""
    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=13)
    caption, gap = 40, 6
    images = [img if isinstance(img, Image.Image) else Image.fromarray(img, "RGB") for img, _, _ in panels]
    scaled = [img.resize((max(1, round(img.width * height / img.height)), height), Image.BILINEAR)
              for img in images]
    width = sum(img.width for img in scaled) + gap * (len(scaled) + 1)
    grid = Image.new("RGB", (width, height + caption + 2 * gap), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    x = gap
    for img, (_, title, subtitle) in zip(scaled, panels):
        draw.text((x, gap), _fit(draw, title, font, img.width), fill=(0, 0, 0), font=font)
        draw.text((x, gap + 20), _fit(draw, subtitle, small, img.width), fill=(90, 90, 90), font=small)
        grid.paste(img, (x, caption + gap))
        x += img.width + gap
    return grid


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """Shorten `text` with an ellipsis until it fits `width` pixels."""
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text
