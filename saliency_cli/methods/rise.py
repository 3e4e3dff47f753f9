"""RISE (Petsiuk et al. 2018, "Randomized Input Sampling for Explanation of
Black-box Models"): the class score of randomly masked copies of the image,
averaged per pixel over the masks that keep it. Black-box: forwards only.

    S_c = sum_i f_c(x * M_i) M_i / (N p)

with N masks M_i (methods/masks.py, shared with D-RISE: a grid x grid
Bernoulli(p) grid, bilinearly upsampled and randomly shifted) and f_c the
softmax probability of class c (`score: probability`, the paper's; `logit`
uses y_c). Dividing by N p (p = E[M]) makes S_c the expected score given that
the pixel is kept, as in the paper and its code. The masks multiply the
preprocessed image, so a masked pixel is 0 in the model's input: the
training set's mean colour for standardised inputs, as in the paper's code.

The masks are drawn once per call from one seeded generator on the device
and shared by the images of a batch; the N x B masked images go through the
model `mask_batch` per call (sized like SmoothGrad's noisy copies when not
set). So for a fixed seed the maps do not depend on `mask_batch` nor on
which images share a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import SaliencyError
from ..memory import run_in_chunks
from .masks import RiseMasks
from .registry import Attribution, as_logits, register, select_targets

Score = Literal["probability", "logit"]


@dataclass
class RiseParams:
    num_masks: int = 4000  # the paper's setting for ResNet-50 (6000 for VGG16)
    grid: int = 7  # s: cells per side of the random grid
    p: float = 0.5  # probability that a grid cell is kept
    score: Score = "probability"  # f_c: the softmax probability (the paper's) or the logit
    seed: int = 0
    mask_batch: int | None = None  # masked images per model call; null: sized to the device

    def check(self) -> None:
        if self.num_masks < 1 or self.grid < 1:
            raise SaliencyError("rise: num_masks and grid must be >= 1")
        if not 0 < self.p <= 1:
            raise SaliencyError("rise: p must be in (0, 1]")
        if self.mask_batch is not None and self.mask_batch < 1:
            raise SaliencyError("rise: mask_batch must be >= 1")


def target_score(logits: torch.Tensor, targets: torch.Tensor, score: Score) -> torch.Tensor:
    """[N,K] model outputs -> [N] score of each row's target, in float32."""
    logits = logits.float()
    if score == "probability":
        logits = logits.softmax(dim=1)
    return logits.gather(1, targets[:, None])[:, 0]


@register(
    "rise",
    summary="Random masks weighted by the class probability of the masked image (black-box)",
    paper="Petsiuk et al. 2018, arXiv:1806.07421",
    params=RiseParams,
    pixel_space=False,
    style="minmax",  # every pixel keeps some score on average: show the contrast, not the offset
)
def rise(model, images, targets, params):
    batch, height, width = images.shape[0], *images.shape[-2:]
    with torch.no_grad():
        logits = as_logits(model(images), batch)
    targets = select_targets(logits, targets)
    masks = RiseMasks(params.num_masks, params.grid, params.p, (height, width), params.seed, images.device)
    saliency = images.new_zeros((batch, height * width), dtype=torch.float32)

    def step(start: int, stop: int) -> None:
        # flat index k = j * batch + i: mask j on image i, mask-major
        k = torch.arange(start, stop, device=images.device)
        first, last = start // batch, (stop - 1) // batch
        i, j = k % batch, k // batch - first
        chunk = masks(first, last + 1)  # [m,H,W]
        with torch.no_grad():
            out = as_logits(model(images[i] * chunk[j, None].to(images.dtype)), stop - start)
        weights = saliency.new_zeros((batch, last + 1 - first))
        weights[i, j] = target_score(out, targets[i], params.score)
        saliency.add_(weights @ chunk.flatten(1))

    run_in_chunks(params.num_masks * batch, step, device=images.device, chunk=params.mask_batch, probe=batch,
                  what="masked images")
    maps = saliency.view(batch, height, width) / (params.num_masks * params.p)
    return Attribution(maps, logits.detach(), targets)
