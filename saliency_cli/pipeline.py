"""The one loop: discover -> plan -> load -> stream -> close.

It knows no task and no method by name: the config's task (tasks/) says
how a batch is decoded and explained, what the progress bar counts and what
each record holds; each method (methods/) says what it needs. Decoding runs
in DataLoader workers, rendering and writing on the writer's threads.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from . import png, tasks
from .config import Config
from .discovery import InputItem, discover
from .errors import OutputClosed, SaliencyError, Terminated, interrupt_code, out_of_space, output_full
from .figures import Figures
from .loading import decode_threads, make_loader
from .locking import OutLock
from .methods import registry
from .models import load_model
from .outputs import MANIFEST, check_out_dir, manifest_name
from .plan import Work, narrow, plan, settings_digest
from .profile import Profile
from .recorded import save_settings
from .records import Record, finish_shard
from .report import write_report
from .runtime import resolve_device, resolve_shard, signals_deferred
from .targets import check_labels, load_labels, parse_target
from .writer import Writer, default_threads

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
    profile: Profile = field(default_factory=Profile)  # where the time went (--profile)
    decoders: int = 0  # decoding worker processes (0: the main process decoded)
    decode_threads: int = 1  # threads of the main process that decoded each batch (without worker processes)

    @property
    def decoded_where(self) -> str:
        """Where the images were decoded, as the --profile table says it."""
        if self.decoders:
            return f"in {self.decoders} worker process(es)"
        threads = self.decode_threads
        return f"on {threads} threads of the main process" if threads > 1 else "in the main process"

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
    include_hidden: bool = False,
) -> RunSummary:
    """Explain every image under `paths` that `out_dir` does not hold yet.
    Runs into one `out_dir` take turns (locking.py); a full or read-only
    `out_dir` stops the run with OutputFull, keeping every finished image."""
    shard = resolve_shard(shard)
    bound = _bind(cfg, methods)
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    device = resolve_device(cfg.runtime.device)  # a bad --device is an error even when nothing is left to do
    task = tasks.get(cfg.task)(cfg, device)
    items = _inputs(paths, stdin, shard, out_dir, include_hidden)
    digests = {name: settings_digest(cfg, b.params) for name, b in bound.items()}
    summary = RunSummary(found=len(items))
    lock = OutLock(out_dir)
    try:
        lock.acquire(shard)  # before planning: the plan sees every record of the runs before this one
        start = time.perf_counter()  # the run's own time, without the wait
        work = _planned(items, digests, out_dir, task, overwrite, summary)
        if work:
            writer = partial(Writer, out_dir, manifest=manifest_name(shard), on_record=on_record, lock=lock)
            _explain(task, work, bound, writer, summary, progress=progress, fail_fast=fail_fast)
            summary.seconds = time.perf_counter() - start
        elif out_dir.is_dir():  # nothing to do: still record the config (for `saliency evaluate`)
            save_settings(out_dir, cfg, {name: b.params for name, b in bound.items()})
        if not summary.interrupted and not summary.stopped_early:
            _finish(summary, out_dir, shard, lock)
        if cfg.output.report and (shard is None or summary.merged):
            write_report(out_dir)
    except OSError as exc:
        if not out_of_space(exc):
            raise
        raise output_full(out_dir, exc, summary.skipped + summary.ok) from exc
    finally:
        lock.release()
    return summary


def _planned(items: list[InputItem], digests: dict[str, str], out_dir: Path, task: tasks.Task, overwrite: bool,
             summary: RunSummary) -> list[Work]:
    """What each image still needs; the others count as skipped."""
    work = plan(items, digests, out_dir, expected=task.expected_files, grid=task.cfg.output.grid,
                overwrite=overwrite)
    summary.skipped = len(items) - len(work)
    if summary.skipped:
        log.info("%d of %d image(s) already done in %s; skipping them (--overwrite redoes them)",
                 summary.skipped, summary.found, out_dir)
    return work


def _bind(cfg: Config, methods: Sequence[str] | None) -> dict[str, tasks.Bound]:
    """-m names (else the config's `run` list), `all` expanded to every method
    of the config's task in registry order, each checked against the task,
    with its parameters (validated when the config was). Methods only `all`
    brought are optional: skipped where they cannot explain the model."""
    asked = cfg.asked(methods)
    names = list(dict.fromkeys(n for m in asked for n in (registry.names(cfg.task) if m == "all" else [m])))
    for name in names:
        cfg.check_method(name)
    return {name: tasks.Bound(registry.get(name), cfg.method_params(name), optional=name not in asked)
            for name in names}


def _inputs(paths: Sequence[str], stdin: Iterable[str] | None, shard: tuple[int, int] | None,
            out_dir: Path, include_hidden: bool = False) -> list[InputItem]:
    """The images found under `paths` (this shard's share of them), outside OUT."""
    found = discover(paths, stdin, exclude=out_dir, hidden=include_hidden)
    if found.skipped:
        log.info("skipping %d file(s) that are not images by their suffix (e.g. %s)",
                 len(found.skipped), found.skipped[0])
    if found.hidden:
        log.info("skipping %d hidden file(s) and folder(s) (e.g. %s; --include-hidden takes them)",
                 len(found.hidden), found.hidden[0])
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
    work, bound = _applicable(task, model, work, bound, summary)
    if not work:
        return
    classes = task.num_classes(model)
    labels = load_labels(cfg.labels, num_classes=classes, names=getattr(model, "class_names", None))
    check_labels(labels, classes)
    target = parse_target(cfg.runtime.target, labels)
    log.info("explaining %d image(s) with %s on %s", len(work), ", ".join(bound), task.device)
    out = cfg.output
    dataset = task.dataset([w.item for w in work], keep_original=out.png and (out.overlay or out.grid))
    batching = {"batch_size": task.batch_size, "workers": cfg.runtime.workers, "device_type": task.device.type}
    threads = decode_threads(len(dataset), **batching)  # if not 0: the writer's threads decode too
    try:  # on a GPU they run beside the thread that drives it: a PNG encoder that leaves it the GIL (png.py)
        writer = open_writer(threads=threads or default_threads(task.device.type), profile=summary.profile,
                             png_encoder=png.encoder(out.png_compression, beside_model=task.device.type == "cuda"))
        save_settings(writer.out, cfg, {name: b.params for name, b in bound.items()})  # before a record names it
    except OSError as exc:  # what check_out_dir could not foresee (a full disk: run() says so)
        if out_of_space(exc):
            raise
        raise SaliencyError(f"--out: cannot write there: {exc.strerror or exc}: {exc.filename}") from exc
    loader = make_loader(dataset, **batching, pool=writer.pool)
    units = sum(task.units([bound[n] for n in w.methods]) for w in work)
    bar = tasks.Progress(units, task.unit, show=progress)
    figures = Figures(out, writer, task.device, summary.profile)
    state = tasks.Run(model, bound, labels, target, work, writer, figures, bar, summary.profile)
    summary.decoders, summary.decode_threads = loader.num_workers, threads or 1
    try:
        _stream(loader, task, state, summary, fail_fast)
    finally:
        bar.close()
        _close(writer, summary)
    summary.ok, summary.failed = writer.counts["ok"], writer.counts["error"]
    if writer.full is not None:  # run() says where, what and the fix
        raise writer.full


def _applicable(task: tasks.Task, model: Any, work: list[Work], bound: dict[str, tasks.Bound],
                summary: RunSummary) -> tuple[list[Work], dict[str, tasks.Bound]]:
    """The work left once the methods that cannot explain the model are
    dropped (the task says which, and why); images left with nothing to do
    count as done."""
    usable = task.check(model, bound)
    if len(usable) == len(bound):
        return work, bound
    left = narrow(work, usable)
    if len(left) < len(work):
        summary.skipped += len(work) - len(left)
        log.info("%d more image(s) have every method that applies done already", len(work) - len(left))
    return left, usable


def _stream(loader: Iterable, task: tasks.Task, state: tasks.Run, summary: RunSummary, fail_fast: bool) -> None:
    """Every batch through the task; an interruption is noted in `summary`."""
    batches = _timed(loader, state.profile)
    try:
        for batch in batches:
            task.explain_safely(batch, state)
            if state.writer.full is not None:  # OUT is full: stop at once
                break
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
    finally:
        batches.close()  # the loader's threads or worker processes end now, not when the batches are collected


def _timed(loader: Any, profile: Profile) -> Iterator[Any]:
    """The loader's batches, finished by the dataset where it left decoding
    to the main process; the main thread's wait for each is idle time,
    except the decoding it does itself when there are no workers."""
    batches = iter(loader)
    finish = getattr(loader.dataset, "finish", None)  # decoding left to the main process (on the device)
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            return
        waited = time.perf_counter() - start
        decoded = sum(it["decode_seconds"] for it in [*batch.ok, *batch.failed])
        profile.add("decode", decoded)
        profile.add("idle", max(0.0, waited - decoded) if loader.num_workers == 0 else waited)
        if finish is not None:
            with profile.timed("decode"):
                batch = finish(batch)
        yield batch


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


def _finish(summary: RunSummary, out_dir: Path, shard: tuple[int, int] | None, lock: OutLock) -> None:
    if shard is not None and out_dir.exists():
        summary.merged = finish_shard(out_dir, *shard, lock=lock)
        if summary.merged:
            log.info("all %d shards done: merged their manifests into %s", shard[1], out_dir / MANIFEST)
