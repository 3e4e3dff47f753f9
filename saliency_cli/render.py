"""Heatmap PNGs: display scaling, colormaps as 256-entry lookup tables (no
matplotlib at run time), and the overlay on the original photo.

The raw map is never modified; scaling happens on a copy, for display only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


COLORMAPS: dict[str, np.ndarray] = {
    name: np.round(fn() * 255).astype(np.uint8) for name, fn in (("jet", _jet), ("gray", _gray), ("bwr", _bwr))
}
DIVERGING = "bwr"


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


def colorize(unit: np.ndarray, colormap: str) -> np.ndarray:
    """[h,w] in [0,1] -> uint8 [h,w,3]."""
    index = np.clip(unit * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return COLORMAPS[colormap][index]


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
) -> Image.Image:
    """The map at the photo's original `size` (w, h), placed on the `box` of
    the photo that the model saw, over the photo when `original` is given."""
    width, height = size
    left, top = max(0, int(round(box[0]))), max(0, int(round(box[1])))
    right, bottom = min(width, int(round(box[2]))), min(height, int(round(box[3])))
    unit = to_unit(values, style, percentile)
    unit = np.asarray(Image.fromarray(unit, mode="F").resize((right - left, bottom - top), Image.BILINEAR))
    heat = colorize(unit, DIVERGING if style == "signed" else colormap)
    if original is None:
        canvas = np.zeros((height, width, 3), dtype=np.uint8)
        canvas[top:bottom, left:right] = heat
    else:
        canvas = np.array(original, dtype=np.uint8, copy=True)
        a = int(round(alpha * 256))
        region = canvas[top:bottom, left:right].astype(np.uint16)
        canvas[top:bottom, left:right] = ((region * (256 - a) + heat.astype(np.uint16) * a) >> 8).astype(np.uint8)
    return Image.fromarray(canvas, "RGB")


def draw_detection(image: Image.Image, box: tuple[float, float, float, float], text: str) -> Image.Image:
    """Outline a detection and label it, on the image (in place) and return it."""
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
