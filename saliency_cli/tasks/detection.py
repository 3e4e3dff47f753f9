"""Object detectors: one photo at a time (sizes differ), in [0,1], through
the detector protocol (detection.py); a detection method's masks are
batched on the device. The progress bar counts the methods' units (D-RISE:
masks). The record adds `detections` (box in photo pixels, class, label,
score and PNG of each detection explained); map k of the `.npy` is
detection k's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import Batch, ImageDataset
from ..detection import DetectionExplanation
from ..detectors import as_detector, num_classes
from ..discovery import InputItem
from ..figures import Picture
from ..outputs import detection_png_path, npy_path
from ..plan import Work
from ..records import Files, Record
from ..runtime import StopWatch, prepare_model
from ..targets import label_of
from .base import Bound, Run, Task
from .registry import register

log = logging.getLogger("saliency")


@register
class Detection(Task):
    name = "detection"
    unit = "mask"
    default_run = ("d-rise",)

    def expected_files(self, key: str, method: str) -> Files:
        """The .npy; the PNGs (one per detection) are known from the record."""
        out = self.cfg.output
        return Files(npy=npy_path(key, method) if out.npy else None, many_pngs=out.png)

    def units(self, methods: Sequence[Bound]) -> int:
        return sum(b.units() for b in methods)

    def prepare(self, model: Any) -> Any:
        model = prepare_model(model, self.device)
        self.detector = as_detector(model)
        return model

    def num_classes(self, model: Any) -> int | None:
        return num_classes(model) if isinstance(model, nn.Module) else None

    def dataset(self, items: Sequence[InputItem], keep_original: bool) -> ImageDataset:
        return ImageDataset(items, self.cfg.preprocess, keep_original=keep_original, detection=True,
                            max_side=self.cfg.output.png_max_side, device=self.decode_device)

    @property
    def batch_size(self) -> int:
        return 1

    def explain(self, batch: Batch, run: Run) -> None:
        for it, image in zip(batch.ok, batch.inputs):
            with run.profile.timed("transfer"):
                image = image.to(self.device, non_blocking=True).float() / 255.0
            self._explain_one(it, image, run)

    def _explain_one(self, it: dict, image: torch.Tensor, run: Run) -> None:
        work = run.work[it["index"]]
        record = self.new_record(work, it)
        jobs, panels, held = [], {}, self.photo_bytes(it)
        watch = StopWatch(self.device)
        for name in work.methods:
            bound = run.methods[name]
            with run.profile.timed("attribution"):
                explained = bound.method.run(self.detector, image, run.target, bound.params, run.progress)
            watch.lap(name)
            if not len(explained.detections):
                log.info("%s: %s %s", work.item.path, name, explained.note or "found no detection to explain")
            jobs += self._outputs(run, bound, explained, tuple(image.shape[-2:]), it, work, record, panels)
            held += explained.maps.numel() * 4  # float32 on the host
        record.seconds.update({n: round(s, 5) for n, s in watch.seconds().items()})
        if self.cfg.output.grid:
            jobs.append(run.figures.grid_job(record, it, panels, _caption))
        run.writer.submit(record, jobs, nbytes=held, replaces=work.replaced)

    def _outputs(self, run: Run, bound: Bound, explained: DetectionExplanation, input_size: tuple[int, int],
                 it: dict, work: Work, record: Record, panels: dict) -> list:
        """The method's .npy and one PNG per detection; fills the record."""
        dets = explained.detections.to(torch.device("cpu"))
        maps = explained.maps.float().cpu().numpy()
        width, height = it["size"]
        scale = np.array([width / input_size[1], height / input_size[0]] * 2)  # input -> photo pixels
        record.outputs[bound.name] = files = self.expected_files(work.item.key, bound.name)
        jobs: list = []
        if files.npy:
            files.describe(maps)
            jobs.append(partial(run.writer.save_npy, files.npy, maps))
        record.fields["detections"], pictures = [], []
        shown = maps if run.figures.device is None else explained.maps
        for k in range(len(dets)):
            box = (dets.boxes[k].numpy() * scale).round(2).tolist()
            label, score = label_of(run.labels, int(dets.labels[k]), explained=True), float(dets.scores[k])
            entry = {"index": k, "box": box, "class": int(dets.labels[k]), "label": label, "score": round(score, 6)}
            if files.many_pngs:
                entry["png"] = detection_png_path(work.item.key, bound.name, k)
                files.pngs.append(entry["png"])
                pictures.append(Picture(entry["png"], bound.method, bound.params, shown[k],
                                        (box, f"{label} {score:.2f}")))
            record.fields["detections"].append(entry)
        return jobs + run.figures.jobs(pictures, it, panels)


def _caption(record: Record, rel: str | None) -> str:
    detections = record.fields["detections"]
    if rel is None:
        return f"{len(detections)} detection(s) explained"
    return next((f"{d['label']} {d['score']:.2f}" for d in detections if d.get("png") == rel), "")
