"""The Ultralytics source: `model: {ultralytics: FILE, kwargs: {...}}` with
`task: detection`. FILE is a trained detection model (`best.pt`, or one
downloaded from Ultralytics) or a model definition (`yolov8n.yaml`, random
weights). An Ultralytics `.pt` is a pickle: loading it runs code from the
file, so it needs `model.trust_checkpoint: true`, as any pickled model does.

`kwargs` set the detector's NMS (yolo.py): `conf` (0.25), `iou` (0.7),
`max_det` (300) and `imgsz` (640); `preprocess.max_size` defaults to `imgsz`. Ultralytics is an optional extra
(`pip install 'saliency-cli[ultralytics]'`, AGPL-3.0 licensed), imported
only here, when a config names such a model.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SaliencyError
from .sources import register

if TYPE_CHECKING:
    from ..config import ModelConfig


def _preprocess(cfg: ModelConfig) -> tuple[str, dict[str, Any]]:
    """Photos reach the detector with their longer side at most `imgsz`, as
    Ultralytics letterboxes them (masks at a larger size would only cost
    time); smaller ones are enlarged inside the detector, as Ultralytics does."""
    return "the Ultralytics model's imgsz", {"max_size": int(cfg.kwargs.get("imgsz", 640))}


@register("ultralytics", task="detection", preprocess=_preprocess)
def build(cfg: ModelConfig) -> Any:
    from ..yolo import UltralyticsDetector

    path = Path(cfg.ultralytics)
    if path.suffix not in (".yaml", ".yml") and not path.is_file():
        raise SaliencyError(f"model.ultralytics: no such file {cfg.ultralytics!r} (a trained .pt, or a model "
                            ".yaml such as yolov8n.yaml for random weights; nothing is downloaded)")
    if path.suffix not in (".yaml", ".yml") and not cfg.trust_checkpoint:
        raise SaliencyError(f"model.ultralytics {cfg.ultralytics!r} is a pickled Ultralytics checkpoint, and "
                            "loading it runs code from the file. If you trust it, set model.trust_checkpoint: true")
    yolo = _load(str(path))
    try:
        return UltralyticsDetector(yolo, **cfg.kwargs)
    except TypeError as exc:
        raise SaliencyError(f"model.kwargs for an Ultralytics model: conf, iou, max_det, imgsz ({exc})") from exc


def _load(path: str) -> Any:
    """YOLO(path), its messages kept off stdout (which --jsonl owns)."""
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")  # it would pip-install packages it misses, mid-run
    with contextlib.redirect_stdout(sys.stderr):
        try:
            from ultralytics import YOLO
        except ImportError as exc:
            raise SaliencyError("model.ultralytics needs the ultralytics package: "
                                "pip install 'saliency-cli[ultralytics]'") from exc
        try:
            return YOLO(path, task="detect")
        except Exception as exc:
            raise SaliencyError(f"model.ultralytics {path!r} cannot be loaded: {type(exc).__name__}: {exc}") from exc
