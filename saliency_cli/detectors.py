"""Adapters that turn detection models into detectors (see detection.py):

- torchvision two-stage models (Faster/Mask/Keypoint R-CNN) report the full
  softmax class vector of each detection's proposal. It is read from the box
  predictor's logits with a forward hook that lives only for the call, and
  each final detection is matched to its proposal by its score
  (torchvision's scores are entries of that softmax);
- torchvision one-stage models (RetinaNet, FCOS, SSD) compute no such vector
  per detection, so it is the one-hot vector of the label times the score;
- Ultralytics detection networks: yolo.py;
- any other callable is checked against the protocol at every call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .detection import Detections, Detector, DetectorModule, check_detections
from .errors import SaliencyError


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
    if type(model).__module__.split(".")[0] == "ultralytics":  # YOLO(...) or its network
        from .yolo import UltralyticsDetector

        return UltralyticsDetector(model)
    if isinstance(model, DetectorModule):  # already one (the ultralytics model source's)
        return model
    if not callable(model):
        raise SaliencyError(f"the detector must be callable; got {type(model).__name__}")
    return lambda images: check_detections(model(images), images.shape[0], images.device)


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
