"""OUT/evaluation.html: the summary table and, per method, the mean deletion
and insertion curves (and the sanity check's correlations), drawn as inline
SVG: a static page, no script, no matplotlib."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import EVALUATION_REPORT
from .metrics import CURVES
from .records import EvalRecord, read_evaluations
from .results import write_atomic
from .summary import cell, current_records, heading

# the ten colours of matplotlib's tab10, a palette readers know
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; max-width: 80rem; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; } h2 { font-size: 1.1rem; margin: 1.5rem 0 .4rem; }
.note { color: #555; } table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: .35rem .6rem; text-align: left; white-space: nowrap; }
th { background: #fafafa; } .charts { display: flex; flex-wrap: wrap; gap: 1.5rem; }
svg text { font: 12px system-ui, sans-serif; fill: #333; }
.wide { overflow-x: auto; } .legend span { margin-right: .9rem; white-space: nowrap; }
"""


def write_evaluation_report(out_dir: Path, data: dict[str, Any], current: list[tuple[str, str]]) -> Path:
    """Write OUT/evaluation.html from the summary and the curves of the
    (image, method) pairs in `current`; returns its path."""
    methods = list(data["methods"])
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}
    records = current_records(read_evaluations(out_dir), current)
    charts = []
    for name in CURVES:
        found = {m: mean_curve(out_dir, records.get(m, []), name) for m in methods}
        series = {m: curve for m, curve in found.items() if curve is not None}
        if series:
            xs = {m: [s / (len(v) - 1) for s in range(len(v))] for m, v in series.items()}
            ylabel = "probability of the class" if data["options"]["score"] == "probability" else "logit of the class"
            charts.append(chart(f"{name} (mean over maps)", xs, series, colours, "fraction of pixels "
                                f"{'deleted' if name == 'deletion' else 'inserted'}", ylabel))
    sanity = {m: e["sanity"] for m, e in data["methods"].items() if e.get("sanity")}
    if sanity:
        xs = {m: [float(v) for v in s["random_layers"]] for m, s in sanity.items()}
        ys = {m: s["spearman_abs"] for m, s in sanity.items()}
        charts.append(chart("sanity: Spearman of |M| with the original", xs, ys, colours,
                            "layers re-initialised (from the logits)", "rank correlation"))
    text = _page(data, methods, colours, charts)
    write_atomic(out_dir, EVALUATION_REPORT, lambda p: p.write_text(text, encoding="utf-8"))
    return Path(out_dir) / EVALUATION_REPORT


def mean_curve(out_dir: Path, records: list[EvalRecord], name: str) -> list[float] | None:
    """The mean over maps of one curve (maps without it, NaN rows, left out)."""
    rows = [np.load(Path(out_dir) / r.curves[name]) for r in records
            if r.ok and name in r.curves and (Path(out_dir) / r.curves[name]).is_file()]
    stacked = np.concatenate(rows) if rows else np.zeros((0, 0))
    if stacked.ndim != 2 or not np.isfinite(stacked).any():
        return None
    return [float(v) for v in np.nanmean(stacked, axis=0)]


def _page(data: dict[str, Any], methods: list[str], colours: dict[str, str], charts: list[str]) -> str:
    metrics = list(data["options"]["metrics"])
    head = "".join(f"<th>{html.escape(heading(m))}</th>" for m in metrics)
    rows = []
    for method in methods:
        entry = data["methods"][method]
        swatch = f'<span style="color:{colours[method]}">&#9632;</span> '
        cells = "".join(f"<td>{html.escape(cell(m, entry['metrics'][m], entry['maps']))}</td>" for m in metrics)
        rows.append(f"<tr><td>{swatch}{html.escape(method)}</td><td>{entry['images']}</td>"
                    f"<td>{entry['maps']}</td><td>{entry['failed']}</td>{cells}</tr>")
    verdicts = "".join(f"<li>{html.escape(m)}: {html.escape(e['sanity']['verdict'])}</li>"
                       for m, e in data["methods"].items() if e.get("sanity", {}).get("verdict"))
    legend = " ".join(f'<span><span style="color:{colours[m]}">&#9632;</span> {html.escape(m)}</span>'
                      for m in methods)
    options = ", ".join(f"{k}: {v}" for k, v in data["options"].items() if k != "metrics" and v is not None)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>saliency evaluation</title><style>{_STYLE}</style></head>
<body>
<h1>saliency evaluation</h1>
<div class="note">Mean over maps with its 95% confidence interval (n: maps counted, when some were counted apart).
Options: {html.escape(options)}</div>
<div class="wide"><table><thead><tr><th>method</th><th>images</th><th>maps</th><th>failed</th>{head}</tr></thead>
<tbody>{"".join(rows)}</tbody></table></div>
{f"<ul>{verdicts}</ul>" if verdicts else ""}
<h2>Curves</h2>
<div class="legend">{legend}</div>
<div class="charts">{"".join(charts)}</div>
</body>
</html>
"""


def chart(title: str, xs: dict[str, list[float]], ys: dict[str, list[float | None]], colours: dict[str, str],
          xlabel: str, ylabel: str, width: int = 460, height: int = 300) -> str:
    """A line chart, one polyline per series, as an inline <svg>."""
    left, right, top, bottom = 52, 12, 28, 44
    values = [v for series in ys.values() for v in series if v is not None]
    low, high = min([0.0, *values]), max([1.0, *values])
    x_max = max((max(x) for x in xs.values() if x), default=1.0) or 1.0

    def px(x: float) -> float:
        return left + (width - left - right) * x / x_max

    def py(y: float) -> float:
        return top + (height - top - bottom) * (1 - (y - low) / (high - low or 1.0))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>',
             f'<text x="{left}" y="16" font-weight="600">{html.escape(title)}</text>']
    for i in range(5):
        y = low + (high - low) * i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#e5e5e5"/>'
                     f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.2g}</text>')
        x = x_max * i / 4
        parts.append(f'<text x="{px(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x:.3g}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 8}" text-anchor="middle">'
                 f'{html.escape(xlabel)}</text>')
    parts.append(f'<text transform="translate(14 {(top + height - bottom) / 2:.0f}) rotate(-90)" '
                 f'text-anchor="middle">{html.escape(ylabel)}</text>')
    for name, series in ys.items():
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs[name], series) if y is not None)
        parts.append(f'<polyline fill="none" stroke="{colours[name]}" stroke-width="1.8" points="{points}">'
                     f'<title>{html.escape(name)}</title></polyline>')
    parts.append("</svg>")
    return "".join(parts)
