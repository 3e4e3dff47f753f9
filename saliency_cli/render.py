"""Heatmap PNGs: display scaling, each pixel's colormap entry (colormaps.py
holds the 256-entry tables), the overlay on the original photo, detection
boxes and the side-by-side grid of a photo's maps.

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

from .colormaps import COLORMAPS, DIVERGING

Style = Literal["positive", "signed", "minmax"]


def to_unit(values: np.ndarray, style: Style, percentile: float = 99.0) -> np.ndarray:
    """Scale a map to [0, 1] for display.

    positive: 0 -> 0, the `percentile`-th value -> 1 (clipped above), as the
              SmoothGrad paper visualises; negatives (if any) clip to 0.
    signed:   0 -> 0.5, +-the `percentile`-th |value| -> 1 / 0.
    minmax:   min -> 0, max -> 1 (CAM, whose raw scores have no natural zero).

    NaN and +-inf (a method's division by zero) are shown as 0, as the torch
    renderer shows them: one such pixel must not wash out the rest (the
    `.npy` keeps them).
    """
    values = values.astype(np.float32, copy=False)
    if not np.isfinite(values).all():  # checked first: nan_to_num copies the map in six passes
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    if style == "minmax":
        low, high = float(values.min()), float(values.max())
        return (values - low) / (high - low) if high > low else np.zeros_like(values)
    if style == "signed":
        scale = percentile_of(np.abs(values), percentile)
        if scale <= 0:
            return np.full_like(values, 0.5)
        return 0.5 + 0.5 * np.clip(values / scale, -1.0, 1.0)
    scale = percentile_of(values, percentile)
    if scale <= 0:
        scale = float(values.max())
    if scale <= 0:
        return np.zeros_like(values)
    return np.clip(values / scale, 0.0, 1.0)


def percentile_of(values: np.ndarray, percentile: float) -> float:
    """numpy.percentile(values, percentile) for a float32 array and a float
    `percentile`, to the bit (the order statistics around (n - 1) q / 100,
    interpolated in float32 as numpy does for a Python float), in a tenth of
    its time: one partition, then the least value above it, where numpy's
    generic path partitions at four places."""
    flat = values.ravel()
    position = (flat.size - 1) * (percentile / 100)
    below = min(int(np.floor(position)), flat.size - 1)
    above = min(below + 1, flat.size - 1)
    part = np.partition(flat, below)
    low = part[below]
    high = part[above:].min() if above > below else low
    t = position - below
    step = high - low
    return float(low + step * t) if t < 0.5 else float(high - step * (1 - t))


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


def entries(unit: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The colormap entry of each pixel of `unit` ([h,w] in [0,1]) resized
    bilinearly to `size` (w, h), as an "L" image: round(255 * unit), the
    nearest of the 256 entries. Resized as 255 * unit + 0.5 (bilinear
    weights sum to 1: the same map up to float rounding), so that Pillow's
    conversion to bytes, which clips and truncates, rounds; all in Pillow's
    C loops, 2.3x the speed of resizing the map, then scaling, clipping and
    rounding it in numpy (0.68 against 1.58 ms for 600x400)."""
    scaled = unit * np.float32(255.0)
    scaled += np.float32(0.5)
    return Image.fromarray(scaled, mode="F").resize(size, Image.BILINEAR).convert("L")


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

    Each pixel shows the colormap entry nearest its value. `weighted`
    (sparse pixel-space maps): the photo is dimmed by `alpha` and each
    pixel takes the heatmap colour in proportion to its strength (the
    value of its entry), so the salient pixels stand out on a readable
    photo. Otherwise (CAM-style maps) the heatmap is blended with opacity
    `alpha` everywhere."""
    width, height = size
    left, top = max(0, int(round(box[0]))), max(0, int(round(box[1])))
    right, bottom = min(width, int(round(box[2]))), min(height, int(round(box[3])))
    index = entries(to_unit(values, style, percentile), (right - left, bottom - top))
    colors = DIVERGING if style == "signed" else colormap
    if original is None:
        canvas = np.zeros((height, width, 3), dtype=np.uint8)
        canvas[top:bottom, left:right] = _colours(index, colors)
        return canvas
    canvas = np.array(original, dtype=np.uint8, copy=True)
    region = canvas[top:bottom, left:right]
    if weighted:
        region[...] = _weighted_blend(region, np.asarray(index), weighted_table(colors, style, float(alpha)))
        return canvas
    heat = _colours(index, colors)
    band = max(1, _BAND_PIXELS // max(1, right - left))  # rows at a time: the temporaries stay small
    for y in range(0, bottom - top, band):
        rows = region[y:y + band]
        rows[...] = _blend(rows, heat[y:y + band], alpha)
    return canvas


# the overlay blends a band of rows at a time, about this many pixels: the temporaries of a band
# stay in the CPU's cache
_BAND_PIXELS = 1 << 15


def _colours(index: Image.Image, colormap: str) -> np.ndarray:
    """uint8 [h,w,3]: the colormap's colour of each entry of `index` (Pillow's
    palette lookup, 2x numpy's take; `index` becomes that palette image)."""
    index.putpalette(_palette(colormap))
    return np.asarray(index.convert("RGB"))


@functools.lru_cache(maxsize=32)
def _palette(colormap: str) -> bytes:
    return COLORMAPS[colormap].tobytes()


def _blend(photo: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    """The heatmap colours `heat` over `photo` (both uint8 [h,w,3]) with
    opacity `alpha`: round(photo * (1 - alpha) + heat * alpha), as uint8."""
    if alpha == 0.5:  # the default: round((photo + heat) / 2) in integers, 4x the table's speed
        total = np.add(photo, heat, dtype=np.uint16)
        total += 1
        total >>= 1
        return total.astype(np.uint8)
    index = photo.astype(np.uint16)  # each output byte depends only on (photo byte, heat byte): one lookup
    index <<= 8
    index |= heat
    return np.take(_blend_table(float(alpha)), index)


@functools.lru_cache(maxsize=8)
def _blend_table(alpha: float) -> np.ndarray:
    """uint8 [65536]: entry photo * 256 + heat holds the blended byte, in
    float32: round(photo * (1 - alpha) + heat * alpha)."""
    photo = np.arange(256, dtype=np.float32)[:, None] * np.float32(1 - alpha)
    heat = np.arange(256, dtype=np.float32)[None, :] * np.float32(alpha)
    return ((photo + heat) + np.float32(0.5)).astype(np.uint8).ravel()


def _weighted_blend(photo: np.ndarray, index: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 [h,w,3]: channel c of each pixel is table[c, entry * 256 + photo byte]."""
    key = index.astype(np.uint16)
    key <<= 8
    out = np.empty(photo.shape, dtype=np.uint8)
    for c in range(3):  # a table per channel: 64 KiB each, where [256 * 256 * 3] (192 KiB) took 2.3x the time
        out[..., c] = np.take(table[c], key | photo[..., c])
    return out


@functools.lru_cache(maxsize=16)
def weighted_table(colormap: str, style: Style, alpha: float) -> np.ndarray:
    """uint8 [3, 65536]: entry (c, e * 256 + p) is channel c of the weighted
    blend of photo byte p under colormap entry e, in float32:
    round(p * (1 - alpha) * (1 - s) + colour * s), s the entry's strength:
    its value e / 255, or for signed maps its distance from the middle,
    |2 e / 255 - 1|. A pixel's blend thus depends only on its entry and its
    byte, and a lookup replaces five float passes over the photo."""
    unit = np.arange(256, dtype=np.float32) / np.float32(255.0)
    strength = np.abs(2 * unit - 1) if style == "signed" else unit
    keep = (1 - alpha) * (1 - strength)  # [256] float32, per entry
    photo = np.arange(256, dtype=np.float32)
    blended = photo[None, :, None] * keep[:, None, None]  # [entry, photo byte, channel]
    blended = blended + (strength[:, None] * COLORMAPS[colormap])[:, None, :]
    blended += np.float32(0.5)
    return np.ascontiguousarray(blended.astype(np.uint8).transpose(2, 0, 1)).reshape(3, 65536)


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
