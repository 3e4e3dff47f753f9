"""OUT/report.html: a static, self-contained page of a whole run.

One row per image (the latest manifest record), one column per method, the
top-k predictions or the detections, and failed inputs with their errors.
All links are relative, so OUT can be moved or served as it is. Thumbnails
load lazily with their size reserved, and rows are split into pages
(report.html, report-2.html, ...) so thousands of images stay fast.
"""

from __future__ import annotations

import html
import logging
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .outputs import REPORT_PAGE_GLOB, report_page
from .records import Files, Record, read_manifest

log = logging.getLogger("saliency")

PAGE_SIZE = 100
THUMB = 220  # thumbnail width in CSS pixels

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
.summary, nav { color: #555; margin-bottom: 1rem; }
nav a, nav span { margin-right: .6rem; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: .4rem .6rem; vertical-align: top; text-align: left; }
th { position: sticky; top: 0; background: #fafafa; }
td.info { min-width: 14rem; max-width: 20rem; }
.name { font-weight: 600; word-break: break-all; }
.error { color: #b00020; }
ol { margin: .3rem 0 0 1.1rem; padding: 0; }
figure { margin: 0 0 .4rem; display: inline-block; }
figcaption { font-size: 12px; color: #555; }
img { display: block; background: #eee; }
"""


def write_report(out_dir: Path, *, page_size: int = PAGE_SIZE) -> list[Path]:
    """Write the report pages from the manifest; returns their paths."""
    out_dir = Path(out_dir)
    records = sorted(read_manifest(out_dir).values(), key=lambda r: r.key)
    methods = list(dict.fromkeys(m for r in records for m in r.outputs))
    pages = [records[i:i + page_size] for i in range(0, len(records), page_size)] or [[]]
    names = [report_page(i) for i in range(1, len(pages) + 1)]
    failed = sum(not r.ok for r in records)
    paths = []
    for number, (name, rows) in enumerate(zip(names, pages), start=1):
        text = _page(out_dir, rows, methods, names, number, len(records), failed)
        path = out_dir / name
        tmp = out_dir / f".{name}.{uuid.uuid4().hex}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        paths.append(path)
    for stale in out_dir.glob(REPORT_PAGE_GLOB):  # pages of an earlier, longer report
        if stale.name not in names:
            stale.unlink()
    log.info("report: %s%s", paths[0], f" ({len(paths)} pages)" if len(paths) > 1 else "")
    return paths


def _page(out_dir: Path, rows: list[Record], methods: list[str], names: list[str], number: int,
          total: int, failed: int) -> str:
    nav = _nav(names, number)
    head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    body = "\n".join(_row(out_dir, r, methods) for r in rows)
    summary = f"{total} image(s), {failed} failed, methods: {html.escape(', '.join(methods)) or 'none'}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>saliency report{f' (page {number})' if len(names) > 1 else ''}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>saliency report</h1>
<div class="summary">{summary}</div>
{nav}
<table>
<thead><tr><th>image</th>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>
{nav}
</body>
</html>
"""


def _nav(names: list[str], number: int) -> str:
    if len(names) == 1:
        return ""
    links = [f"<span>page {i}</span>" if i == number else f'<a href="{name}">page {i}</a>'
             for i, name in enumerate(names, start=1)]
    return f"<nav>{''.join(links)}</nav>"


def _row(out_dir: Path, record: Record, methods: list[str]) -> str:
    name = html.escape(record.key)  # unique, unlike file names
    source = _link_to_input(out_dir, record.input)
    link = f'<a href="{source}">{name}</a>' if source else name
    info = [f'<div class="name">{link}</div>']
    if not record.ok:
        info.append(f'<div class="error">{html.escape(str(record.error or "failed"))}</div>')
        return f"<tr><td class=\"info\">{''.join(info)}</td>{'<td></td>' * len(methods)}</tr>"
    if record.grid:
        info.append(f'<div><a href="{_url(record.grid)}">all maps side by side</a></div>')
    info += _task_info(record.fields)
    cells = [_cell(record, record.outputs.get(m)) for m in methods]
    return f"<tr><td class=\"info\">{''.join(info)}</td>{''.join(cells)}</tr>"


def _task_info(fields: dict[str, Any]) -> list[str]:
    """The predictions (classifiers) or the detections (detectors) of a record."""
    info = []
    if "predictions" in fields:
        items = "".join(f"<li>{html.escape(p['label'])} <small>{p['prob']:.3f}</small></li>"
                        for p in fields["predictions"])
        target = fields["target"]
        info.append(f"<div>explained: <b>{html.escape(target['label'])}</b> ({target['prob']:.3f})</div>"
                    f"<ol>{items}</ol>")
    if "detections" in fields:
        items = "".join(f"<li>{html.escape(d['label'])} <small>{d['score']:.3f} "
                        f"[{', '.join(f'{v:.0f}' for v in d['box'])}]</small></li>"
                        for d in fields["detections"])
        info.append(f"<div>{len(fields['detections'])} detection(s) explained</div><ol start=\"0\">{items}</ol>")
    return info


def _cell(record: Record, files: Files | None) -> str:
    if not files or not files.pngs:
        return "<td></td>"
    width, height = record.size or (THUMB, THUMB)
    shown = (THUMB, max(1, round(THUMB * height / width)))
    captions = {d.get("png"): f"{d['label']} {d['score']:.2f}" for d in record.fields.get("detections", [])}
    figures = []
    for rel in files.pngs:
        caption = f"<figcaption>{html.escape(captions[rel])}</figcaption>" if rel in captions else ""
        figures.append(f'<figure><a href="{_url(rel)}"><img src="{_url(rel)}" loading="lazy" decoding="async" '
                       f'width="{shown[0]}" height="{shown[1]}" alt=""></a>{caption}</figure>')
    return f"<td>{''.join(figures)}</td>"


def _url(rel: str) -> str:
    return quote(rel)


def _link_to_input(out_dir: Path, path: str | None) -> str | None:
    """A relative link from the report to the input photo, when it is a file."""
    if not path or not Path(path).is_file():
        return None
    rel = os.path.relpath(Path(path).resolve(), out_dir.resolve())
    return quote(Path(rel).as_posix())
