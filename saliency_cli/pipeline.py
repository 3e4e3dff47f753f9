"""The one loop: discover -> decode (workers) -> device -> methods -> writer.

Classification: per batch, the first method's forward pass gives the logits
for the top-k predictions and fixes the explained class; the other methods
explain that same class. Maps stay on the device until one copy per method
per batch. Detection: one image at a time (sizes differ), its masks batched
on the device. Rendering and writing happen on the writer's threads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from .config import Config
from .data import Batch, ImageDataset, InputItem, discover, make_loader, normalize
from .detection import as_detector, num_classes
from .errors import OutputClosed, SaliencyError, Terminated, did_you_mean, interrupt_code
from .methods import registry
from .models import load_model
from .render import compose_grid, draw_detection, render_heatmap
from .targets import label_of, load_labels, parse_target
from .writer import (
    MANIFEST,
    PART,
    Writer,
    finish_shard,
    finished_methods,
    output_files,
    read_manifest,
    recorded_files,
)

log = logging.getLogger("saliency")


@dataclass
class RunSummary:
    found: int = 0
    skipped: int = 0  # already done by an earlier run
    ok: int = 0
    failed: int = 0
    interrupted: int = 0  # 130 after Ctrl-C, 143 after SIGTERM, 141 when --jsonl's reader left
    stopped_early: bool = False  # --fail-fast met a failure
    seconds: float = 0.0
    merged: bool = False  # this shard merged the manifest parts

    @property
    def remaining(self) -> int:
        """Images this run was to do and did not (after an interruption or --fail-fast)."""
        return self.found - self.skipped - self.ok - self.failed

    @property
    def stop_level(self) -> int:
        """How loudly to report an interruption: a --jsonl reader that left is
        routine in pipelines, quiet as on SIGPIPE (shown without --quiet)."""
        return logging.INFO if self.interrupted == OutputClosed.exit_code else logging.WARNING

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return self.interrupted
        return 1 if self.failed else 0


def resolve_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    """--shard K/N, else torchrun's RANK / WORLD_SIZE, else no sharding."""
    if shard is not None:
        k, n = shard
        if not 0 <= k < n:
            raise SaliencyError(f"--shard K/N needs 0 <= K < N, got {k}/{n}")
        return shard if n > 1 else None
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is not None and world is not None and int(world) > 1:
        return int(rank), int(world)
    return None


@dataclass
class _Work:
    item: InputItem
    methods: list[str]  # methods still to compute for this image
    previous: dict[str, Any] = field(default_factory=dict)  # outputs kept from earlier runs
    settings: dict[str, str] = field(default_factory=dict)  # settings digest of every method in the record


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        local = os.environ.get("LOCAL_RANK")  # under torchrun each process takes its own GPU
        return torch.device("cuda", int(local) % torch.cuda.device_count() if local else 0)
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


def prepare_model(model: Any, device: torch.device, channels_last: bool = False) -> Any:
    """The CLI owns this model: eval mode and frozen weights once, for good;
    channels-last weights when asked (benchmarks: faster or equal on every
    convnet measured)."""
    if not isinstance(model, nn.Module):
        return model
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def amp_context(device: torch.device, enabled: bool):
    """--amp: autocast to bfloat16 (float16 on GPUs without bfloat16). It
    changes maps slightly: see benchmarks/amp_fidelity.py and the README."""
    dtype = torch.bfloat16
    if enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


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
    shard: tuple[int, int] | None = None,
    fail_fast: bool = False,
) -> RunSummary:
    """Explain every image under `paths` that `out_dir` does not hold yet."""
    start = time.perf_counter()
    shard = resolve_shard(shard)
    names = _method_names(cfg, methods)
    params = {name: cfg.method_params(name) for name in names}  # validates before any work
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    device = resolve_device(cfg.runtime.device)  # a bad --device is an error even when nothing is left to do
    items = _inputs(paths, stdin, shard, out_dir)
    work = _plan(items, {name: settings_digest(cfg, params[name]) for name in names}, out_dir, cfg, overwrite)
    summary = RunSummary(found=len(items), skipped=len(items) - len(work))
    if summary.skipped:
        log.info("%d of %d image(s) already done in %s; skipping them (--overwrite redoes them)",
                 summary.skipped, summary.found, out_dir)
    if work:
        manifest = MANIFEST if shard is None else PART.format(k=shard[0], n=shard[1])
        writer = partial(Writer, out_dir, manifest=manifest, on_record=on_record)
        _explain(cfg, device, work, names, params, writer, summary, progress=progress, fail_fast=fail_fast)
        summary.seconds = time.perf_counter() - start
    if not summary.interrupted and not summary.stopped_early:
        _finish(summary, out_dir, shard)
    if cfg.output.report and (shard is None or summary.merged):
        _report(out_dir)
    return summary


def _method_names(cfg: Config, methods: Sequence[str] | None) -> list[str]:
    """-m names (else the config's `run` list), `all` expanded to every method
    of the config's task in registry order, each checked against the task."""
    names = list(dict.fromkeys(methods or cfg.run))
    if "all" in names:
        names = list(dict.fromkeys(n for m in names for n in (registry.names(cfg.task) if m == "all" else [m])))
    for name in names:
        cfg.check_method(name)
    return names


def _check_out_dir(out_dir: Path) -> None:
    """OUT must be a folder we can write in (or one we can create): say so
    before the model loads, not as an internal error at the first write."""
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SaliencyError(f"--out {str(out_dir)!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SaliencyError(f"--out {str(out_dir)!r}: no permission to write in {str(existing)!r}")


def _inputs(paths: Sequence[str], stdin: Iterable[str] | None, shard: tuple[int, int] | None,
            out_dir: Path) -> list[InputItem]:
    """The images found under `paths` (this shard's share of them), outside OUT."""
    found = discover(paths, stdin, exclude=out_dir)
    if found.skipped:
        log.info("skipping %d file(s) that are not images by their suffix (e.g. %s)",
                 len(found.skipped), found.skipped[0])
    if not found.items:
        raise SaliencyError(f"no images found in {' '.join(paths)}")
    if shard is None:
        return found.items
    items = found.items[shard[0]::shard[1]]  # round robin over the sorted list: balanced and deterministic
    log.info("shard %d of %d: %d of %d image(s)", shard[0], shard[1], len(items), len(found.items))
    return items


def _explain(cfg: Config, device: torch.device, work: list[_Work], names: list[str], params: dict[str, Any],
             open_writer: Callable[[], Writer], summary: RunSummary, *, progress: bool, fail_fast: bool) -> None:
    """Load the model, stream the images through the methods into a writer
    (opened once the model is ready: a bad model leaves no output folder)
    and fill in `summary`'s counts."""
    detection = cfg.task == "detection"
    torch.manual_seed(cfg.runtime.seed)  # before building: randomly initialised layers are reproducible
    model = prepare_model(load_model(cfg.model), device, cfg.runtime.channels_last and not detection)
    _check_layers(model, params)
    labels = load_labels(cfg.labels, num_classes=_num_classes(model, cfg, device))
    target = parse_target(cfg.runtime.target, labels)
    log.info("explaining %d image(s) with %s on %s", len(work), ", ".join(names), device)
    dataset = ImageDataset([w.item for w in work], cfg.preprocess, detection=detection,
                           keep_original=cfg.output.png and (cfg.output.overlay or cfg.output.grid))
    loader = make_loader(dataset, batch_size=1 if detection else cfg.runtime.batch_size,
                         workers=cfg.runtime.workers, device_type=device.type)
    try:
        writer = open_writer()
    except OSError as exc:  # what _check_out_dir could not foresee (a read-only mount, a full disk)
        raise SaliencyError(f"--out: cannot write there: {exc.strerror or exc}: {exc.filename}") from exc
    args = (cfg, model, device, params, labels, target, writer, work)
    if detection:
        masks = sum(params[n].num_masks for n in names)
        bar = tqdm(total=len(work) * masks, unit="mask", unit_scale=True, disable=not progress,
                   file=sys.stderr, dynamic_ncols=True)
        step: _Step = _DetectStep(*args, progress=bar.update)
    else:
        bar = tqdm(total=len(work), unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        step = _ClassifyStep(*args)
    try:
        for batch in loader:
            step.safely(batch)
            if not detection:
                bar.update(len(batch.ok) + len(batch.failed))
            if fail_fast and (batch.failed or writer.counts["error"]):
                summary.stopped_early = True
                log.error("stopping at the first failed input (--fail-fast)")
                break
    except KeyboardInterrupt as exc:
        summary.interrupted = interrupt_code(exc)
        log.log(summary.stop_level, "interrupted: finishing the images already computed, then stopping")
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc):
            raise
        raise SaliencyError(
            f"a decoding worker process died ({exc}). In a container this is usually too small a "
            "/dev/shm: give it more (docker run --shm-size=1g) or decode in this process with "
            "--set runtime.workers=0. Finished images are kept; a rerun goes on from there") from exc
    finally:
        bar.close()
        _close(writer, summary)
    summary.ok, summary.failed = writer.counts["ok"], writer.counts["error"]


def _close(writer: Writer, summary: RunSummary) -> None:
    """Flush the writer's last records; a signal arriving meanwhile is noted
    in `summary`, not raised, so no finished image loses its record."""
    with _signals_deferred() as caught:
        try:
            writer.close()
        except KeyboardInterrupt as exc:  # --jsonl's reader left during the flush; every record is in
            summary.interrupted = summary.interrupted or interrupt_code(exc)
    if caught:
        summary.interrupted = summary.interrupted or (Terminated.exit_code if caught[0] == signal.SIGTERM else 130)


@contextmanager
def _signals_deferred():
    """Record SIGINT / SIGTERM instead of raising, for the duration of the
    final flush (only possible in the main thread; elsewhere a no-op)."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {sig: signal.signal(sig, lambda number, frame: caught.append(number))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _finish(summary: RunSummary, out_dir: Path, shard: tuple[int, int] | None) -> None:
    if shard is not None and out_dir.exists():
        summary.merged = finish_shard(out_dir, *shard)
        if summary.merged:
            log.info("all %d shards done: merged their manifests into %s", shard[1], out_dir / MANIFEST)


def _report(out_dir: Path) -> None:
    from .report import write_report  # imported late: only runs with output.report

    write_report(out_dir)


def _check_layers(model: Any, params: dict[str, Any]) -> None:
    """A misspelt layer is a config error: say so before any image is read."""
    for name, p in params.items():
        layer = getattr(p, "layer", None)
        if layer is None or not isinstance(model, nn.Module):
            continue
        try:
            model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            message = did_you_mean(layer, names, what="layer", list_valid=False)
            raise SaliencyError(f"{name}: {message}; `saliency layers` lists the layers") from None


def _num_classes(model: Any, cfg: Config, device: torch.device) -> int | None:
    """Output width, for `labels: auto` (one small forward for classifiers)."""
    if cfg.labels != "auto":
        return None
    if cfg.task == "detection":
        return num_classes(model) if isinstance(model, nn.Module) else None
    with torch.no_grad():
        try:
            out = model(torch.zeros(1, 3, *cfg.preprocess.size, device=device))
        except Exception as exc:  # every image would fail alike: say it once
            raise SaliencyError(f"the model cannot run on a 1x3x{cfg.preprocess.size[0]}x{cfg.preprocess.size[1]} "
                                f"input (preprocess.size): {type(exc).__name__}: {exc}") from exc
    return out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() == 2 else None


def _expected_files(key: str, name: str, cfg: Config) -> dict[str, str]:
    """Files known before a run; a detection method's PNGs (one per detection)
    are known from its record."""
    if cfg.task == "detection":
        return output_files(key, name, png=False, npy=cfg.output.npy)
    return output_files(key, name, png=cfg.output.png, npy=cfg.output.npy)


def settings_digest(cfg: Config, params: Any) -> str:
    """What one method's outputs depend on, hashed: the model (and its
    checkpoint file's size and time), preprocessing, target, seed, --amp, the
    method's parameters and how its PNG is drawn. A rerun into the same
    folder redoes the methods whose digest changed."""
    model = dataclasses.asdict(cfg.model)
    if cfg.model.checkpoint and os.path.isfile(cfg.model.checkpoint):
        stat = os.stat(cfg.model.checkpoint)
        model["checkpoint_file"] = [stat.st_size, stat.st_mtime_ns]
    out = cfg.output
    settings = {"model": model, "preprocess": dataclasses.asdict(cfg.preprocess), "target": cfg.runtime.target,
                "seed": cfg.runtime.seed, "amp": cfg.runtime.amp, "params": dataclasses.asdict(params),
                "png": [out.overlay, out.alpha, out.colormap, out.clip_percentile]}
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plan(items: list[InputItem], digests: dict[str, str], out_dir: Path, cfg: Config,
          overwrite: bool) -> list[_Work]:
    """Which methods each image still needs: those without all their files,
    or made with other settings (all of them with --overwrite). Outputs of
    other methods from earlier runs stay in the image's new record."""
    previous = read_manifest(out_dir)
    names, work, changed = list(digests), [], 0
    for item in items:
        record = previous.get(item.key)
        # without its grid the image is redone whole: the grid shows every method together
        grid_missing = cfg.output.grid and not (record and record.get("grid") and (out_dir / record["grid"]).is_file())
        done = set() if overwrite or grid_missing else finished_methods(
            out_dir, record, {n: _expected_files(item.key, n, cfg) for n in names})
        made_with = (record or {}).get("settings", {})
        stale = {n for n in done if made_with.get(n, digests[n]) != digests[n]}  # older records: no digest
        changed += bool(stale)
        todo = [n for n in names if n not in done or n in stale]
        if todo:
            # outputs of other methods from earlier runs stay part of the image's record
            # (files of methods in `done` were just checked)
            ok = bool(record) and record.get("status") == "ok"
            kept = {n: f for n, f in (record or {}).get("outputs", {}).items()
                    if ok and n not in todo
                    and (n in done or all((out_dir / rel).is_file() for rel in recorded_files(f)))}
            settings = {n: made_with[n] for n in kept if n in made_with} | {n: digests[n] for n in todo}
            work.append(_Work(item, todo, kept, settings))
    if changed:
        log.info("%d image(s) in %s have maps made with other settings (model, preprocessing, target, seed, "
                 "method parameters or PNG style): redoing those maps", changed, out_dir)
    return work


def _photo_bytes(it: dict) -> int:
    """Memory of the decoded photo an item carries for its overlays."""
    return 0 if it["original"] is None else it["original"].numel()


def _class_caption(record: dict[str, Any], rel: str | None) -> str:
    """Grid subtitle: the photo's top-1, or the class a map explains."""
    if rel is None:
        top = record["predictions"][0]
        return f"top-1: {top['label']} {top['prob']:.2f}"
    return f"{record['target']['label']} {record['target']['prob']:.2f}"


def _detection_caption(record: dict[str, Any], rel: str | None) -> str:
    if rel is None:
        return f"{len(record['detections'])} detection(s) explained"
    return next((f"{d['label']} {d['score']:.2f}" for d in record["detections"] if d.get("png") == rel), "")


class _Step:
    """State shared by the per-batch steps of a run."""

    def __init__(self, cfg, model, device, params, labels, target, writer, work):
        self.cfg, self.model, self.device = cfg, model, device
        self.params, self.labels, self.target = params, labels, target
        self.writer, self.work = writer, work

    def safely(self, batch: Batch) -> None:
        """Explain a batch; an unexpected failure is recorded against its
        images (one odd image must not end a long run), except with --debug."""
        try:
            self(batch)
        except (SaliencyError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if log.isEnabledFor(logging.DEBUG):
                raise
            self.record_failures(batch, f"explaining failed: {type(exc).__name__}: {exc}")

    def __call__(self, batch: Batch) -> None:
        raise NotImplementedError

    def record_failures(self, batch: Batch, error: str | None = None) -> None:
        """The batch's undecodable items (each step's first act), or with
        `error` its decoded items, when explaining them failed."""
        for it in batch.ok if error else batch.failed:
            item = self.work[it["index"]].item
            self.writer.submit({"input": item.path, "key": item.key, "status": "error",
                                "error": error or it["error"]})

    def base_record(self, work: _Work, it: dict) -> dict[str, Any]:
        return {"input": work.item.path, "key": work.item.key, "status": "ok", "size": list(it["size"]),
                "outputs": dict(work.previous), "settings": dict(work.settings)}

    def png(self, name: str, rel: str, values: np.ndarray, it: dict, panels: dict,
            detection: tuple[list[float], str] | None = None) -> None:
        """Render one map as OUT/<rel> (over the photo unless --no-overlay),
        outlining `detection` (box in photo pixels, label) if given; the
        image is kept in `panels` for the grid."""
        if values.ndim == 3:  # reduce: none keeps channels; show the max-abs view
            values = np.abs(values).max(axis=0)
        method, out = registry.get(name), self.cfg.output
        style, percentile = method.display(self.params[name])
        original = it["original"].numpy() if it["original"] is not None and out.overlay else None
        image = render_heatmap(values, style=style, colormap=out.colormap, size=tuple(it["size"]), box=it["box"],
                               original=original, alpha=out.alpha, percentile=out.clip_percentile or percentile,
                               weighted=method.pixel_space)
        if detection is not None:
            image = draw_detection(image, *detection)
        panels[rel] = image
        self.writer.save_png(rel, image)

    def grid_job(self, record: dict, it: dict, panels: dict[str, Any], caption: Callable) -> Callable:
        """The job writing OUT/<key>/grid.png from the panels the image's PNG
        jobs rendered before it (outputs of earlier runs are read back)."""
        record["grid"] = f"{record['key']}/grid.png"

        def job() -> None:
            photo = Image.fromarray(it["original"].numpy())
            cells = [(photo, Path(record["input"]).name, caption(None))]
            for name, files in record["outputs"].items():
                for rel in files["png"] if isinstance(files.get("png"), list) else [files.get("png")]:
                    if rel is None:
                        continue
                    image = panels.get(rel)
                    if image is None:
                        with Image.open(self.writer.out / rel) as stored:
                            image = stored.convert("RGB")
                    cells.append((image, name, caption(rel)))
            self.writer.save_png(record["grid"], compose_grid(cells))

        return job


class _ClassifyStep(_Step):
    def __call__(self, batch: Batch) -> None:
        self.record_failures(batch)
        if not batch.ok:
            return
        works = [self.work[it["index"]] for it in batch.ok]
        names = list(dict.fromkeys(n for w in works for n in w.methods))
        x = normalize(batch.inputs.to(self.device, non_blocking=True), self.cfg.preprocess)
        if self.cfg.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        size = x.shape[0]
        targets = None if self.target is None else torch.full((size,), self.target, device=self.device)
        maps, seconds, logits = {}, {}, None
        for name in names:
            t0 = time.perf_counter()
            with amp_context(self.device, self.cfg.runtime.amp):
                result = registry.get(name).run(self.model, x, targets, self.params[name])
            targets = result.targets  # later methods explain the same class
            logits = result.logits if logits is None else logits
            maps[name] = result.maps
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds[name] = round((time.perf_counter() - t0) / size, 5)
        probs = logits.float().softmax(dim=1)
        top_p, top_c = probs.topk(min(self.cfg.runtime.top_k, probs.shape[1]), dim=1)
        target_p = probs.gather(1, targets[:, None])[:, 0]
        # the only device -> host copies of the batch
        host = {name: m.detach().cpu().numpy() for name, m in maps.items()}  # float32 (Method.run)
        top_p, top_c = top_p.cpu().tolist(), top_c.cpu().tolist()
        target_c, target_p = targets.cpu().tolist(), target_p.cpu().tolist()
        for i, (it, work) in enumerate(zip(batch.ok, works)):
            record = self.base_record(work, it)
            record["predictions"] = [{"class": c, "label": label_of(self.labels, c), "prob": round(p, 6)}
                                     for c, p in zip(top_c[i], top_p[i])]
            record["target"] = {"class": target_c[i], "label": label_of(self.labels, target_c[i]),
                                "prob": round(target_p[i], 6)}
            record["seconds"] = {"decode": round(it["decode_seconds"], 5), **{n: seconds[n] for n in work.methods}}
            jobs, panels = [], {}
            for name in work.methods:
                files = _expected_files(work.item.key, name, self.cfg)
                record["outputs"][name] = files
                if "npy" in files:
                    jobs.append(partial(self.writer.save_npy, files["npy"], host[name][i]))
                if "png" in files:
                    jobs.append(partial(self.png, name, files["png"], host[name][i], it, panels))
            if self.cfg.output.grid:
                jobs.append(self.grid_job(record, it, panels, partial(_class_caption, record)))
            held = sum(host[name][i].nbytes for name in work.methods)
            self.writer.submit(record, jobs, nbytes=_photo_bytes(it) + held)

class _DetectStep(_Step):
    def __init__(self, *args, progress: Callable[[int], None]):
        super().__init__(*args)
        self.detector = as_detector(self.model)
        self.progress = progress  # counts masks

    def __call__(self, batch: Batch) -> None:
        self.record_failures(batch)
        for it, image in zip(batch.ok, [] if batch.inputs is None else batch.inputs):
            work = self.work[it["index"]]
            image = image.to(self.device, non_blocking=True).float() / 255.0
            record = self.base_record(work, it)
            record["seconds"] = {"decode": round(it["decode_seconds"], 5)}
            jobs, panels, held = [], {}, _photo_bytes(it)
            for name in work.methods:
                t0 = time.perf_counter()
                explained = registry.get(name).compute(self.detector, image, self.target, self.params[name],
                                                       self.progress)
                record["seconds"][name] = round(time.perf_counter() - t0, 5)
                if not len(explained.detections):
                    log.info("%s: %s found no detection with score >= %s to explain", work.item.path, name,
                             self.params[name].score_threshold)
                jobs += self._outputs(name, explained, image.shape[-2:], it, work, record, panels)
                held += explained.maps.numel() * 4  # float32 on the host
            if self.cfg.output.grid:
                jobs.append(self.grid_job(record, it, panels, partial(_detection_caption, record)))
            self.writer.submit(record, jobs, nbytes=held)

    def _outputs(self, name, explained, input_size, it, work, record, panels) -> list:
        dets = explained.detections.to(torch.device("cpu"))
        maps = explained.maps.float().cpu().numpy()
        width, height = it["size"]
        scale = np.array([width / input_size[1], height / input_size[0]] * 2)  # input -> photo pixels
        key, out = work.item.key, self.cfg.output
        jobs: list = []
        files: dict[str, Any] = _expected_files(key, name, self.cfg)
        if "npy" in files:
            jobs.append(partial(self.writer.save_npy, files["npy"], maps))
        record["detections"] = []
        pngs = []
        for k in range(len(dets)):
            box = (dets.boxes[k].numpy() * scale).round(2).tolist()
            label = label_of(self.labels, int(dets.labels[k]))
            entry = {"index": k, "box": box, "class": int(dets.labels[k]), "label": label,
                     "score": round(float(dets.scores[k]), 6)}
            if out.png:
                entry["png"] = f"{key}/{name}-{k}.png"
                pngs.append(entry["png"])
                text = f"{label} {float(dets.scores[k]):.2f}"
                jobs.append(partial(self.png, name, entry["png"], maps[k], it, panels, (box, text)))
            record["detections"].append(entry)
        if out.png:
            files["png"] = pngs
        record["outputs"][name] = files
        return jobs
