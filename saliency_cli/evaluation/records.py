"""The evaluation record: one per image and method, a line of
`OUT/evaluation.jsonl` (append-only: the last record of a key and method is
the current one), serialised here and nowhere else.

    {"schema_version": 1, "key": "chelsea", "input": "sample_images/chelsea.png",
     "method": "grad-cam", "map": "chelsea/grad-cam.npy", "map_settings": "3f9c2a0b17d4e6a1",
     "status": "ok",
     "maps": [{"class": 285, "label": "Egyptian cat",
               "metrics": {"deletion": 0.061, "insertion": 0.702, "average-drop": 12.5, "increase": 0.0},
               "apart": {"pointing": "no box of class 'Egyptian cat' for this image"}}],
     "curves": {"deletion": "chelsea/grad-cam.deletion.npy", "insertion": "chelsea/grad-cam.insertion.npy"},
     "settings": {"deletion": "<what the value depends on>", ...}}

`maps` has one entry per map: one for a classifier, one per explained
detection for a detector (with its `index` and `box`). A metric that does
not apply to a map is left out of its `metrics` and explained in `apart`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..outputs import EVALUATION
from ..records import read_jsonl

SCHEMA_VERSION = 1


@dataclass
class MapResult:
    """The metrics of one map."""

    cls: int | None
    label: str
    index: int | None = None  # detection index (detectors)
    box: list[float] | None = None  # detection box in photo pixels (detectors)
    metrics: dict[str, float | None] = field(default_factory=dict)
    apart: dict[str, str] = field(default_factory=dict)  # metric -> why this map is not counted
    sanity: dict[str, list] | None = None  # random_layers, spearman, spearman_abs

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {} if self.index is None else {"index": self.index}
        data.update({"class": self.cls, "label": self.label})
        if self.box is not None:
            data["box"] = self.box
        data["metrics"] = {k: _rounded(v) for k, v in self.metrics.items()}
        if self.apart:
            data["apart"] = dict(self.apart)
        if self.sanity is not None:
            data["sanity"] = {k: [_rounded(v) for v in vs] for k, vs in self.sanity.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MapResult:
        return cls(cls=data.get("class"), label=str(data.get("label", "")), index=data.get("index"),
                   box=data.get("box"), metrics=dict(data.get("metrics") or {}), apart=dict(data.get("apart") or {}),
                   sanity=data.get("sanity"))

    def forget(self, metric: str) -> None:
        self.metrics.pop(metric, None)
        self.apart.pop(metric, None)
        if metric == "sanity":
            self.sanity = None


@dataclass
class EvalRecord:
    key: str
    input: str
    method: str
    map: str  # the .npy, relative to OUT
    map_settings: str | None  # the settings digest of the map (manifest record)
    status: str = "ok"
    error: str | None = None
    maps: list[MapResult] = field(default_factory=list)
    curves: dict[str, str] = field(default_factory=dict)  # metric -> .npy [maps, steps + 1], relative to OUT
    settings: dict[str, str] = field(default_factory=dict)  # metric -> what its values depend on
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_line(self) -> str:
        data: dict[str, Any] = {"schema_version": self.schema_version, "key": self.key, "input": self.input,
                                "method": self.method, "map": self.map, "map_settings": self.map_settings,
                                "status": self.status}
        if self.error is not None:
            data["error"] = self.error
        data["maps"] = [m.to_json() for m in self.maps]
        if self.curves:
            data["curves"] = dict(self.curves)
        data["settings"] = dict(self.settings)
        return json.dumps(data, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, data: Any) -> EvalRecord | None:
        if not isinstance(data, dict) or not isinstance(data.get("key"), str) or "method" not in data:
            return None
        return cls(key=data["key"], input=str(data.get("input", "")), method=str(data["method"]),
                   map=str(data.get("map", "")), map_settings=data.get("map_settings"),
                   status=str(data.get("status", "error")), error=data.get("error"),
                   maps=[MapResult.from_json(m) for m in data.get("maps") or [] if isinstance(m, dict)],
                   curves=dict(data.get("curves") or {}), settings=dict(data.get("settings") or {}),
                   schema_version=int(data.get("schema_version", SCHEMA_VERSION)))


def _rounded(value: Any) -> Any:
    return round(value, 7) if isinstance(value, float) else value


def read_evaluations(out_dir: Path) -> dict[tuple[str, str], EvalRecord]:
    """The current (last) record per (key, method); unreadable lines are skipped."""
    path = Path(out_dir) / EVALUATION
    found: dict[tuple[str, str], EvalRecord] = {}
    if not path.is_file():
        return found
    for record in read_jsonl(path, EvalRecord.from_json):
        found[(record.key, record.method)] = record
    return found


def append_evaluation(out_dir: Path, record: EvalRecord) -> None:
    """One write of one whole line: a reader never sees half a record."""
    fd = os.open(Path(out_dir) / EVALUATION, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, record.to_line().encode("utf-8"))
    finally:
        os.close(fd)
