"""Evaluating a classifier's maps, a batch of images at a time: every map of
those images (all methods) is scored in the same chunked model calls."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import normalize
from ..errors import SaliencyError
from ..methods.registry import as_logits
from .confidence import confidence
from .jobs import Job
from .loading import JobError, Loaded, Outcome, decode, load_map
from .metrics import CURVES, NEEDS_BOXES, Options
from .perturb import Batch, auc, curves, pixel_ranks, substrate
from .pointing import GroundTruth, apart_reason, store_pointing
from .records import MapResult
from .sanity_run import run_sanity

log = logging.getLogger("saliency")


@dataclass
class Maps:
    """The usable maps of a batch, on the device."""

    outcomes: list[Outcome]  # one per map, in order
    pixels: torch.Tensor  # [B,3,H,W] the photos as the model saw them, in [0,1]
    inputs: torch.Tensor  # [B,3,H,W] normalised
    values: torch.Tensor  # [I,H,W]
    image_of: torch.Tensor  # [I]
    targets: torch.Tensor  # [I]
    decoded: list[dict]  # per image: box, size
    y: torch.Tensor | None = None  # [I] probability of each map's class on its image

    def which(self, metrics: tuple[str, ...]) -> list[int]:
        """Indices of the maps that need any of `metrics`."""
        return [i for i, o in enumerate(self.outcomes) if set(o.job.todo) & set(metrics)]


class ClassifierEvaluation:
    def __init__(self, loaded: Loaded, options: Options, out_dir: Path, truth: GroundTruth | None,
                 chunk: int | None = None, progress: Callable[[int], None] | None = None):
        self.loaded, self.options, self.out_dir, self.truth, self.chunk = loaded, options, out_dir, truth, chunk
        self.progress = progress  # told of the inputs scored, chunk by chunk
        self.cfg = loaded.cfg
        self.device = loaded.task.device
        self.warned = False

    def evaluate(self, jobs: list[Job]) -> list[Outcome]:
        """Outcomes of a batch of jobs (the methods of a few images)."""
        outcomes = [Outcome(j) for j in jobs]
        maps = self._gather(outcomes)
        if maps is not None:
            self._base_scores(maps)
            self._curves(maps)
            self._confidence(maps)
            self._pointing(maps)
            if maps.which(("sanity",)):
                run_sanity(self.loaded, maps, self.options)
        return outcomes

    def _gather(self, outcomes: list[Outcome]) -> Maps | None:
        """Decode the photos, read the maps; a job that fails is marked."""
        size = tuple(self.cfg.preprocess.size)
        images: dict[str, int] = {}
        decoded, usable, values = [], [], []
        for outcome in outcomes:
            job = outcome.job
            try:
                if job.record.key not in images:
                    decoded.append(decode(self.loaded, job))
                    images[job.record.key] = len(decoded) - 1
                values.append(load_map(self.out_dir, job, size, detection=False))
                usable.append(outcome)
            except JobError as exc:
                outcome.error = str(exc)
        if not usable:
            return None
        target = [o.job.record.fields["target"] for o in usable]
        for outcome, t in zip(usable, target):
            outcome.maps = [MapResult(cls=int(t["class"]), label=str(t["label"]))]
        uint8 = torch.stack([d["input"].to(self.device) for d in decoded])  # JPEGs may be there already
        return Maps(usable, uint8.float() / 255.0, normalize(uint8, self.cfg.preprocess),
                    torch.from_numpy(np.stack(values)).to(self.device),
                    torch.tensor([images[o.job.record.key] for o in usable], device=self.device),
                    torch.tensor([int(t["class"]) for t in target], device=self.device), decoded)

    def score(self, targets: torch.Tensor, kind: str = "probability"):
        """The score of each input: the probability (or logit) of its map's class."""
        model, channels_last = self.loaded.model, self.cfg.runtime.channels_last

        def run(inputs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            logits = as_logits(model(inputs), inputs.shape[0]).float()
            values = logits.softmax(dim=1) if kind == "probability" else logits
            return values.gather(1, targets[index][:, None])[:, 0]

        return run

    def _base_scores(self, maps: Maps) -> None:
        """Y: each map's class probability on its photo, checked against the
        probability the manifest recorded (another model would differ)."""
        x = maps.inputs
        if self.cfg.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():  # one forward per photo, as explain's
            probs = as_logits(self.loaded.model(x), x.shape[0]).float().softmax(dim=1)
        beyond = [o.job.record.fields["target"]["class"] for o in maps.outcomes
                  if not 0 <= int(o.job.record.fields["target"]["class"]) < probs.shape[1]]
        if beyond:  # checked here: on a GPU an index out of range is an assert that ends the process's CUDA
            raise SaliencyError(f"the maps explain class {beyond[0]}, but the model has {probs.shape[1]} outputs: "
                                "is it the model the maps were made with?")
        maps.y = probs[maps.image_of, maps.targets]
        recorded = torch.tensor([o.job.record.fields["target"].get("prob", np.nan) for o in maps.outcomes],
                                dtype=torch.float32)
        gap = float(torch.nan_to_num((maps.y.cpu() - recorded).abs(), nan=0.0).max())
        if gap > 0.01 and not self.warned:
            self.warned = True
            log.warning("the model gives class probabilities up to %.3f away from those recorded when the maps "
                        "were made: is it the same model (weights, preprocessing, --amp)?", gap)

    def _curves(self, maps: Maps) -> None:
        names = [m for m in CURVES if any(m in o.job.todo for o in maps.outcomes)]
        index = maps.which(tuple(names))
        if not index:
            return
        chosen = torch.tensor(index, device=self.device)
        opts = self.options
        kinds = {"deletion": opts.deletion_substrate, "insertion": opts.insertion_substrate}
        fills = {n: substrate(kinds[n], maps.inputs, self._to_input, opts.seed) for n in names}
        batch = Batch(maps.inputs, maps.image_of[chosen], pixel_ranks(maps.values[chosen]))
        with torch.inference_mode():
            found = curves(self.score(maps.targets[chosen], opts.score), batch, fills, opts.steps, chunk=self.chunk,
                           progress=self.progress)
        for name, values in found.items():
            host = values.double().cpu().numpy()
            for row, i in enumerate(index):
                maps.outcomes[i].curves[name] = host[row:row + 1]
                maps.outcomes[i].maps[0].metrics[name] = float(auc(host[row]))

    def _to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel values in [0,1] -> the model's input (the config's mean and std)."""
        mean = torch.tensor(self.cfg.preprocess.mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.preprocess.std, device=pixels.device).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def _confidence(self, maps: Maps) -> None:
        index = maps.which(("average-drop", "increase"))
        if not index:
            return
        chosen = torch.tensor(index, device=self.device)
        with torch.inference_mode():
            found = confidence(self.score(maps.targets[chosen]), maps.pixels, maps.image_of[chosen],
                               maps.values[chosen], self._to_input, maps.y[chosen], chunk=self.chunk)
        host = {name: v.double().cpu().numpy() for name, v in found.items()}
        for row, i in enumerate(index):
            for name in ("average-drop", "increase"):
                value = float(host[name][row])
                maps.outcomes[i].maps[0].metrics[name] = value if np.isfinite(value) else None

    def _pointing(self, maps: Maps) -> None:
        index = maps.which(NEEDS_BOXES)
        if not index or self.truth is None:
            return
        values = maps.values[torch.tensor(index, device=self.device)].cpu().numpy()
        for row, i in enumerate(index):
            outcome = maps.outcomes[i]
            result, job = outcome.maps[0], outcome.job
            decoded = maps.decoded[int(maps.image_of[i])]
            found = self.truth.for_input(job.record.input)
            boxes = found[0].get(result.label.lower(), []) if found else []
            why = apart_reason(self.truth, found, decoded["size"], boxes, f"of class {result.label!r}")
            if why:
                result.apart.update({m: why for m in NEEDS_BOXES})
                continue
            store_pointing(result, values[row], decoded, boxes, self.options.tolerance)
