"""Occlusion (Zeiler & Fergus 2014): slide a window over the image, replace
what it covers by a baseline value, and credit the drop in the class score
to the covered pixels. Black-box: forwards only.

Windows of `window` x `window` pixels start every `stride` pixels along each
side, ceil((D - window) / stride) + 1 positions per side of D pixels (the
last window is cut at the border, so every pixel is covered). For window w
and image x (all channels occluded at once, replaced by `baseline`):

    d_w = y_c(x) - y_c(x occluded by w)
    M(pixel) = mean of d_w over the windows covering the pixel

This is captum's Occlusion with sliding_window_shapes (C, window, window),
strides (C, stride, stride) and the same baseline (its per-channel map has
the same value in every channel; this map is that one channel). Signed:
occluding a pixel can raise the score. y_c is the logit (`score: logit`,
as captum with a classifier's outputs) or the softmax probability.

The windows x images occluded copies go through the model `window_batch` per
call (sized like SmoothGrad's noisy copies when not set); each score is
computed alone, so the maps do not depend on `window_batch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import SaliencyError
from ..memory import run_in_chunks
from .registry import Attribution, as_logits, register, select_targets
from .rise import Score, target_score


@dataclass
class OcclusionParams:
    window: int = 16  # side of the square window, in input pixels
    stride: int = 8  # step between window positions (<= window: every pixel covered)
    baseline: float = 0.0  # occluded value in the model's input: 0 is the mean colour for standardised inputs
    score: Score = "logit"
    window_batch: int | None = None  # occluded images per model call; null: sized to the device

    def check(self) -> None:
        if self.window < 1 or not 1 <= self.stride <= self.window:
            raise SaliencyError("occlusion: window must be >= 1 and stride between 1 and window")
        if self.window_batch is not None and self.window_batch < 1:
            raise SaliencyError("occlusion: window_batch must be >= 1")


def window_cover(size: int, window: int, stride: int, device: torch.device) -> torch.Tensor:
    """[positions, size]: 1 where the window at each position covers the pixel."""
    starts = torch.arange(math.ceil((size - window) / stride) + 1, device=device)[:, None] * stride
    pixels = torch.arange(size, device=device)[None, :]
    return ((pixels >= starts) & (pixels < starts + window)).float()


@register(
    "occlusion",
    summary="Score drop when a sliding window hides each region (black-box)",
    paper="Zeiler & Fergus 2014, arXiv:1311.2901",
    params=OcclusionParams,
    pixel_space=False,
    style="signed",
)
def occlusion(model, images, targets, params):
    batch, height, width = images.shape[0], *images.shape[-2:]
    if params.window > min(height, width):
        raise SaliencyError(f"occlusion: window {params.window} is larger than the {height}x{width} input")
    with torch.no_grad():
        logits = as_logits(model(images), batch)
    targets = select_targets(logits, targets)
    rows = window_cover(height, params.window, params.stride, images.device)  # [Py,H]
    cols = window_cover(width, params.window, params.stride, images.device)  # [Px,W]
    positions = rows.shape[0] * cols.shape[0]
    base = target_score(logits, targets, params.score)
    drops = images.new_empty((positions, batch), dtype=torch.float32)

    def step(start: int, stop: int) -> None:
        # flat index k = w * batch + i: window w on image i, window-major
        k = torch.arange(start, stop, device=images.device)
        i, w = k % batch, k // batch
        hidden = (rows[w // cols.shape[0], :, None] * cols[w % cols.shape[0], None, :])[:, None]  # [m,1,H,W]
        hidden = hidden.to(images.dtype)
        with torch.no_grad():
            out = as_logits(model(images[i] * (1 - hidden) + params.baseline * hidden), stop - start)
        drops.view(-1)[start:stop] = base[i] - target_score(out, targets[i], params.score)

    run_in_chunks(positions * batch, step, device=images.device, chunk=params.window_batch, probe=batch,
                  what="occluded images")
    per_window = drops.T.reshape(batch, rows.shape[0], cols.shape[0])
    covered = rows.sum(0)[:, None] * cols.sum(0)[None, :]
    maps = torch.einsum("byx,yh,xw->bhw", per_window, rows, cols) / covered
    return Attribution(maps, logits.detach(), targets)
