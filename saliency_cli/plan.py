"""Resume: which methods each image still needs, from the manifest and the
files on disk, and the settings digests that tell when a map is stale.

A file counts as there only if it loads, as far as its size and header tell
(integrity.py): an empty or truncated output that a crash left behind is
redone, whatever the manifest says."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .discovery import InputItem
from .integrity import quick_problem
from .records import Files, Record, read_manifest

log = logging.getLogger("saliency")

DEFAULT_PNG_MAX_SIDE = 2048  # config.OutputConfig.png_max_side
# Settings added after the first release join the digest only when they differ
# from the value that reproduces the earlier behaviour, so that outputs made
# before they existed stay current: section -> key -> that value.
_ADDED = {"model": {"timm": None, "pretrained": False, "ultralytics": None},
          "preprocess": {"interpolation": "bilinear"}}


@dataclass
class Work:
    """One image of a run and what it still needs."""

    item: InputItem
    methods: list[str]  # methods still to compute for this image
    previous: dict[str, Files] = field(default_factory=dict)  # outputs kept from earlier runs
    settings: dict[str, str] = field(default_factory=dict)  # settings digest of every method in the record
    replaced: list[str] = field(default_factory=list)  # files of the previous record's methods redone now


def settings_digest(cfg: Any, params: Any) -> str:
    """What one method's outputs depend on, hashed: the model (and its
    checkpoint file's size and time), preprocessing, target, seed, --amp, the
    method's parameters and how its PNG is drawn. A rerun into the same
    folder redoes the methods whose digest changed."""
    model = _without_added("model", dataclasses.asdict(cfg.model))
    if cfg.model.checkpoint and os.path.isfile(cfg.model.checkpoint):
        stat = os.stat(cfg.model.checkpoint)
        model["checkpoint_file"] = [stat.st_size, stat.st_mtime_ns]
    out = cfg.output
    png = [out.overlay, out.alpha, out.colormap, out.clip_percentile]
    if out.png_max_side != DEFAULT_PNG_MAX_SIDE:  # settings added later join only when changed, so
        png.append(out.png_max_side)              # that outputs made before they existed stay current
    preprocess = _without_added("preprocess", dataclasses.asdict(cfg.preprocess))
    settings = {"model": model, "preprocess": preprocess, "target": cfg.runtime.target,
                "seed": cfg.runtime.seed, "amp": cfg.runtime.amp, "params": dataclasses.asdict(params),
                "png": png}
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _without_added(section: str, values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in _ADDED[section] or v != _ADDED[section][k]}


def intact(out_dir: Path, recorded: Files, also: Iterable[str] = ()) -> bool:
    """A method's recorded files (and `also`) are all on disk and load, by
    size and header; its .npy holds the recorded shape and dtype."""
    for rel in {*recorded.all(), *also}:
        described = (recorded.shape, recorded.dtype) if rel == recorded.npy else (None, None)
        if quick_problem(Path(out_dir) / rel, *described) is not None:
            return False
    return True


def finished_methods(out_dir: Path, record: Record | None, expected: dict[str, Files],
                     damaged: set[str] | None = None) -> set[str]:
    """Methods whose `expected` files and recorded files (a previous run
    wrote them and said so) are all still on disk and load. `damaged`
    collects the recorded methods whose files do not."""
    if record is None or not record.ok:
        return set()
    done = set()
    for method, files in expected.items():
        if method in record.outputs:
            if intact(out_dir, record.outputs[method], files.all()):
                done.add(method)
            elif damaged is not None and all((Path(out_dir) / rel).exists() for rel in record.outputs[method].all()):
                damaged.add(method)
    return done


def plan(items: list[InputItem], digests: dict[str, str], out_dir: Path, *,
         expected: Callable[[str, str], Files], grid: bool, overwrite: bool) -> list[Work]:
    """Which methods each image still needs: those without all their files,
    or made with other settings (all of them with --overwrite). Outputs of
    other methods from earlier runs stay in the image's new record.
    `expected(key, method)`: the files a method writes that are known before
    it runs; `grid`: every image needs its grid."""
    previous = read_manifest(out_dir)
    names, work, changed, damaged_images = list(digests), [], 0, 0
    for item in items:
        record = previous.get(item.key)
        # without its grid the image is redone whole: the grid shows every method together
        grid_missing = grid and not (record and record.grid and quick_problem(out_dir / record.grid) is None)
        damaged: set[str] = set()
        done = set() if overwrite or grid_missing else finished_methods(
            out_dir, record, {n: expected(item.key, n) for n in names}, damaged)
        damaged_images += bool(damaged)
        made_with = record.settings if record else {}
        stale = {n for n in done if made_with.get(n, digests[n]) != digests[n]}  # older records: no digest
        changed += bool(stale)
        todo = [n for n in names if n not in done or n in stale]
        if todo:
            kept = _kept_outputs(out_dir, record, todo, done)
            settings = {n: made_with[n] for n in kept if n in made_with} | {n: digests[n] for n in todo}
            replaced = [rel for n in todo if record and record.ok and n in record.outputs
                        for rel in record.outputs[n].all()]
            work.append(Work(item, todo, kept, settings, replaced))
    if changed:
        log.info("%d image(s) in %s have maps made with other settings (model, preprocessing, target, seed, "
                 "method parameters or PNG style): redoing those maps", changed, out_dir)
    if damaged_images:
        log.warning("%d image(s) in %s have outputs listed as done that do not load (empty or truncated, as a "
                    "crash leaves them): redoing those maps", damaged_images, out_dir)
    return work


def narrow(work: list[Work], methods: Collection[str]) -> list[Work]:
    """The work restricted to `methods` (those that apply to the model);
    images left with none are dropped."""
    narrowed = [dataclasses.replace(w, methods=[n for n in w.methods if n in methods],
                                    settings={n: d for n, d in w.settings.items() if n in methods or n in w.previous})
                for w in work]
    return [w for w in narrowed if w.methods]


def _kept_outputs(out_dir: Path, record: Record | None, todo: list[str], done: set[str]) -> dict[str, Files]:
    """Outputs of the methods this run does not redo, whose files are all
    there (those of methods in `done` were just checked)."""
    if record is None or not record.ok:
        return {}
    return {n: files for n, files in record.outputs.items()
            if n not in todo and (n in done or intact(out_dir, files))}
