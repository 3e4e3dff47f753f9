"""The model, the photos and the maps, as `saliency explain` had them: the
config's task prepares the model and decodes each photo (the same code and
the same seed as the run that made the maps), and relative paths mean what
they meant in the folder that run was started in."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import tasks
from ..data import collate
from ..discovery import InputItem
from ..models import load_model
from ..recorded import RecordedConfig, working_dir
from ..targets import load_labels, parse_target
from .jobs import Job
from .records import MapResult


class JobError(Exception):
    """One image and method cannot be evaluated: recorded, and the run goes on."""


@dataclass
class Outcome:
    """What evaluating one job gave."""

    job: Job
    maps: list[MapResult] = field(default_factory=list)
    curves: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> [maps, steps + 1]
    error: str | None = None


@dataclass
class Loaded:
    """A group's model as its task prepared it, with its labels."""

    task: Any  # tasks.Task
    model: Any
    labels: list[str] | None
    target: int | None  # --target of the run: a class index, or None (each image's top-1)
    source: RecordedConfig
    cascade: Any = None  # the sanity check's randomisable copy of the model, made when first needed

    @property
    def cfg(self) -> Any:
        return self.source.config


def load_group(source: RecordedConfig, device: torch.device) -> Loaded:
    """Build and prepare the model exactly as `saliency explain` did."""
    cfg = source.config
    task = tasks.get(cfg.task)(cfg, device)
    with working_dir(source.cwd):
        torch.manual_seed(cfg.runtime.seed)  # randomly initialised layers come out the same
        model = task.prepare(load_model(cfg.model))
        labels = load_labels(cfg.labels, num_classes=task.num_classes(model) if cfg.labels == "auto" else None)
    return Loaded(task, model, labels, parse_target(cfg.runtime.target, labels), source)


def input_path(path: str, cwd: str) -> str:
    """An input of the manifest: relative to the folder explain ran in."""
    if os.path.isabs(path) or not cwd:
        return path
    candidate = os.path.join(cwd, path)
    return candidate if os.path.exists(candidate) or not os.path.exists(path) else path


def decode(loaded: Loaded, job: Job) -> dict[str, Any]:
    """The photo of a job, decoded and preprocessed by the task's own
    dataset, as `saliency explain` did (a JPEG on the device where its run
    decoded there): {"input": uint8 [3,H,W], "box", "size"}; JobError if it
    fails or the photo is not the one the maps were made of."""
    record = job.record
    item = InputItem(path=input_path(record.input, job.source.cwd), key=record.key)
    dataset = loaded.task.dataset([item], keep_original=False)
    batch = dataset.finish(collate([dataset[0]]))  # a JPEG read for the device is decoded there
    (decoded,) = batch.ok or batch.failed
    if decoded["error"] is not None:
        raise JobError(f"{item.path}: {decoded['error']}")
    if record.size is not None and list(decoded["size"]) != list(record.size):
        raise JobError(f"{item.path} is {decoded['size'][0]}x{decoded['size'][1]} now, "
                       f"{record.size[0]}x{record.size[1]} when its maps were made")
    return decoded


def load_map(out_dir: Path, job: Job, size: tuple[int, int], detection: bool) -> np.ndarray:
    """The stored map(s) as float32: [H,W] for a classifier (a [3,H,W] map
    reduced by max-abs), [K,H,W] for a detector; at the model-input size."""
    path = Path(out_dir) / job.npy
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise JobError(f"cannot read {path}: {exc}") from None
    values = np.asarray(values, dtype=np.float32)
    if not detection and values.ndim == 3:
        values = np.abs(values).max(axis=0)
    want = 3 if detection else 2
    if values.ndim != want or tuple(values.shape[-2:]) != tuple(size):
        shape = "x".join(map(str, values.shape))
        raise JobError(f"{path}: a {shape} map, expected {'K x ' if detection else ''}{size[0]}x{size[1]} "
                       "(the model-input size; maps made with upsample: false cannot be evaluated)")
    if not np.isfinite(values).all():
        raise JobError(f"{path}: the map has NaN or infinite values")
    return values
