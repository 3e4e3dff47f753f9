"""The one loop: discover -> plan -> load -> stream -> close.

It knows no task and no method by name: the config's task (tasks/) says
how a batch is decoded and explained, what the progress bar counts and what
each record holds; each method (methods/) says what it needs. Decoding runs
in DataLoader workers, rendering and writing on the writer's threads.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from . import tasks
from .config import Config
from .data import make_loader
from .discovery import InputItem, discover
from .errors import OutputClosed, SaliencyError, Terminated, interrupt_code
from .figures import Figures
from .methods import registry
from .models import load_model
from .outputs import MANIFEST, manifest_name
from .plan import Work, plan, settings_digest
from .recorded import save_settings
from .records import Record, finish_shard
from .report import write_report
from .runtime import resolve_device, resolve_shard, signals_deferred
from .targets import load_labels, parse_target
from .writer import Writer

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


def run(
    cfg: Config,
    paths: Sequence[str],
    out_dir: Path,
    *,
    methods: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    stdin: Iterable[str] | None = None,
    on_record: Callable[[Record], None] | None = None,
    shard: tuple[int, int] | None = None,
    fail_fast: bool = False,
) -> RunSummary:
    """Explain every image under `paths` that `out_dir` does not hold yet."""
    start = time.perf_counter()
    shard = resolve_shard(shard)
    bound = _bind(cfg, methods)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    device = resolve_device(cfg.runtime.device)  # a bad --device is an error even when nothing is left to do
    task = tasks.get(cfg.task)(cfg, device)
    items = _inputs(paths, stdin, shard, out_dir)
    digests = {name: settings_digest(cfg, b.params) for name, b in bound.items()}
    work = plan(items, digests, out_dir, expected=task.expected_files, grid=cfg.output.grid, overwrite=overwrite)
    summary = RunSummary(found=len(items), skipped=len(items) - len(work))
    if summary.skipped:
        log.info("%d of %d image(s) already done in %s; skipping them (--overwrite redoes them)",
                 summary.skipped, summary.found, out_dir)
    if work:
        writer = partial(Writer, out_dir, manifest=manifest_name(shard), on_record=on_record)
        _explain(task, work, bound, writer, summary, progress=progress, fail_fast=fail_fast)
        summary.seconds = time.perf_counter() - start
    elif out_dir.is_dir():  # nothing to do: still record the config (for `saliency evaluate`)
        save_settings(out_dir, cfg, {name: b.params for name, b in bound.items()})
    if not summary.interrupted and not summary.stopped_early:
        _finish(summary, out_dir, shard)
    if cfg.output.report and (shard is None or summary.merged):
        write_report(out_dir)
    return summary


def _bind(cfg: Config, methods: Sequence[str] | None) -> dict[str, tasks.Bound]:
    """-m names (else the config's `run` list), `all` expanded to every method
    of the config's task in registry order, each checked against the task,
    with its parameters (validated when the config was)."""
    names = list(dict.fromkeys(methods or cfg.run))
    if "all" in names:
        names = list(dict.fromkeys(n for m in names for n in (registry.names(cfg.task) if m == "all" else [m])))
    for name in names:
        cfg.check_method(name)
    return {name: tasks.Bound(registry.get(name), cfg.method_params(name)) for name in names}


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


def _explain(task: tasks.Task, work: list[Work], bound: dict[str, tasks.Bound], open_writer: Callable[[], Writer],
             summary: RunSummary, *, progress: bool, fail_fast: bool) -> None:
    """Load the model, stream the images through the task into a writer
    (opened once the model is ready: a bad model leaves no output folder)
    and fill in `summary`'s counts."""
    cfg = task.cfg
    torch.manual_seed(cfg.runtime.seed)  # before building: randomly initialised layers are reproducible
    model = task.prepare(load_model(cfg.model))
    task.check(model, bound)
    labels = load_labels(cfg.labels, num_classes=task.num_classes(model) if cfg.labels == "auto" else None)
    target = parse_target(cfg.runtime.target, labels)
    log.info("explaining %d image(s) with %s on %s", len(work), ", ".join(bound), task.device)
    out = cfg.output
    dataset = task.dataset([w.item for w in work], keep_original=out.png and (out.overlay or out.grid))
    loader = make_loader(dataset, batch_size=task.batch_size, workers=cfg.runtime.workers,
                         device_type=task.device.type)
    try:
        writer = open_writer()
        save_settings(writer.out, cfg, {name: b.params for name, b in bound.items()})  # before a record names it
    except OSError as exc:  # what _check_out_dir could not foresee (a read-only mount, a full disk)
        raise SaliencyError(f"--out: cannot write there: {exc.strerror or exc}: {exc.filename}") from exc
    units = sum(task.units([bound[n] for n in w.methods]) for w in work)
    bar = tasks.Progress(units, task.unit, show=progress)
    state = tasks.Run(model, bound, labels, target, work, writer, Figures(out, writer), bar)
    try:
        _stream(loader, task, state, summary, fail_fast)
    finally:
        bar.close()
        _close(writer, summary)
    summary.ok, summary.failed = writer.counts["ok"], writer.counts["error"]


def _stream(loader: Iterable, task: tasks.Task, state: tasks.Run, summary: RunSummary, fail_fast: bool) -> None:
    """Every batch through the task; an interruption is noted in `summary`."""
    try:
        for batch in loader:
            task.explain_safely(batch, state)
            if fail_fast and (batch.failed or state.writer.counts["error"]):
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


def _close(writer: Writer, summary: RunSummary) -> None:
    """Flush the writer's last records; a signal arriving meanwhile is noted
    in `summary`, not raised, so no finished image loses its record."""
    with signals_deferred() as caught:
        try:
            writer.close()
        except KeyboardInterrupt as exc:  # --jsonl's reader left during the flush; every record is in
            summary.interrupted = summary.interrupted or interrupt_code(exc)
    if caught:
        summary.interrupted = summary.interrupted or (Terminated.exit_code if caught[0] == signal.SIGTERM else 130)


def _finish(summary: RunSummary, out_dir: Path, shard: tuple[int, int] | None) -> None:
    if shard is not None and out_dir.exists():
        summary.merged = finish_shard(out_dir, *shard)
        if summary.merged:
            log.info("all %d shards done: merged their manifests into %s", shard[1], out_dir / MANIFEST)
