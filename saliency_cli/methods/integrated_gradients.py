"""Integrated gradients (Sundararajan et al. 2017): the gradient integrated
along the straight path from a baseline x' to the image x,

    IG(x) = (x - x') * integral_0^1 dy_c/dx (x' + a (x - x')) da
          ~ (x - x') * sum_j w_j g(x' + a_j (x - x')),

with the points a_j and weights w_j of a quadrature rule (`steps` points;
the rules and their names are captum's: Gauss-Legendre by default, or
Riemann sums). Per-channel and signed, reduced like every pixel-space
method (default `sum`, which keeps completeness: the map sums to about
y_c(x) - y_c(x')).

Baselines, in the model's input space:
- black: a black image, -mean/std per channel of the preprocessing (`black`;
  `saliency explain` fills it from the config, the Python API assumes
  ImageNet's normalisation unless `black` is given);
- mean: all zeros, the training set's mean colour for standardised inputs
  (captum's default baseline);
- blur: the image blurred by a Gaussian of `blur_sigma` pixels;
- noise: the image plus N(0, sigma^2), sigma = noise_level * (max x - min x)
  per image (as SmoothGrad's), one seeded draw shared by a batch.

The `steps` x B path points go through the model `step_batch` per call (sized
like SmoothGrad's noisy copies when not set), and each image's sum is
accumulated in the order of j, so the maps do not depend on `step_batch` nor
on which images share a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SaliencyError
from ..memory import run_in_chunks
from .backprop import input_gradient
from .registry import Attribution, PixelParams, Reduce, as_logits, register, select_targets

Rule = Literal["gausslegendre", "riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class IntegratedGradientsParams(PixelParams):
    reduce: Reduce = "sum"  # signed; the sum over channels keeps completeness per pixel
    steps: int = 50  # points on the path (captum's default)
    rule: Rule = "gausslegendre"
    baseline: Literal["black", "mean", "blur", "noise"] = "black"
    black: list[float] | None = None  # a black pixel in model-input values; null: -mean/std of the preprocessing
    blur_sigma: float = 10.0  # baseline blur: Gaussian standard deviation in pixels
    noise_level: float = 0.15  # baseline noise: sigma / (max x - min x)
    seed: int = 0  # baseline noise
    step_batch: int | None = None  # path points per model call; null: sized to the device

    def check(self) -> None:
        if self.steps < (1 if self.rule == "gausslegendre" else 2):
            raise SaliencyError("integrated-gradients: steps must be >= 1 (>= 2 for Riemann rules)")
        if self.blur_sigma <= 0 or self.noise_level < 0:
            raise SaliencyError("integrated-gradients: blur_sigma must be > 0 and noise_level >= 0")
        if self.step_batch is not None and self.step_batch < 1:
            raise SaliencyError("integrated-gradients: step_batch must be >= 1")

    def fit_preprocess(self, preprocess) -> None:
        """Take the black pixel from the input normalisation (`preprocess.mean`, `.std`)."""
        if self.black is None:
            self.black = [-m / s for m, s in zip(preprocess.mean, preprocess.std)]


def quadrature(rule: str, steps: int) -> tuple[list[float], list[float]]:
    """(points a_j in [0, 1], weights w_j), exactly as captum's approximation_methods."""
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (0.5 * (1 + nodes)).tolist(), (0.5 * weights).tolist()
    weights = [1 / steps] * steps
    if rule == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
    first, last = {"riemann_left": (0, 1 - 1 / steps), "riemann_right": (1 / steps, 1),
                   "riemann_middle": (1 / (2 * steps), 1 - 1 / (2 * steps)), "riemann_trapezoid": (0, 1)}[rule]
    return torch.linspace(first, last, steps).tolist(), weights


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, radius ceil(3 sigma), edges replicated."""
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    channels = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def baseline(images: torch.Tensor, params: IntegratedGradientsParams) -> torch.Tensor:
    if params.baseline == "mean":
        return torch.zeros_like(images)
    if params.baseline == "blur":
        return gaussian_blur(images, params.blur_sigma)
    if params.baseline == "noise":
        gen = torch.Generator(device=images.device).manual_seed(params.seed)
        eps = torch.randn(images.shape[1:], generator=gen, device=images.device, dtype=images.dtype)
        sigma = params.noise_level * (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3)))
        return images + sigma[:, None, None, None] * eps
    black = params.black if params.black is not None else \
        [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    if len(black) not in (1, images.shape[1]):
        raise SaliencyError(f"integrated-gradients: black has {len(black)} values for images with "
                            f"{images.shape[1]} channels")
    value = torch.tensor(black, device=images.device, dtype=images.dtype)
    return value.view(1, -1, 1, 1).expand_as(images).clone()


@register(
    "integrated-gradients",
    summary="Gradients integrated along the path from a baseline (black, mean, blur, noise) to the image",
    paper="Sundararajan et al. 2017, arXiv:1703.01365",
    params=IntegratedGradientsParams,
)
def integrated_gradients(model, images, targets, params):
    batch = images.shape[0]
    with torch.no_grad():
        logits = as_logits(model(images), batch)
    targets = select_targets(logits, targets)
    start_points = baseline(images, params)
    delta = images - start_points
    points, weights = quadrature(params.rule, params.steps)
    alpha = torch.tensor(points, device=images.device, dtype=images.dtype)
    acc = torch.zeros_like(images)

    def step(start: int, stop: int) -> None:
        # flat index k = j * batch + i: path point j of image i, point-major
        k = torch.arange(start, stop, device=images.device)
        i, j = k % batch, k // batch
        path = start_points[i] + alpha[j, None, None, None] * delta[i]
        grads = input_gradient(model, path, targets[i], method="integrated-gradients").maps
        for point in range(start // batch, (stop - 1) // batch + 1):  # a fixed summation order
            lo, hi = max(start, point * batch), min(stop, (point + 1) * batch)
            acc[lo - point * batch: hi - point * batch] += weights[point] * grads[lo - start: hi - start]

    run_in_chunks(params.steps * batch, step, device=images.device, chunk=params.step_batch, probe=batch,
                  what="path points")
    return Attribution(acc * delta, logits, targets)
