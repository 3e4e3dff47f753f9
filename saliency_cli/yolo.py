"""Ultralytics detection networks (YOLOv8, YOLO11, ...) behind the detector
protocol, for D-RISE: the network itself is called on whole batches of
masked images (not `predict` per image), and the tool's own NMS keeps each
box's full class-score vector.

For a batch of images [B,3,H,W] in [0,1] (the photo, or a masked copy):
  1. letterbox as Ultralytics predicts: the longer side resized to `imgsz`
     (bilinear, as cv2.INTER_LINEAR), then padded with grey (114) to a
     multiple of the stride, centred;
  2. the network: raw predictions [B, 4 + C, anchors] (box centre and size in
     input pixels, one sigmoid score per class);
  3. per image: boxes whose best class scores above `conf`, NMS per class
     (torchvision batched_nms, IoU `iou`), at most `max_det`; boxes mapped
     back to the given image's pixels and clipped to it.
Each kept box carries `probs` = its C class scores (what D-RISE's cosine term
compares), `score` = the best of them, `label` = its class. These models
have no objectness: D-RISE's O is this score, the confidence Ultralytics
itself ranks and thresholds detections by.

The network is used as given: no module or flag changes (a head exported as
end-to-end, which returns final boxes without class vectors, is switched to
its one-to-many branch for the call only and switched back).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from .detection import Detections, DetectorModule
from .errors import SaliencyError

PAD = 114 / 255.0  # Ultralytics' letterbox grey


def is_ultralytics(model: Any) -> bool:
    return type(model).__module__.split(".")[0] == "ultralytics"


class UltralyticsDetector(DetectorModule):
    """An Ultralytics detection network (`YOLO(...)` or its `.model`) as a detector."""

    def __init__(self, model: Any, *, conf: float = 0.25, iou: float = 0.7, max_det: int = 300,
                 imgsz: int = 640):
        super().__init__()
        net = _network(model)
        if not 0 <= conf <= 1 or not 0 < iou <= 1 or max_det < 1 or imgsz < 32:
            raise SaliencyError("ultralytics: conf must be in [0, 1], iou in (0, 1], max_det >= 1, imgsz >= 32")
        self.net = net
        self.conf, self.iou, self.max_det, self.imgsz = conf, iou, max_det, imgsz
        self.stride = int(max(getattr(net, "stride", torch.tensor([32])).max().item(), 32))
        names = getattr(net, "names", None) or {}
        self.class_names = [str(names[i]) for i in sorted(names)] if isinstance(names, dict) else list(names)

    def forward(self, images: torch.Tensor) -> list[Detections]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise SaliencyError(f"images must be [B,3,H,W]; got {list(images.shape)}")
        height, width = images.shape[-2:]
        boxed, gain, (left, top) = letterbox(images, self.imgsz, self.stride)
        param = next(self.net.parameters(), None)
        dtype = param.dtype if param is not None else boxed.dtype
        with _one_to_many(self.net):
            raw = self.net(boxed.to(dtype))
        raw = (raw[0] if isinstance(raw, (list, tuple)) else raw).float()
        if raw.dim() != 3 or raw.shape[1] < 5:
            raise SaliencyError(f"the Ultralytics model returned {list(raw.shape)}, not [B, 4 + classes, anchors]: "
                                "only detection models are supported")
        return [self._select(pred, gain, left, top, width, height) for pred in raw]

    def _select(self, pred: torch.Tensor, gain: float, left: int, top: int, width: int,
                height: int) -> Detections:
        """NMS on one image's raw predictions [4 + C, anchors], boxes back in its pixels."""
        pred = pred.T
        probs = pred[:, 4:]
        score, label = probs.max(dim=1)
        keep = score > self.conf
        pred, probs, score, label = pred[keep], probs[keep], score[keep], label[keep]
        centre, size = pred[:, :2], pred[:, 2:4]
        boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
        kept = batched_nms(boxes, score, label, self.iou)[: self.max_det]
        boxes = boxes[kept] - boxes.new_tensor([left, top, left, top])
        boxes = boxes / gain
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        return Detections(boxes, score[kept], probs[kept], label[kept])


_DETECT_HEADS = {"Detect", "v10Detect"}  # box + class scores per anchor; Segment, Pose, OBB heads add more


def _network(model: Any) -> nn.Module:
    """The DetectionModel inside `YOLO(...)`, or the model itself; a clear
    error for anything but a detection network."""
    inner = getattr(model, "model", None)
    net = inner if isinstance(inner, nn.Module) and hasattr(inner, "names") else model
    head = net.model[-1] if isinstance(getattr(net, "model", None), nn.Sequential) else None
    if not isinstance(net, nn.Module) or type(head).__name__ not in _DETECT_HEADS:
        kind = type(head).__name__ if head is not None else type(model).__name__
        raise SaliencyError(f"D-RISE explains Ultralytics detection models (a Detect head); this one has {kind}")
    return net


def letterbox(images: torch.Tensor, imgsz: int, stride: int) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """Ultralytics' LetterBox(imgsz, auto=True): images [B,3,H,W] resized so
    the longer side is `imgsz`, padded to a multiple of `stride`, centred.
    Returns the batch, the gain and the (left, top) padding."""
    height, width = images.shape[-2:]
    gain = min(imgsz / height, imgsz / width)
    new_h, new_w = max(round(height * gain), 1), max(round(width * gain), 1)
    if (new_h, new_w) != (height, width):
        images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False)
    pad_w, pad_h = (stride - new_w % stride) % stride / 2, (stride - new_h % stride) % stride / 2
    top, bottom = round(pad_h - 0.1), round(pad_h + 0.1)
    left, right = round(pad_w - 0.1), round(pad_w + 0.1)
    if top or bottom or left or right:
        images = F.pad(images, (left, right, top, bottom), value=PAD)
    return images, gain, (left, top)


@contextmanager
def _one_to_many(net: nn.Module):
    """An end-to-end head returns final boxes without class vectors: use its
    one-to-many branch (raw predictions) for the call, then restore the flag."""
    heads = [m for m in net.modules() if getattr(m, "end2end", False) is True]
    for head in heads:
        head.end2end = False
    try:
        yield
    finally:
        for head in heads:
            head.end2end = True
