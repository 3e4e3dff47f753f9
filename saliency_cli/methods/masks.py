"""RISE's random masks (Petsiuk et al. 2018), shared by RISE (classifiers)
and D-RISE (detectors).

A mask is a grid x grid Bernoulli(p) grid, bilinearly upsampled to
(grid+1) * cell pixels (cell = ceil(size / grid)) and cropped to the image at
a random shift of less than one cell. Every mask's parameters (the N small
grids and N shifts) are drawn up front from one seeded generator on the
device, and full-size masks are built on demand by index range: so a chunk
of masks does not depend on how the N masks are split into chunks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class RiseMasks:
    """The N masks of one image size, built on demand by index range."""

    def __init__(self, n: int, grid: int, p: float, size: tuple[int, int], seed: int, device: torch.device):
        height, width = size
        gen = torch.Generator(device=device).manual_seed(seed)
        self.grids = (torch.rand(n, 1, grid, grid, generator=gen, device=device) < p).float()
        cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
        self.shift_y = torch.randint(0, cell_h, (n,), generator=gen, device=device)
        self.shift_x = torch.randint(0, cell_w, (n,), generator=gen, device=device)
        self.upsampled = ((grid + 1) * cell_h, (grid + 1) * cell_w)
        self.rows = torch.arange(height, device=device)
        self.cols = torch.arange(width, device=device)

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        """Masks start..stop-1: float32 [stop-start, H, W] in [0, 1]."""
        up = F.interpolate(self.grids[start:stop], size=self.upsampled, mode="bilinear", align_corners=False)
        rows = self.shift_y[start:stop, None] + self.rows  # [m,H]
        cols = self.shift_x[start:stop, None] + self.cols  # [m,W]
        which = torch.arange(stop - start, device=up.device)[:, None, None]
        masks = up[:, 0][which, rows[:, :, None], cols[:, None, :]]
        return masks.clamp_(0.0, 1.0)  # bilinear weights can overshoot 1 by a rounding error
