"""The detector protocol, its validation, and adapters for torchvision detectors.

A detector is any callable `images [B,3,H,W] in [0,1] -> list of Detections`
(one per image). `as_detector` turns torchvision detection models into one:

- two-stage models (Faster/Mask/Keypoint R-CNN) report the full softmax class
  vector of each detection's proposal. It is read from the box predictor's
  logits with a forward hook that lives only for the call, and each final
  detection is matched to its proposal by its score (torchvision's scores
  are entries of that softmax);
- one-stage models (RetinaNet, FCOS, SSD) compute no such vector per
  detection, so it is the one-hot vector of the label times the score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
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


@dataclass
class DetectionExplanation:
    """One image: the detections explained (highest score first) and their
    saliency maps [K,H,W] at the image's resolution; `note` says why there
    are none, when there are none."""

    detections: Detections
    maps: torch.Tensor
    note: str | None = None

_FIELDS = ("boxes", "scores", "probs", "labels")


def check_detections(out: Any, batch: int) -> list[Detections]:
    """Validate a detector's output; clear messages for protocol errors."""
    if isinstance(out, (Detections, dict)) or not isinstance(out, Sequence):
        raise SaliencyError(f"the detector must return a list with one Detections per image; got "
                            f"{type(out).__name__}")
    if len(out) != batch:
        raise SaliencyError(f"the detector returned {len(out)} results for {batch} images")
    return [_check_one(item, i) for i, item in enumerate(out)]


def _check_one(item: Any, index: int) -> Detections:
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
    return Detections(item.boxes.float(), item.scores.float(), item.probs.float(), item.labels.long())


# ------------------------------------------------------------------ torchvision adapters


def is_torchvision_detector(model: Any) -> bool:
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD

    return isinstance(model, (GeneralizedRCNN, RetinaNet, FCOS, SSD))


def num_classes(model: nn.Module) -> int | None:
    """Number of classes of a torchvision detector (91 for COCO), if known."""
    head = getattr(getattr(model, "head", None), "classification_head", None)
    for attr in ("num_classes", "num_columns"):
        if head is not None and hasattr(head, attr):
            return int(getattr(head, attr))
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    if predictor is not None and hasattr(predictor, "cls_score"):
        return int(predictor.cls_score.out_features)
    return None


def as_detector(model: Any) -> Detector:
    """A protocol-following detector for `model`."""
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    if isinstance(model, GeneralizedRCNN):
        return _TwoStage(model)
    if is_torchvision_detector(model):
        return _OneStage(model)
    if not callable(model):
        raise SaliencyError(f"the detector must be callable; got {type(model).__name__}")
    return lambda images: check_detections(model(images), images.shape[0])


class _OneStage:
    def __init__(self, model: nn.Module):
        self.model = model
        self.classes = num_classes(model) or 91

    def __call__(self, images: torch.Tensor) -> list[Detections]:
        outputs = self.model(list(images))
        return [_from_dict(o, F.one_hot(o["labels"], self.classes).float() * o["scores"][:, None])
                for o in outputs]


class _TwoStage:
    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, images: torch.Tensor) -> list[Detections]:
        heads = self.model.roi_heads
        seen: dict[str, Any] = {}

        def proposals(_module, args):
            seen["counts"] = [len(p) for p in args[1]]

        def logits(_module, _inputs, output):
            seen["logits"] = output[0]

        handles = [heads.register_forward_pre_hook(proposals),
                   heads.box_predictor.register_forward_hook(logits)]
        try:
            outputs = self.model(list(images))
        finally:
            for h in handles:
                h.remove()
        probs = F.softmax(seen["logits"], dim=-1).split(seen["counts"], dim=0)
        return [_from_dict(o, _proposal_probs(o, p)) for o, p in zip(outputs, probs)]


def _proposal_probs(output: dict[str, torch.Tensor], probs: torch.Tensor) -> torch.Tensor:
    """The softmax row whose entry at each detection's label is its score."""
    if len(output["labels"]) == 0:
        return probs.new_zeros((0, probs.shape[1]))
    column = probs[:, output["labels"]]  # [P, K]
    rows = (column - output["scores"][None, :]).abs().argmin(dim=0)
    return probs[rows]


def _from_dict(output: dict[str, torch.Tensor], probs: torch.Tensor) -> Detections:
    return Detections(output["boxes"].float(), output["scores"].float(), probs.float(), output["labels"].long())


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[K,4] x [D,4] xyxy -> [K,D] intersection over union."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-12)
