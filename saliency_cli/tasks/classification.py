"""Classifiers: a batch of images [B,3,H,W] -> class scores [B,K].

The first method's forward pass gives the logits for the top-k predictions
and fixes the explained class; the other methods explain that same class.
Maps stay on the device until one copy per method per batch. The record
adds `predictions` (top-k) and `target` (the class explained).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from ..data import Batch, normalize
from ..errors import SaliencyError
from ..figures import Picture
from ..plan import Work
from ..records import Record
from ..runtime import StopWatch, amp_context, prepare_model
from ..targets import label_of
from .base import Run, Task
from .registry import register


@dataclass
class _Explained:
    """One batch's results on the host."""

    maps: dict[str, np.ndarray]  # method -> float32 [B,H,W] (or [B,C,H,W])
    on_device: dict[str, torch.Tensor]  # the same maps where they were computed
    seconds: dict[str, float]  # method -> seconds per image
    top: list[list[tuple[int, float]]]  # per image: top-k (class, probability)
    targets: list[tuple[int, float]]  # per image: (class explained, its probability)


@register
class Classification(Task):
    name = "classification"
    default_run = ("gradient", "guided-backprop", "grad-cam")

    def prepare(self, model: Any) -> Any:
        return prepare_model(model, self.device, self.cfg.runtime.channels_last)

    def num_classes(self, model: Any) -> int | None:
        """Output width, from one small forward."""
        size = self.cfg.preprocess.size
        with torch.no_grad():
            try:
                out = model(torch.zeros(1, 3, *size, device=self.device))
            except Exception as exc:  # every image would fail alike: say it once
                raise SaliencyError(f"the model cannot run on a 1x3x{size[0]}x{size[1]} input "
                                    f"(preprocess.size): {type(exc).__name__}: {exc}") from exc
        return out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() == 2 else None

    def explain(self, batch: Batch, run: Run) -> None:
        works = [run.work[it["index"]] for it in batch.ok]
        names = list(dict.fromkeys(n for w in works for n in w.methods))
        with run.profile.timed("transfer"):
            x = normalize(batch.inputs.to(self.device, non_blocking=True), self.cfg.preprocess)
            if self.cfg.runtime.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        with run.profile.timed("attribution"):
            explained = self._attribute(x, names, run)
        for i, (it, work) in enumerate(zip(batch.ok, works)):
            self._submit(run, it, work, explained, i)

    def _submit(self, run: Run, it: dict, work: Work, explained: _Explained, i: int) -> None:
        """Image i's record and file jobs, to the writer."""
        record = self.new_record(work, it)
        record.fields["predictions"] = [_prediction(run, c, p) for c, p in explained.top[i]]
        record.fields["target"] = _prediction(run, *explained.targets[i], explained=True)
        record.seconds.update({n: explained.seconds[n] for n in work.methods})
        jobs, panels, pictures = [], {}, []
        for name in work.methods:
            bound, values = run.methods[name], explained.maps[name][i]
            record.outputs[name] = files = self.expected_files(work.item.key, name)
            if files.npy:
                files.describe(values)
                jobs.append(partial(run.writer.save_npy, files.npy, values))
            shown = values if run.figures.device is None else explained.on_device[name][i]
            pictures += [Picture(rel, bound.method, bound.params, shown) for rel in files.pngs]
        jobs += run.figures.jobs(pictures, it, panels)
        if self.cfg.output.grid:
            jobs.append(run.figures.grid_job(record, it, panels, _caption))
        held = sum(explained.maps[name][i].nbytes for name in work.methods) + run.figures.held(pictures, it)
        run.writer.submit(record, jobs, nbytes=self.photo_bytes(it) + held, replaces=work.replaced)

    def _attribute(self, x: torch.Tensor, names: list[str], run: Run) -> _Explained:
        size = x.shape[0]
        targets = None if run.target is None else torch.full((size,), run.target, device=self.device)
        watch, maps, logits = StopWatch(self.device), {}, None
        for name in names:
            bound = run.methods[name]
            with amp_context(self.device, self.cfg.runtime.amp):
                result = bound.method.run(run.model, x, targets, bound.params)
            targets = result.targets  # later methods explain the same class
            logits = result.logits if logits is None else logits
            maps[name] = result.maps
            watch.lap(name)
        probs = logits.float().softmax(dim=1)
        top_p, top_c = probs.topk(min(self.cfg.runtime.top_k, probs.shape[1]), dim=1)
        target_p = probs.gather(1, targets[:, None])[:, 0]
        # the only device -> host copies of the batch
        host = {name: m.detach().cpu().numpy() for name, m in maps.items()}  # float32 (Method.run)
        top = [list(zip(c, p)) for c, p in zip(top_c.cpu().tolist(), top_p.cpu().tolist())]
        chosen = list(zip(targets.cpu().tolist(), target_p.cpu().tolist()))
        seconds = {name: round(s / size, 5) for name, s in watch.seconds().items()}
        return _Explained(host, maps, seconds, top, chosen)


def _prediction(run: Run, index: int, prob: float, explained: bool = False) -> dict[str, Any]:
    return {"class": index, "label": label_of(run.labels, index, explained=explained), "prob": round(prob, 6)}


def _caption(record: Record, rel: str | None) -> str:
    """Grid subtitle: the photo's top-1, or the class a map explains."""
    if rel is None:
        top = record.fields["predictions"][0]
        return f"top-1: {top['label']} {top['prob']:.2f}"
    return f"{record.fields['target']['label']} {record.fields['target']['prob']:.2f}"
