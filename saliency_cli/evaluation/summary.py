"""The summary of an evaluation: per method, each metric's mean over maps
with its 95% confidence interval and count (OUT/evaluation-summary.json,
the table `saliency evaluate` prints, the report), and the CI gates.

Maps a metric does not apply to (no box of the class, no positive value...)
are counted apart, per metric, never as misses. The sanity check's verdict:
a method whose maps keep a mean Spearman correlation of |M| of at least
SIMILAR (0.5) once every layer is random "stays similar" (fails the check).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import EVALUATION_SUMMARY
from .metrics import BINARY, LOWER_IS_BETTER, Options, bounds
from .records import EvalRecord, read_evaluations
from .results import write_atomic
from .stats import summarise

SCHEMA_VERSION = 1
SIMILAR = 0.5
_DIGITS = {"average-drop": 1, "increase": 1, "sanity": 2}


def summary(out_dir: Path, options: Options, current: list[tuple[str, str]]) -> dict[str, Any]:
    """The summary of the (image, method) pairs in `current`, from their records."""
    records = read_evaluations(out_dir)
    by_method = current_records(records, current)
    opts = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items() if k != "boxes_digest"}
    return {"schema_version": SCHEMA_VERSION, "options": opts,
            "methods": {m: _method(rs, options) for m, rs in by_method.items()}}


def current_records(records: dict[tuple[str, str], EvalRecord],
                    current: list[tuple[str, str]]) -> dict[str, list[EvalRecord]]:
    """The records of the pairs in `current`, by method (in order of appearance)."""
    by_method: dict[str, list[EvalRecord]] = {}
    for key, method in current:
        if (key, method) in records:
            by_method.setdefault(method, []).append(records[(key, method)])
    return by_method


def _method(records: list[EvalRecord], options: Options) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    maps = [m for r in ok for m in r.maps]
    entry: dict[str, Any] = {"images": len(ok), "maps": len(maps), "failed": len(records) - len(ok), "metrics": {}}
    for metric in options.metrics:
        values = [m.metrics[metric] for m in maps if m.metrics.get(metric) is not None]
        stats = summarise(values, BINARY.get(metric), bounds(metric, options))
        stats["apart"] = sum(metric in m.apart for m in maps)
        entry["metrics"][metric] = stats
    if "sanity" in options.metrics:
        entry["sanity"] = _sanity(maps, entry["metrics"]["sanity"]["mean"])
    return entry


def _sanity(maps: list, final: float | None) -> dict[str, Any]:
    """The mean correlation per randomisation step, and the verdict."""
    runs = [m.sanity for m in maps if m.sanity]
    if not runs:
        return {}
    steps = runs[0]["random_layers"]

    def mean(key: str) -> list[float | None]:
        columns = zip(*(r[key] for r in runs if len(r[key]) == len(steps)))
        return [float(np.mean(c)) if c else None for c in ([v for v in col if v is not None] for col in columns)]

    verdict = None if final is None else ("stays similar: fails the check" if final >= SIMILAR
                                          else "changes with the model: passes")
    return {"random_layers": steps, "spearman": mean("spearman"), "spearman_abs": mean("spearman_abs"),
            "verdict": verdict}


def write_summary(out_dir: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    write_atomic(out_dir, EVALUATION_SUMMARY, lambda p: p.write_text(text, encoding="utf-8"))


def cell(metric: str, stats: dict[str, Any], maps: int) -> str:
    """`mean [low, high]`, with the count when some maps were counted apart."""
    if stats["mean"] is None:
        return "n/a"
    digits = _DIGITS.get(metric, 3)
    text = f"{stats['mean']:.{digits}f}"
    if stats["ci95"] is not None:
        text += f" [{stats['ci95'][0]:.{digits}f}, {stats['ci95'][1]:.{digits}f}]"
    if stats["n"] != maps:
        text += f" (n={stats['n']})"
    return text


def heading(metric: str) -> str:
    arrow = "↓" if metric in LOWER_IS_BETTER else "↑"
    unit = " %" if metric in ("average-drop", "increase") else ""
    return f"{metric}{unit} {arrow}"


def table(data: dict[str, Any]) -> str:
    """The summary as a Markdown table."""
    metrics = list(data["options"]["metrics"])
    lines = ["| method | images | " + " | ".join(heading(m) for m in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for method, entry in data["methods"].items():
        cells = [cell(m, entry["metrics"][m], entry["maps"]) for m in metrics]
        if "sanity" in metrics and entry.get("sanity", {}).get("verdict"):
            cells[metrics.index("sanity")] += f" ({entry['sanity']['verdict'].split(':')[0]})"
        count = f"{entry['images']}" + (f" ({entry['maps']} maps)" if entry["maps"] != entry["images"] else "")
        count += f", {entry['failed']} failed" if entry["failed"] else ""
        lines.append(f"| {method} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gate_failures(data: dict[str, Any], under: dict[str, float], over: dict[str, float]) -> list[str]:
    """The methods whose mean falls below a --fail-under value (or rises above a --fail-over one)."""
    failed = []
    for method, entry in data["methods"].items():
        for gates, sign in ((under, "<"), (over, ">")):
            for metric, limit in gates.items():
                mean = entry["metrics"].get(metric, {}).get("mean")
                if mean is None:  # nothing to measure is no pass
                    failed.append(f"{method}: {metric} has no value (every map counted apart)")
                elif (mean < limit) if sign == "<" else (mean > limit):
                    failed.append(f"{method}: {metric} {mean:.4g} {sign} {limit:g}")
    return failed
