"""The heatmap overlays of render.py as batched tensor operations, on the
device where the maps already are (a GPU): all the maps of one photo are
scaled, resized, coloured and blended together, the photo goes to the
device once, and only the finished uint8 overlays come back.

The formulas are render.py's, step for step, in float32: display scaling
(`to_unit`; the percentile by linear interpolation between order
statistics, as numpy's), bilinear resizing onto the shown box (antialiased
when shrinking, as Pillow's), the nearest of the colormap's 256 entries,
and the same blends, by render.py's lookup tables (CAM-style maps: by the
photo's byte and the colour's; pixel-space ones: by the photo's byte and
the pixel's colormap entry, a table per channel). The two renderers agree
to the last bit except where tiny float differences in the resized map
(float32 here, float64 inside Pillow) move a pixel across the rounding
point between two colormap entries; tests/test_render_torch.py bounds how
often and by how much.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .render import COLORMAPS, DIVERGING, Style, _blend_table, weighted_table


def to_unit(values: torch.Tensor, style: Style, percentile: float) -> torch.Tensor:
    """render.to_unit on a [h,w] tensor."""
    values = torch.nan_to_num(values.float(), nan=0.0, posinf=0.0, neginf=0.0)
    if style == "minmax":
        low, high = values.min(), values.max()
        span = high - low
        return torch.where(span > 0, (values - low) / span.clamp(min=torch.finfo(values.dtype).tiny), 0.0)
    if style == "signed":
        scale = _percentile(values.abs(), percentile).float()
        return torch.where(scale > 0, 0.5 + 0.5 * (values / scale).clamp(-1.0, 1.0), 0.5)
    scale = _percentile(values, percentile).float()
    scale = torch.where(scale > 0, scale, values.max())
    return torch.where(scale > 0, (values / scale).clamp(0.0, 1.0), 0.0)


def _percentile(values: torch.Tensor, percentile: float) -> torch.Tensor:
    """render.percentile_of (numpy.percentile's default, linear): the order
    statistics around (n - 1) q / 100, interpolated in float32. A sort, so
    any size works (torch.quantile stops at 16 million elements)."""
    flat = values.flatten().sort().values
    position = (flat.numel() - 1) * (percentile / 100)
    below = min(int(np.floor(position)), flat.numel() - 1)
    above = min(below + 1, flat.numel() - 1)
    t = position - below
    low, high = flat[below], flat[above]
    step = high - low
    return low + step * t if t < 0.5 else high - step * (1 - t)


def render_overlays(maps: Sequence[torch.Tensor], styles: Sequence[Style], percentiles: Sequence[float],
                    weighted: Sequence[bool], *, colormap: str, size: tuple[int, int],
                    box: tuple[float, float, float, float], photo: torch.Tensor | None,
                    alpha: float = 0.5) -> torch.Tensor:
    """uint8 [M,H,W,3] on the maps' device: map i ([h,w], or [C,h,w] shown
    by its max-abs) drawn as render.render_heatmap draws it, `photo` (uint8
    [H,W,3] on the same device) under all of them."""
    device = maps[0].device
    width, height = size
    left, top = max(0, int(round(box[0]))), max(0, int(round(box[1])))
    right, bottom = min(width, int(round(box[2]))), min(height, int(round(box[3])))
    units = torch.stack([to_unit(m.abs().amax(0) if m.dim() == 3 else m, s, p)
                         for m, s, p in zip(maps, styles, percentiles)])
    units = F.interpolate(units[:, None], size=(bottom - top, right - left), mode="bilinear",
                          align_corners=False, antialias=True)[:, 0]
    index = (units * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8)
    colors = [DIVERGING if s == "signed" else colormap for s in styles]

    def heat(i: int) -> torch.Tensor:  # [h,w,3]: map i's colours (weighted blends need only its entries)
        return _colormap(colors[i], device)[index[i].long()]

    if photo is None:
        canvas = torch.zeros((len(maps), height, width, 3), dtype=torch.uint8, device=device)
        canvas[:, top:bottom, left:right] = torch.stack([heat(i) for i in range(len(maps))])
        return canvas
    canvas = photo.to(device)[None].repeat(len(maps), 1, 1, 1)
    region = canvas[:, top:bottom, left:right]
    for i in range(len(maps)):
        if weighted[i]:  # render._weighted_blend: the same table, looked up by (entry, photo byte)
            table = _weighted(colors[i], styles[i], float(alpha), device)
            key = (index[i].long() << 8)[..., None] | region[i].long()
            region[i] = table.gather(1, key.reshape(-1, 3).T).T.reshape(region[i].shape)
        else:  # render._blend: each byte from (photo byte, heat byte)
            key = (region[i].to(torch.int32) << 8) | heat(i).to(torch.int32)
            region[i] = _table(float(alpha), device)[key.long()]
    return canvas


@functools.lru_cache(maxsize=16)
def _colormap(name: str, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(COLORMAPS[name]).to(device)


@functools.lru_cache(maxsize=16)
def _table(alpha: float, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(_blend_table(alpha)).to(device)


@functools.lru_cache(maxsize=16)
def _weighted(colormap: str, style: Style, alpha: float, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(weighted_table(colormap, style, alpha)).to(device)
