"""Deletion and insertion (Petsiuk et al. 2018, RISE, arXiv:1806.07421), for
a whole batch of maps at once, on the device.

For a map M of N = H*W pixels, pixels are ranked by M descending with a
stable sort (ties in row-major order). For s = 0..S, k_s = round(s*N/S)
(halves up: floor(s*N/S + 1/2), in integers). Deletion's input s is x with
its top k_s pixels (all channels) set to the deletion substrate; insertion's
is the insertion substrate with its top k_s pixels taken from x. The curve
is the score of each input; its AUC the trapezoid rule over s/S in [0, 1].

Every (map, step) input of a batch, for both curves, is one flat index; the
chunker (memory.run_in_chunks, as SmoothGrad uses it) sends them through the
model in device-sized calls. The masks are built on the device from each
map's pixel ranks and k_s: `rank < k_s`. Scores stay on the device until
the batch is done.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..memory import run_in_chunks

# RISE's insertion substrate: x blurred per channel with an 11x11 kernel of sigma 5
BLUR_SIZE, BLUR_SIGMA = 11, 5.0

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs [m,C,H,W], map index [m]) -> [m]
ToInput = Callable[[torch.Tensor], torch.Tensor]  # pixel values in [0,1] -> model input


def rise_kernel(size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA, truncate: float = 4.0) -> torch.Tensor:
    """The blur kernel of the RISE reference code: scipy's gaussian_filter
    (reflecting boundary, truncated at 4 sigma) of a size x size delta. With
    sigma 5 the Gaussian is wider than the window and its tails fold back
    in, so this is not a truncated, renormalised Gaussian. Separable: the
    outer product of the 1-D result."""
    radius = int(truncate * sigma + 0.5)
    weights = [math.exp(-0.5 * (x / sigma) ** 2) for x in range(-radius, radius + 1)]
    total = sum(weights)
    centre, line = size // 2, [0.0] * size
    for i in range(size):
        for x, w in zip(range(-radius, radius + 1), weights):
            m = (i + x) % (2 * size)  # scipy's "reflect": d c b a | a b c d | d c b a
            if (2 * size - 1 - m if m >= size else m) == centre:
                line[i] += w / total
    one = torch.tensor(line, dtype=torch.float64)
    return torch.outer(one, one).float()


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Each channel convolved with `kernel`, zero padding (as RISE's conv2d)."""
    channels, size = x.shape[1], kernel.shape[-1]
    weight = kernel.to(x.device, x.dtype).expand(channels, 1, size, size)
    return F.conv2d(x, weight, padding=size // 2, groups=channels)


def substrate(kind: str, inputs: torch.Tensor, to_input: ToInput, seed: int) -> torch.Tensor:
    """What replaces (deletion) or precedes (insertion) the pixels, per image:
    zero: 0 in the model's input space (the mean colour after normalisation);
    black: pixel value 0; noise: one U(0,1) draw per pixel and channel in
    pixel space from `seed`, the same for every image; blur: x blurred."""
    if kind == "zero":
        return torch.zeros_like(inputs)
    if kind == "blur":
        return blur(inputs, rise_kernel())
    if kind == "black":
        return to_input(torch.zeros_like(inputs[:1])).expand_as(inputs)
    gen = torch.Generator(device=inputs.device).manual_seed(seed)
    noise = torch.rand(inputs.shape[1:], generator=gen, device=inputs.device, dtype=inputs.dtype)
    return to_input(noise[None]).expand_as(inputs)


def step_counts(pixels: int, steps: int, device: torch.device) -> torch.Tensor:
    """k_s = round(s*N/S) for s = 0..S, halves rounded up, exactly (integers)."""
    s = torch.arange(steps + 1, dtype=torch.int64)
    return ((2 * s * pixels + steps) // (2 * steps)).to(device, torch.int32)


def pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """[I,H,W] -> [I,N] int32: each pixel's place in its map's order (M
    descending, stable: ties in row-major order), 0 for the most salient.
    (int32: half the bytes that every chunk's masks read.)"""
    flat = maps.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty(order.shape, dtype=torch.int32, device=flat.device)
    places = torch.arange(flat.shape[1], device=flat.device, dtype=torch.int32).expand_as(order)
    return ranks.scatter_(1, order, places)


@dataclass
class Batch:
    """The maps of a batch of images, ready to perturb."""

    inputs: torch.Tensor  # [B,C,H,W] the model inputs x
    image_of: torch.Tensor  # [I] the image (row of inputs) of each map
    ranks: torch.Tensor  # [I,N] int32, see pixel_ranks


def curves(score: Score, batch: Batch, substrates: dict[str, torch.Tensor], steps: int, *,
           chunk: int | None = None, progress: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """The deletion and/or insertion curves (the keys of `substrates`, each
    [B,C,H,W]) of every map of `batch`: {name: [I, steps + 1]}, on the device.
    `progress(n)` hears of every n inputs scored."""
    x, device = batch.inputs, batch.inputs.device
    maps, pixels = batch.ranks.shape
    height, width = x.shape[-2:]
    counts = step_counts(pixels, steps, device)
    names = list(substrates)
    per = maps * (steps + 1)
    fill = torch.stack([substrates[n] for n in names])  # [curves,B,C,H,W]
    deleting = torch.tensor([n == "deletion" for n in names], device=device)
    out = torch.empty(len(names) * per, device=device)

    def step(start: int, stop: int) -> None:
        t = torch.arange(start, stop, device=device)
        curve, rest = t // per, t % per
        index, s = rest // (steps + 1), rest % (steps + 1)
        image = batch.image_of[index]
        top = (batch.ranks[index] < counts[s][:, None]).view(-1, 1, height, width)
        # deletion: the top pixels from the substrate; insertion: all but the top pixels
        from_fill = top == deleting[curve].view(-1, 1, 1, 1)
        values = score(torch.where(from_fill, fill[curve, image], x[image]), index)
        out[start:stop] = values  # only once the model call succeeded: a chunk may be retried
        if progress is not None:
            progress(stop - start)

    run_in_chunks(len(names) * per, step, device=device, chunk=chunk, probe=8, what="perturbed inputs")
    return {name: out[i * per:(i + 1) * per].view(maps, steps + 1) for i, name in enumerate(names)}


def auc(curve: np.ndarray) -> np.ndarray:
    """Trapezoid rule over s/S in [0, 1]: (sum_s p_s - (p_0 + p_S)/2) / S, per row."""
    curve = np.asarray(curve, dtype=np.float64)
    steps = curve.shape[-1] - 1
    return (curve.sum(-1) - (curve[..., 0] + curve[..., -1]) / 2) / steps
