"""The public Python API: `attribute` and `methods`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .methods import registry


def methods() -> list[str]:
    """Names of all registered methods (the values `method=` accepts)."""
    return registry.names()


def attribute(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "gradient",
    targets: Any = None,
    **params: Any,
) -> torch.Tensor:
    """Saliency maps for a batch of preprocessed images.

    images: float tensor [B,3,H,W] on the model's device.
    targets: None (each image's top-1 class), an int, or B class ids.
    params: the method's parameters, e.g. `reduce="sum"`, `n=25`
            (`saliency methods --params` lists them with defaults).

    Returns float32 [B,H,W] (or [B,C,H,W] with reduce="none"), raw values, on
    the images' device. The model is left exactly as found: training flags,
    requires_grad flags, no hooks, no `.grad` written.
    """
    spec = registry.get(method)
    return spec.run(model, images, targets, spec.make_params(params)).maps
