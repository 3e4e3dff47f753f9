"""Evaluating a detector's D-RISE maps, one photo at a time (photos differ
in size): every explained detection of every method of the photo is scored
in the same chunked detector calls.

The score of a perturbed photo for detection t is the D-RISE similarity the
method uses, max_j IoU(b_t, b_j) * cos(P_t, P_j) * O_j over the detections
j of that photo (methods/d_rise.similarity). t's class vector P_t is not in
the manifest: the detector is run on the photo again and each recorded
detection is matched to the new detection of its class with the highest
IoU, which must be at least 0.9. The pointing games match each detection to
the ground-truth box of its class with the highest IoU, at least 0.5.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..detection import Detections, box_iou
from ..methods.d_rise import similarity
from .jobs import Job
from .loading import JobError, Loaded, Outcome, decode, load_map
from .metrics import CURVES, NEEDS_BOXES, Options
from .perturb import Batch, auc, curves, pixel_ranks, substrate
from .pointing import GroundTruth, apart_reason, best_match, store_pointing
from .records import MapResult

SAME_DETECTION_IOU = 0.9
GROUND_TRUTH_IOU = 0.5


class DetectorEvaluation:
    def __init__(self, loaded: Loaded, options: Options, out_dir: Path, truth: GroundTruth | None,
                 chunk: int | None = None, progress: Callable[[int], None] | None = None):
        self.loaded, self.options, self.out_dir, self.truth, self.chunk = loaded, options, out_dir, truth, chunk
        self.progress = progress  # told of the inputs scored, chunk by chunk
        self.detector = loaded.task.detector
        self.device = loaded.task.device

    def evaluate(self, jobs: list[Job]) -> list[Outcome]:
        by_image: dict[str, list[Outcome]] = {}
        for job in jobs:
            by_image.setdefault(job.record.key, []).append(Outcome(job))
        for outcomes in by_image.values():
            try:
                self._photo(outcomes)
            except JobError as exc:
                for outcome in outcomes:
                    outcome.error = str(exc)
        return [o for outcomes in by_image.values() for o in outcomes]

    def _photo(self, outcomes: list[Outcome]) -> None:
        decoded = decode(self.loaded, outcomes[0].job)
        image = decoded["input"].to(self.device).float() / 255.0
        with torch.inference_mode():
            fresh = self.detector(image[None])[0]
        rows, values, targets = [], [], []  # (outcome, detection index) per map, its map, its new detection
        for outcome in outcomes:
            try:
                maps = load_map(self.out_dir, outcome.job, tuple(image.shape[-2:]), detection=True)
                found = self._match(outcome, fresh, decoded["size"], tuple(image.shape[-2:]), len(maps))
            except JobError as exc:
                outcome.error = str(exc)
                continue
            for k, match in enumerate(found):
                if match is None:
                    outcome.maps[k].apart.update({m: "the detector does not find this detection again"
                                                  for m in outcome.job.todo})
                    continue
                rows.append((outcome, k))
                values.append(maps[k])
                targets.append(match)
        if rows:
            self._curves(image, rows, np.stack(values), fresh.select(torch.tensor(targets, device=self.device)))
            self._pointing(rows, values, decoded)

    def _match(self, outcome: Outcome, fresh: Detections, photo: tuple[int, int], size: tuple[int, int],
               count: int) -> list[int | None]:
        """The recorded detections (as MapResults), each with the index of its
        new detection (None when the detector no longer finds it)."""
        recorded = outcome.job.record.fields.get("detections") or []
        if len(recorded) != count:
            raise JobError(f"{outcome.job.npy} has {count} maps for {len(recorded)} recorded detections")
        outcome.maps = [MapResult(cls=int(d["class"]), label=str(d["label"]), index=int(d["index"]),
                                  box=list(d["box"])) for d in recorded]
        if not len(fresh):
            return [None] * len(recorded)
        scale = torch.tensor([size[1] / photo[0], size[0] / photo[1]] * 2, device=self.device)
        boxes = torch.tensor([d["box"] for d in recorded], device=self.device, dtype=torch.float32) * scale
        iou = box_iou(boxes, fresh.boxes.to(self.device))
        same = torch.tensor([int(d["class"]) for d in recorded], device=self.device)[:, None] == fresh.labels[None]
        best, where = torch.where(same, iou, torch.zeros_like(iou)).max(dim=1)
        return [int(w) if float(b) >= SAME_DETECTION_IOU else None for b, w in zip(best.cpu(), where.cpu())]

    def _curves(self, image: torch.Tensor, rows: list, values: np.ndarray, targets: Detections) -> None:
        names = [m for m in CURVES if any(m in o.job.todo for o, _ in rows)]
        if not names:
            return
        opts, detector = self.options, self.detector
        kinds = {"deletion": opts.deletion_substrate, "insertion": opts.insertion_substrate}
        x = image[None]
        fills = {n: substrate(kinds[n], x, lambda pixels: pixels, opts.seed) for n in names}
        maps = torch.from_numpy(values).to(self.device)
        batch = Batch(x, torch.zeros(len(rows), dtype=torch.long, device=self.device), pixel_ranks(maps))

        def score(inputs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            weights = similarity(targets, detector(inputs))  # [targets, inputs]
            return weights[index, torch.arange(len(index), device=weights.device)]

        with torch.inference_mode():
            found = curves(score, batch, fills, opts.steps, chunk=self.chunk, progress=self.progress)
        found = {n: v.double().cpu().numpy() for n, v in found.items()}
        for name, host in found.items():
            for row, (outcome, k) in enumerate(rows):
                if name not in outcome.curves:
                    outcome.curves[name] = np.full((len(outcome.maps), opts.steps + 1), np.nan)
                outcome.curves[name][k] = host[row]
                outcome.maps[k].metrics[name] = float(auc(host[row]))

    def _pointing(self, rows: list, values: list[np.ndarray], decoded: dict) -> None:
        if self.truth is None:
            return
        for (outcome, k), values_k in zip(rows, values):
            if not set(outcome.job.todo) & set(NEEDS_BOXES):
                continue
            result = outcome.maps[k]
            found = self.truth.for_input(outcome.job.record.input)
            boxes = found[0].get(result.label.lower(), []) if found else []
            matched = best_match(result.box, boxes, GROUND_TRUTH_IOU) if boxes else None
            what = f"of class {result.label!r}" + (" with IoU >= 0.5" if boxes else "")
            why = apart_reason(self.truth, found, decoded["size"], [matched] if matched else [], what)
            if why:
                result.apart.update({m: why for m in NEEDS_BOXES})
                continue
            store_pointing(result, values_k, decoded, [matched], self.options.tolerance)
