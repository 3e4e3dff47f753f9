"""Average drop and increase in confidence (Chattopadhyay et al. 2018,
Grad-CAM++, arXiv:1710.11063).

Y is the probability of class c on x; O its probability on the photo
multiplied by the map, min-max normalised to [0, 1], in pixel space and then
normalised as the model expects. Per map:

    drop = max(0, Y - O) / Y * 100        increase = [O > Y] * 100

A constant map has no min-max normalisation: it is taken as all zeros.
torch-cam and pytorch-grad-cam multiply the already normalised input
instead (a zero map gives the mean colour there, black here).
"""

from __future__ import annotations

import torch

from ..memory import run_in_chunks
from .perturb import Score, ToInput


def unit_maps(maps: torch.Tensor) -> torch.Tensor:
    """[I,H,W] min-max normalised to [0, 1] per map (all zeros when constant)."""
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp(min=torch.finfo(maps.dtype).tiny), 0.0)


def confidence(score: Score, pixels: torch.Tensor, image_of: torch.Tensor, maps: torch.Tensor,
               to_input: ToInput, y: torch.Tensor, *, chunk: int | None = None) -> dict[str, torch.Tensor]:
    """{"average-drop": [I], "increase": [I]} in percent, on the device.
    pixels: [B,3,H,W] in [0,1]; maps: [I,H,W]; y: [I] the probability of
    each map's class on its unperturbed input."""
    weights = unit_maps(maps)
    o = torch.empty_like(y)

    def step(start: int, stop: int) -> None:
        index = torch.arange(start, stop, device=maps.device)
        inputs = to_input(pixels[image_of[index]] * weights[index, None])
        o[start:stop] = score(inputs, index)

    run_in_chunks(len(y), step, device=maps.device, chunk=chunk, probe=8, what="weighted inputs")
    return {"average-drop": (y - o).clamp(min=0) / y * 100.0, "increase": (o > y).float() * 100.0}
