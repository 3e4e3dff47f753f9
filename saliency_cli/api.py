"""The public Python API: `methods`, `attribute` and `explain_detections`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .detection import DetectionExplanation
from .detectors import as_detector
from .errors import SaliencyError
from .hooks import model_guard
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
    if not isinstance(spec, registry.ClassificationMethod):
        hint = "explains object detectors: use explain_detections()" if spec.task == "detection" else \
            f"is a method of task: {spec.task}, not a classifier method"
        raise SaliencyError(f"{method} {hint}")
    return spec.run(model, images, targets, spec.make_params(params)).maps


def explain_detections(
    detector: Any,
    images: torch.Tensor | Sequence[torch.Tensor],
    method: str = "d-rise",
    target_class: int | None = None,
    **params: Any,
) -> list[DetectionExplanation]:
    """Saliency maps for an object detector's detections.

    detector: a torchvision detection model, or any callable
        images [B,3,H,W] in [0,1] -> list (one per image) of Detections.
    images: [B,3,H,W] or a list of [3,H,W] tensors (sizes may differ), in [0,1].
    target_class: explain only detections of this class.
    Returns one DetectionExplanation per image: the explained detections
    (score >= score_threshold, at most max_detections, highest first) and
    their maps [K,H,W].
    """
    spec = registry.get(method)
    if not isinstance(spec, registry.DetectionMethod):
        raise SaliencyError(f"{method} explains classifiers: use attribute()")
    p = spec.make_params(params)
    detect = as_detector(detector)
    if isinstance(images, torch.Tensor) and images.dim() == 3:
        images = images[None]
    with model_guard(detector):
        return [spec.run(detect, image, target_class, p) for image in images]
