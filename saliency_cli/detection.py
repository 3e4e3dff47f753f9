"""The detector protocol: a detector is any callable `images [B,3,H,W] in
[0,1] -> list of Detections` (one per image); its validation, and box IoU.
detectors.py turns known detection models (torchvision, Ultralytics) into one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import SaliencyError


@dataclass
class Detections:
    """Detections of one image. boxes [K,4] xyxy in pixels, scores [K]
    (objectness / confidence), probs [K,C] class probability vectors (C may
    be 1), labels [K]."""

    boxes: torch.Tensor
    scores: torch.Tensor
    probs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, index: torch.Tensor) -> Detections:
        return Detections(self.boxes[index], self.scores[index], self.probs[index], self.labels[index])

    def to(self, device: torch.device) -> Detections:
        return Detections(*(t.to(device) for t in (self.boxes, self.scores, self.probs, self.labels)))


Detector = Callable[[torch.Tensor], Sequence[Detections]]


class DetectorModule(nn.Module):
    """A module that is a detector by construction (its output is built as
    Detections, so it is not checked at every call): yolo.UltralyticsDetector."""


@dataclass
class DetectionExplanation:
    """One image: the detections explained (highest score first) and their
    saliency maps [K,H,W] at the image's resolution; `note` says why there
    are none, when there are none."""

    detections: Detections
    maps: torch.Tensor
    note: str | None = None

_FIELDS = ("boxes", "scores", "probs", "labels")


def check_detections(out: Any, batch: int, device: torch.device | None = None) -> list[Detections]:
    """Validate a detector's output; clear messages for protocol errors. With
    `device`, every field is moved there (a detector may build constant
    fields on the CPU while its scores come from the GPU)."""
    if isinstance(out, (Detections, dict)) or not isinstance(out, Sequence):
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        hint = " (a classifier's scores? task: detection needs a detector)" if isinstance(out, torch.Tensor) else ""
        raise SaliencyError(f"the detector must return a list with one Detections per image; got {got}{hint}")
    if len(out) != batch:
        raise SaliencyError(f"the detector returned {len(out)} results for {batch} images")
    return [_check_one(item, i, device) for i, item in enumerate(out)]


def _check_one(item: Any, index: int, device: torch.device | None) -> Detections:
    where = f"detector output for image {index}"
    if isinstance(item, dict):
        missing = [f for f in _FIELDS if f not in item]
        if missing:
            raise SaliencyError(f"{where}: missing {', '.join(repr(m) for m in missing)} "
                                f"(needs {', '.join(_FIELDS)})")
        item = Detections(*(item[f] for f in _FIELDS))
    if not isinstance(item, Detections):
        raise SaliencyError(f"{where}: expected Detections or a dict with {', '.join(_FIELDS)}; "
                            f"got {type(item).__name__}")
    for name in _FIELDS:
        if not isinstance(getattr(item, name), torch.Tensor):
            raise SaliencyError(f"{where}: {name!r} must be a tensor")
    k = item.boxes.shape[0] if item.boxes.dim() == 2 else -1
    shapes = {"boxes": (k, 4), "scores": (k,), "labels": (k,)}
    for name, shape in shapes.items():
        if tuple(getattr(item, name).shape) != shape or k < 0:
            raise SaliencyError(f"{where}: {name!r} must have shape [K{', 4' if name == 'boxes' else ''}]"
                                f" with the same K for all fields; got {list(getattr(item, name).shape)}")
    if item.probs.dim() != 2 or item.probs.shape[0] != k or item.probs.shape[1] < 1:
        raise SaliencyError(f"{where}: 'probs' must have shape [K, C] with K = {k}; got {list(item.probs.shape)}")
    return Detections(item.boxes.to(device, torch.float32), item.scores.to(device, torch.float32),
                      item.probs.to(device, torch.float32), item.labels.to(device, torch.long))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[K,4] x [D,4] xyxy -> [K,D] intersection over union."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-12)
