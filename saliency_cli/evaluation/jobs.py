"""What `saliency evaluate` has to do: every image and method of the
manifest with a `.npy` map, its recorded config, and the metrics it still
needs (resume: a metric already computed for the same map, with the same
options, whose files are there, is skipped)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..errors import SaliencyError
from ..outputs import MANIFEST, settings_path
from ..recorded import RecordedConfig, check_digest, load_settings
from ..records import Record, read_manifest
from .metrics import CURVES, TASK_METRICS, Options
from .records import EvalRecord, read_evaluations

log = logging.getLogger("saliency")


@dataclass
class Job:
    """One image and method to evaluate."""

    record: Record  # its manifest record
    method: str
    source: RecordedConfig  # the config its maps were made with
    todo: tuple[str, ...]  # metrics still to compute
    previous: EvalRecord | None  # an earlier evaluation of the same map, whose other metrics are kept

    @property
    def npy(self) -> str:
        return self.record.outputs[self.method].npy  # type: ignore[return-value]


@dataclass
class Plan:
    jobs: list[Job]
    done: int  # images x methods with nothing left to compute
    current: list[tuple[str, str]]  # every (key, method) evaluated by this run's options, for the summary


def plan(out_dir: Path, options: Options, *, methods: Sequence[str] | None = None, overwrite: bool = False,
         given: Config | None = None) -> Plan:
    """The jobs of a run. `given`: a config to use instead of the recorded
    ones (for folders made before explain recorded its config); it must
    match the maps' settings digests all the same."""
    manifest = read_manifest(out_dir)
    if not manifest:
        raise SaliencyError(f"no manifest in {str(out_dir)!r}: run `saliency explain ... -o {out_dir}` first")
    previous = read_evaluations(out_dir)
    sources = _Sources(Path(out_dir), given)
    result = Plan([], 0, [])
    skipped_task: set[str] = set()
    for key in sorted(manifest):
        record = manifest[key]
        if not record.ok:
            continue
        for method, files in record.outputs.items():
            if (methods and method not in methods) or not files.npy:
                continue
            source = sources.get(record, method)
            wanted = tuple(m for m in options.metrics if m in TASK_METRICS.get(source.config.task, ()))
            skipped_task |= {f"{m} ({source.config.task})" for m in options.metrics if m not in wanted}
            if not wanted:
                continue
            result.current.append((key, method))
            old = previous.get((key, method))
            if old is not None and not (old.ok and old.map == files.npy
                                        and old.map_settings == record.settings.get(method)):
                old = None  # another map now (or a failed attempt): start afresh
            done = set() if overwrite or old is None else _finished(Path(out_dir), old, wanted, options)
            todo = tuple(m for m in wanted if m not in done)
            if todo:
                result.jobs.append(Job(record, method, source, todo, old))
            else:
                result.done += 1
    _check_found(result, out_dir, methods, skipped_task)
    return result


def _finished(out_dir: Path, old: EvalRecord, wanted: tuple[str, ...], options: Options) -> set[str]:
    return {m for m in wanted if old.settings.get(m) == options.digest(m)
            and (m not in CURVES or (m in old.curves and (out_dir / old.curves[m]).is_file()))}


def _check_found(result: Plan, out_dir: Path, methods: Sequence[str] | None, skipped_task: set[str]) -> None:
    if skipped_task:
        log.warning("not defined for these maps, skipped: %s", ", ".join(sorted(skipped_task)))
    if not result.current:
        which = f" of method {', '.join(methods)}" if methods else ""
        raise SaliencyError(f"no maps{which} to evaluate in {str(out_dir)!r}: evaluate reads the .npy maps "
                            "(output.npy: true) of images explained without error")


class _Sources:
    """The config of each settings digest, read (and checked) once."""

    def __init__(self, out_dir: Path, given: Config | None):
        self.out_dir, self.given = out_dir, given
        self.cache: dict[tuple[str, str | None], RecordedConfig] = {}

    def get(self, record: Record, method: str) -> RecordedConfig:
        digest = record.settings.get(method)
        if (method, digest) not in self.cache:
            self.cache[(method, digest)] = self._read(record, method, digest)
        return self.cache[(method, digest)]

    def _read(self, record: Record, method: str, digest: str | None) -> RecordedConfig:
        if self.given is not None:
            self.given.check_method(method)
            if digest is not None:
                check_digest(self.given, method, digest, os.getcwd(), where="the config given (-c/--set)")
            return RecordedConfig(digest or "", method, os.getcwd(), self.given)
        if digest is None:
            raise SaliencyError(f"{self.out_dir / MANIFEST}: the {method} maps of {record.key} carry no settings "
                                "digest (an older saliency explain made them): give the config they were made "
                                "with (-c/--set)")
        recorded = load_settings(self.out_dir, digest, method)
        if recorded is None:
            raise SaliencyError(f"{self.out_dir / settings_path(digest)} is missing: the {method} maps were made "
                                "before saliency explain recorded its config. Rerun the same explain command "
                                "(finished maps are kept, the config is recorded) or give the config (-c/--set)")
        return recorded


def group_key(source: RecordedConfig) -> str:
    """Jobs whose model, preprocessing and labels are the same share one loaded model."""
    cfg = source.config
    return json.dumps({"task": cfg.task, "model": cfg.to_dict()["model"], "preprocess": cfg.to_dict()["preprocess"],
                       "labels": cfg.labels, "seed": cfg.runtime.seed, "target": cfg.runtime.target,
                       "channels_last": cfg.runtime.channels_last, "cwd": source.cwd}, sort_keys=True, default=str)


def image_batches(jobs: list[Job], size: int) -> list[list[Job]]:
    """Jobs in batches of `size` images (all methods of an image together)."""
    by_key: dict[str, list[Job]] = {}
    for job in jobs:
        by_key.setdefault(job.record.key, []).append(job)
    keys = list(by_key)
    return [[job for key in keys[i:i + size] for job in by_key[key]] for i in range(0, len(keys), size)]
