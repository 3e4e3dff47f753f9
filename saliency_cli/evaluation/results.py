"""Turning a job's outcome into its evaluation record: metrics kept from an
earlier evaluation of the same map, curves written atomically, the record
appended to OUT/evaluation.jsonl once its files are in place."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..outputs import TMP_DIR, curve_path
from ..outputs import write_atomic as _write_atomic
from .loading import Outcome
from .metrics import Options
from .records import EvalRecord, MapResult, append_evaluation

TMP = f"{TMP_DIR}/evaluation"


def write_atomic(out_dir: Path, rel: str, write: Callable[[Path], None]) -> None:
    """Write OUT/<rel> through a temporary file in OUT/.tmp/evaluation and a rename: never half a file."""
    tmp_dir = Path(out_dir) / TMP
    tmp_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(Path(out_dir) / rel, tmp_dir, write)


def clear_tmp(out_dir: Path) -> None:
    shutil.rmtree(Path(out_dir) / TMP, ignore_errors=True)
    try:
        (Path(out_dir) / TMP_DIR).rmdir()  # once nothing else uses it
    except OSError:
        pass


def finish(out_dir: Path, outcome: Outcome, options: Options) -> EvalRecord:
    """Write the outcome's curves and append its record; returns the record."""
    job = outcome.job
    record = EvalRecord(key=job.record.key, input=job.record.input, method=job.method, map=job.npy,
                        map_settings=job.record.settings.get(job.method))
    if outcome.error is not None:
        record.status, record.error = "error", outcome.error
        append_evaluation(out_dir, record)
        return record
    record.maps = outcome.maps
    for result in record.maps:  # computed alongside, not asked for: not recorded under this run's options
        for metric in {*result.metrics, *result.apart} - set(job.todo):
            result.forget(metric)
    old = job.previous
    kept = [m for m in (old.settings if old else {}) if m not in job.todo]
    if old is not None and kept:
        _keep(old, record, kept)
    record.settings.update({m: options.digest(m) for m in job.todo})
    for name, values in outcome.curves.items():
        if name not in job.todo:
            continue
        rel = curve_path(job.record.key, job.method, name)
        array = np.asarray(values, dtype=np.float64)
        write_atomic(out_dir, rel, lambda p, a=array: np.save(p, a, allow_pickle=False))
        record.curves[name] = rel
    append_evaluation(out_dir, record)
    return record


def _keep(old: EvalRecord, record: EvalRecord, kept: list[str]) -> None:
    """Metrics of the same map computed by an earlier run (and not redone now)."""
    record.settings.update({m: old.settings[m] for m in kept})
    record.curves.update({m: old.curves[m] for m in kept if m in old.curves})
    for new, previous in zip(record.maps, old.maps):
        for metric in kept:
            _copy(previous, new, metric)


def _copy(source: MapResult, target: MapResult, metric: str) -> None:
    if metric in source.metrics:
        target.metrics[metric] = source.metrics[metric]
    if metric in source.apart:
        target.apart[metric] = source.apart[metric]
    if metric == "sanity" and source.sanity is not None:
        target.sanity = source.sanity
