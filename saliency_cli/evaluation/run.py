"""The evaluation loop: plan -> per model: load -> batches of images -> records
-> summary (and report).

Jobs are grouped by the model their maps were made with (one load each);
each group is evaluated a batch of images at a time by its task's
evaluator. A job that fails (its photo or map is unreadable, its model
raised) is recorded with its error and the run goes on; Ctrl-C or SIGTERM
keeps every record already written, and a rerun goes on from there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import SaliencyError, interrupt_code
from ..runtime import resolve_device
from ..tasks import Progress
from .classifier import ClassifierEvaluation
from .detector import DetectorEvaluation
from .jobs import Job, group_key, image_batches, plan
from .loading import Outcome, load_group
from .metrics import CURVES, Options
from .pointing import load_boxes
from .report import write_evaluation_report
from .results import clear_tmp, finish
from .summary import summary, write_summary

log = logging.getLogger("saliency")

EVALUATORS = {"classification": ClassifierEvaluation, "detection": DetectorEvaluation}


@dataclass
class Evaluation:
    """What a run did, and the summary of the folder."""

    data: dict[str, Any] = field(default_factory=dict)
    evaluated: int = 0  # images x methods computed now
    done: int = 0  # already evaluated by an earlier run
    failed: int = 0
    interrupted: int = 0  # 130 after Ctrl-C, 143 after SIGTERM


def evaluate(out_dir: Path, options: Options, *, methods: list[str] | None = None, overwrite: bool = False,
             given: Config | None = None, device: str | None = None, batch_size: int | None = None,
             chunk: int | None = None, progress: bool = False, report: bool = False) -> Evaluation:
    """Evaluate the maps of an output folder of `saliency explain`."""
    out_dir = Path(out_dir)
    options.check()
    truth = load_boxes(options.boxes) if options.boxes is not None else None
    if truth is not None:
        options = replace(options, boxes_digest=truth.digest)
    work = plan(out_dir, options, methods=methods, overwrite=overwrite, given=given)
    result = Evaluation(done=work.done)
    if work.done:
        log.info("%d of %d (image, method) pair(s) already evaluated with these options; skipping them "
                 "(--overwrite redoes them)", work.done, work.done + len(work.jobs))
    groups: dict[str, list[Job]] = {}
    for job in work.jobs:
        groups.setdefault(group_key(job.source), []).append(job)
    try:
        _groups(out_dir, groups, options, truth, result, progress, device=device, batch_size=batch_size,
                chunk=chunk)
        if not result.interrupted:
            result.data = summary(out_dir, options, work.current)
            write_summary(out_dir, result.data)
            if report:
                write_evaluation_report(out_dir, result.data, work.current)
    finally:
        clear_tmp(out_dir)  # after the summary and the report, which are written through it too
    return result


def _groups(out_dir: Path, groups: dict[str, list[Job]], options: Options, truth: Any, result: Evaluation,
            progress: bool, **batching: Any) -> None:
    """Every group's jobs, under one progress bar; Ctrl-C or SIGTERM ends
    the loop and is recorded in `result.interrupted`."""
    jobs = [job for group in groups.values() for job in group]
    bar = Progress(sum(units(job, options) for job in jobs), "input", show=progress)
    try:
        for group in groups.values():
            _group(out_dir, group, options, truth, result, bar, **batching)
    except KeyboardInterrupt as exc:
        result.interrupted = interrupt_code(exc)
        log.warning("interrupted after %d of %d; rerun the same command to finish", result.evaluated, len(jobs))
    finally:
        bar.close()


def units(job: Job, options: Options) -> int:
    """What the progress bar counts for a job: the inputs its curves score
    (steps + 1 per curve and map), plus one."""
    maps = len(job.record.fields["detections"] or []) if "detections" in job.record.fields else 1
    return (options.steps + 1) * len(set(job.todo) & set(CURVES)) * maps + 1


def _group(out_dir: Path, jobs: list[Job], options: Options, truth: Any, result: Evaluation, bar: Progress, *,
           device: str | None, batch_size: int | None, chunk: int | None) -> None:
    """Every job of one model."""
    source = jobs[0].source
    cfg = source.config
    loaded = load_group(source, resolve_device(device or cfg.runtime.device))
    if truth is not None:
        truth.warn_unmatched(loaded.labels)
    evaluator = EVALUATORS[cfg.task](loaded, options, out_dir, truth, chunk, bar)
    log.info("evaluating %d (image, method) pair(s) of %s on %s: %s", len(jobs),
             ", ".join(dict.fromkeys(j.method for j in jobs)), loaded.task.device,
             ", ".join(dict.fromkeys(m for j in jobs for m in j.todo)))
    for batch in image_batches(jobs, batch_size or cfg.runtime.batch_size):
        due = bar.count + sum(units(job, options) for job in batch)
        for outcome in _safely(evaluator, batch):
            record = finish(out_dir, outcome, options)
            result.evaluated += 1
            if not record.ok:
                result.failed += 1
                log.error("%s (%s): %s", record.input, record.method, record.error)
        bar.reach(due)  # the batch's full count, whatever was skipped or failed


def _safely(evaluator: Any, batch: list[Job]) -> list[Outcome]:
    """A batch's outcomes; an unexpected failure (the model cannot take an
    input...) is recorded against the batch's jobs, except with --debug."""
    try:
        return evaluator.evaluate(batch)
    except (SaliencyError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if log.isEnabledFor(logging.DEBUG):
            raise
        return [Outcome(job, error=f"evaluating failed: {type(exc).__name__}: {exc}") for job in batch]
