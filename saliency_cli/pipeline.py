"""The one loop: discover -> decode (workers) -> device -> methods -> writer.

Per batch, the first method's forward pass gives the logits for the top-k
predictions and fixes the explained class; the other methods explain that
same class. Maps stay on the device until one copy per method per batch;
rendering and writing happen on the writer's threads.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .config import Config
from .data import Batch, ImageDataset, InputItem, discover, make_loader, normalize
from .errors import SaliencyError
from .methods import registry
from .models import load_model
from .render import render_heatmap
from .targets import label_of, load_labels, parse_target, top_k
from .writer import Writer, finished_methods, output_files, read_manifest

log = logging.getLogger("saliency")


@dataclass
class RunSummary:
    found: int = 0
    skipped: int = 0  # already done by an earlier run
    ok: int = 0
    failed: int = 0
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0


@dataclass
class _Work:
    item: InputItem
    methods: list[str]  # methods still to compute for this image
    previous: dict[str, Any] = field(default_factory=dict)  # outputs kept from earlier runs


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise SaliencyError(f"--device: expected auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SaliencyError(f"--device {spec}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SaliencyError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise SaliencyError(f"--device: expected auto, cpu, cuda or cuda:N, got {spec!r}")
    return device


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The CLI owns this model: eval mode and frozen weights once, for good."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device)


def run(
    cfg: Config,
    paths: Sequence[str],
    out_dir: Path,
    *,
    methods: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    stdin: Iterable[str] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    start = time.perf_counter()
    names = list(dict.fromkeys(methods or cfg.run))
    params = {name: cfg.method_params(name) for name in names}  # validates before any work
    out_dir = Path(out_dir)

    found = discover(paths, stdin)
    if found.skipped:
        example = found.skipped[0]
        log.info("skipping %d file(s) that are not images by their suffix (e.g. %s)", len(found.skipped), example)
    if not found.items:
        raise SaliencyError(f"no images found in {' '.join(paths)}")
    work = _plan(found.items, names, out_dir, cfg, overwrite)
    summary = RunSummary(found=len(found.items), skipped=len(found.items) - len(work))
    if summary.skipped:
        log.info("%d of %d image(s) already done in %s; skipping them (--overwrite redoes them)",
                 summary.skipped, summary.found, out_dir)
    if not work:
        return summary

    labels = load_labels(cfg.labels)
    target = parse_target(cfg.runtime.target, labels)
    device = resolve_device(cfg.runtime.device)
    model = prepare_model(load_model(cfg.model), device)
    torch.manual_seed(cfg.runtime.seed)
    log.info("explaining %d image(s) with %s on %s", len(work), ", ".join(names), device)

    dataset = ImageDataset([w.item for w in work], cfg.preprocess,
                           keep_original=cfg.output.png and cfg.output.overlay)
    loader = make_loader(dataset, batch_size=cfg.runtime.batch_size, workers=cfg.runtime.workers,
                         pin_memory=device.type == "cuda")
    writer = Writer(out_dir, on_record=on_record)
    step = _BatchStep(cfg, model, device, params, labels, target, writer, work)
    bar = tqdm(total=len(work), unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        for batch in loader:
            step(batch)
            bar.update(len(batch.ok) + len(batch.failed))
    except KeyboardInterrupt:
        summary.interrupted = True
        log.warning("interrupted: finishing the images already computed, then stopping")
    finally:
        bar.close()
        writer.close()
    summary.ok, summary.failed = writer.counts["ok"], writer.counts["error"]
    summary.seconds = time.perf_counter() - start
    return summary


def _plan(items: list[InputItem], names: list[str], out_dir: Path, cfg: Config,
          overwrite: bool) -> list[_Work]:
    """Which methods each image still needs (all of them with --overwrite)."""
    previous = {} if overwrite else read_manifest(out_dir)
    work = []
    for item in items:
        expected = {n: output_files(item.key, n, png=cfg.output.png, npy=cfg.output.npy) for n in names}
        record = previous.get(item.key)
        done = finished_methods(out_dir, record, expected)
        todo = [n for n in names if n not in done]
        if todo:
            # outputs of other methods from earlier runs stay part of the image's record
            kept = {n: f for n, f in (record or {}).get("outputs", {}).items()
                    if n not in todo and record.get("status") == "ok"
                    and all((out_dir / rel).is_file() for rel in f.values())}
            work.append(_Work(item, todo, kept))
    return work


class _BatchStep:
    """Everything done for one batch; a class only to hold the run's state."""

    def __init__(self, cfg, model, device, params, labels, target, writer, work):
        self.cfg, self.model, self.device = cfg, model, device
        self.params, self.labels, self.target = params, labels, target
        self.writer, self.work = writer, work
        self.checked_labels = False

    def __call__(self, batch: Batch) -> None:
        for it in batch.failed:
            item = self.work[it["index"]].item
            self.writer.submit({"input": item.path, "key": item.key, "status": "error", "error": it["error"]})
        if not batch.ok:
            return
        works = [self.work[it["index"]] for it in batch.ok]
        names = list(dict.fromkeys(n for w in works for n in w.methods))
        x = normalize(batch.inputs.to(self.device, non_blocking=True), self.cfg.preprocess)
        size = x.shape[0]
        targets = None if self.target is None else torch.full((size,), self.target, device=self.device)
        maps, seconds, logits = {}, {}, None
        for name in names:
            t0 = time.perf_counter()
            result = registry.get(name).run(self.model, x, targets, self.params[name])
            targets = result.targets  # later methods explain the same class
            logits = result.logits if logits is None else logits
            maps[name] = result.maps
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds[name] = round((time.perf_counter() - t0) / size, 5)
        self._check_labels(logits)
        probs = logits.float().softmax(dim=1)
        top_p, top_c = top_k(logits, self.cfg.runtime.top_k)
        target_p = probs.gather(1, targets[:, None])[:, 0]
        # the only device -> host copies of the batch
        host = {name: m.detach().float().cpu().numpy() for name, m in maps.items()}
        top_p, top_c = top_p.cpu().tolist(), top_c.cpu().tolist()
        target_c, target_p = targets.cpu().tolist(), target_p.cpu().tolist()
        for i, (it, work) in enumerate(zip(batch.ok, works)):
            record = {
                "input": work.item.path,
                "key": work.item.key,
                "status": "ok",
                "size": list(it["size"]),
                "predictions": [
                    {"class": c, "label": label_of(self.labels, c), "prob": round(p, 6)}
                    for c, p in zip(top_c[i], top_p[i])
                ],
                "target": {"class": target_c[i], "label": label_of(self.labels, target_c[i]),
                           "prob": round(target_p[i], 6)},
                "outputs": dict(work.previous),
                "seconds": {"decode": round(it["decode_seconds"], 5),
                            **{n: seconds[n] for n in work.methods}},
            }
            jobs = []
            for name in work.methods:
                files = output_files(work.item.key, name, png=self.cfg.output.png, npy=self.cfg.output.npy)
                record["outputs"][name] = files
                jobs += self._jobs(name, files, host[name][i], it)
            self.writer.submit(record, jobs)

    def _jobs(self, name: str, files: dict[str, str], values: np.ndarray, it: dict) -> list:
        jobs = []
        if "npy" in files:
            jobs.append(partial(self.writer.save_npy, files["npy"], values))
        if "png" in files:
            jobs.append(partial(self._render, name, files["png"], values, it))
        return jobs

    def _render(self, name: str, rel: str, values: np.ndarray, it: dict) -> None:
        out = self.cfg.output
        if values.ndim == 3:  # reduce: none keeps channels; show the max-abs view
            values = np.abs(values).max(axis=0)
        style, percentile = registry.get(name).display(self.params[name])
        original = it["original"].numpy() if it["original"] is not None else None
        image = render_heatmap(values, style=style, colormap=out.colormap, size=tuple(it["size"]),
                               box=it["box"], original=original, alpha=out.alpha, percentile=percentile)
        self.writer.save_png(rel, image)

    def _check_labels(self, logits: torch.Tensor) -> None:
        if self.checked_labels:
            return
        self.checked_labels = True
        if self.labels is not None and len(self.labels) != logits.shape[1]:
            log.warning("the model has %d outputs but labels has %d names; names may not match",
                        logits.shape[1], len(self.labels))
