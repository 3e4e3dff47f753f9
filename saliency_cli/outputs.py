"""Where every output lives in OUT: the one place that names files.

    OUT/manifest.jsonl                      one record per image (append-only)
    OUT/manifest.shard-K-of-N.jsonl         a shard's part, until merged
    OUT/<key>/<method>.npy                  raw map(s) at model-input size
    OUT/<key>/<method>.png                  heatmap over the photo
    OUT/<key>/<method>-<k>.png              detection k's heatmap (detection tasks)
    OUT/<key>/grid.png                      the photo and every map side by side
    OUT/report.html, OUT/report-N.html      the browsable report
    OUT/.tmp/                               the writers' temporary files
    OUT/.lock                               held by the runs writing into OUT (locking.py)

`key` is an input's relative path without suffix (see discovery.py).
"""

from __future__ import annotations

import re

MANIFEST = "manifest.jsonl"
PART = "manifest.shard-{k}-of-{n}.jsonl"
PART_GLOB = "manifest.shard-*-of-*.jsonl"
PART_RE = re.compile(r"manifest\.shard-(\d+)-of-(\d+)\.jsonl$")
SHARD_DONE = "manifest.shard-{k}-of-{n}.done"
MERGE_LOCK = "manifest.merge.lock"
TMP_DIR = ".tmp"
LOCK = ".lock"
REPORT = "report.html"
REPORT_PAGE = "report-{n}.html"  # pages 2, 3, ...
REPORT_PAGE_GLOB = "report-*.html"


def manifest_name(shard: tuple[int, int] | None) -> str:
    """The manifest file a run appends to: its shard's part, or the main one."""
    return MANIFEST if shard is None else PART.format(k=shard[0], n=shard[1])


def npy_path(key: str, method: str) -> str:
    return f"{key}/{method}.npy"


def png_path(key: str, method: str) -> str:
    return f"{key}/{method}.png"


def detection_png_path(key: str, method: str, index: int) -> str:
    return f"{key}/{method}-{index}.png"


def grid_path(key: str) -> str:
    return f"{key}/grid.png"


def report_page(number: int) -> str:
    return REPORT if number == 1 else REPORT_PAGE.format(n=number)
