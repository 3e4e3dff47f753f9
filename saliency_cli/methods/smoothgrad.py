"""SmoothGrad (Smilkov et al. 2017): average a pixel-space method over noisy
copies of the input, x + N(0, sigma^2) with sigma = noise_level * (max x - min x)
per image; SmoothGrad^2 (`squared`) averages the squares.

The copies go through the model in batches (`noise_batch` per call, sized to
the device when not set, see saliency_cli/memory.py). The noise is drawn
from one seeded generator, one [C,H,W] draw per sample index j shared by all
images of the batch, in the order j = 0..n-1, and each image's sum is
accumulated in that same order. So for a fixed seed the result does not
depend on `noise_batch`, nor on which other images share the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import SaliencyError
from ..memory import run_in_chunks
from . import registry
from .registry import Attribution, PixelParams, as_logits, register, select_targets


@dataclass
class SmoothGradParams(PixelParams):
    base: str = "gradient"  # any pixel-space method
    base_params: dict[str, Any] = field(default_factory=dict)
    n: int = 50
    noise_level: float = 0.15
    squared: bool = False
    seed: int = 0
    noise_batch: int | None = None  # copies per model call; null: sized to the device

    def check(self) -> None:
        if self.n < 1:
            raise SaliencyError("smoothgrad: n must be >= 1")
        if self.noise_level < 0:
            raise SaliencyError("smoothgrad: noise_level must be >= 0")
        if self.noise_batch is not None and self.noise_batch < 1:
            raise SaliencyError("smoothgrad: noise_batch must be >= 1")
        base = registry.get(self.base)
        if not base.pixel_space or base.name == "smoothgrad":
            allowed = [m for m in registry.names("classification")
                       if registry.get(m).pixel_space and m != "smoothgrad"]
            raise SaliencyError(f"smoothgrad: base must be a pixel-space method ({', '.join(allowed)})")
        # the base's parameters are validated here, once, not at every batch
        self._base = base, base.make_params({**self.base_params, "reduce": "none"}, where="smoothgrad.base_params")

    def fit_preprocess(self, preprocess: Any) -> None:
        """Pass the input normalisation on to a base that needs it (integrated gradients' black)."""
        base_params = self.base_method()[1]
        if hasattr(base_params, "fit_preprocess"):
            base_params.fit_preprocess(preprocess)

    def base_method(self) -> tuple[registry.ClassificationMethod, Any]:
        """The base method and its parameters (reduce: none: SmoothGrad reduces the mean)."""
        if not hasattr(self, "_base"):  # built directly, not through make_params
            self.check()
        return self._base


class _NoiseStream:
    """N(0,1) draws eps_j of shape [C,H,W], produced in order of j and kept
    until the caller moves past them (a retried chunk needs them again)."""

    def __init__(self, shape: torch.Size, like: torch.Tensor, seed: int):
        self.shape = shape
        self.like = like
        self.gen = torch.Generator(device=like.device).manual_seed(seed)
        self.cache: dict[int, torch.Tensor] = {}
        self.next = 0

    def take(self, first: int, last: int) -> torch.Tensor:
        for j in [j for j in self.cache if j < first]:
            del self.cache[j]
        while self.next <= last:
            self.cache[self.next] = torch.randn(
                self.shape, generator=self.gen, device=self.like.device, dtype=self.like.dtype
            )
            self.next += 1
        return torch.stack([self.cache[j] for j in range(first, last + 1)])


@register(
    "smoothgrad",
    summary="Average of a pixel-space method over noisy copies of the input",
    paper="Smilkov et al. 2017, arXiv:1706.03825",
    params=SmoothGradParams,
)
def smoothgrad(model, images, targets, params):
    base, base_params = params.base_method()
    batch = images.shape[0]
    with torch.no_grad():
        logits = as_logits(model(images), batch)
    targets = select_targets(logits, targets)

    sigma = params.noise_level * (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3)))
    noise = _NoiseStream(images.shape[1:], images, params.seed)
    total = params.n * batch
    acc = torch.zeros_like(images)

    def step(start: int, stop: int) -> None:
        # flat index k = j * batch + i: sample j of image i, in sample-major order
        k = torch.arange(start, stop, device=images.device)
        first, last = start // batch, (stop - 1) // batch
        i, j = k % batch, k // batch - first
        eps = noise.take(first, last)
        noisy = images[i] + sigma[i, None, None, None] * eps[j]
        attr = base.compute(model, noisy, targets[i], base_params).maps
        if params.squared:
            attr = attr * attr
        for sample in range(first, last + 1):  # add sample by sample: a fixed summation order
            lo, hi = max(start, sample * batch), min(stop, (sample + 1) * batch)
            acc[lo - sample * batch : hi - sample * batch] += attr[lo - start : hi - start]

    run_in_chunks(total, step, device=images.device, chunk=params.noise_batch, probe=batch,
                  what="noisy copies")
    return Attribution(acc / params.n, logits, targets)
