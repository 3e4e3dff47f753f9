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
    OUT/settings/<digest>.json              the effective config of the maps made with that digest
    OUT/evaluation.jsonl                    `saliency evaluate`: one record per image and method
    OUT/<key>/<method>.<metric>.npy         its curves (deletion, insertion): [maps, steps + 1]
    OUT/evaluation-summary.json             per method: mean, 95% CI and count of each metric
    OUT/evaluation.html                     the summary table and mean curves (--report)

`key` is an input's relative path without suffix (see discovery.py).
"""

from __future__ import annotations

import errno
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path

from .errors import SaliencyError, output_full

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
SETTINGS_DIR = "settings"
EVALUATION = "evaluation.jsonl"
EVALUATION_SUMMARY = "evaluation-summary.json"
EVALUATION_REPORT = "evaluation.html"


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


def settings_path(digest: str) -> str:
    return f"{SETTINGS_DIR}/{digest}.json"


def curve_path(key: str, method: str, metric: str) -> str:
    return f"{key}/{method}.{metric}.npy"


def check_out_dir(out_dir: Path) -> None:
    """OUT must be a folder we can write in (or one we can create): say so
    before the model loads, not as an internal error at the first write."""
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SaliencyError(f"--out {str(out_dir)!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            raise output_full(out_dir, OSError(errno.EROFS, os.strerror(errno.EROFS)), None)
        raise SaliencyError(f"--out {str(out_dir)!r}: no permission to write in {str(existing)!r}")


def write_atomic(final: Path, tmp_dir: Path, write: Callable[[Path], None]) -> None:
    """`final` written whole or not at all: `write` fills a file in `tmp_dir`
    (an existing folder on the same file system), then it is renamed into
    place. The final folder is made when the rename finds it missing, not
    checked before every file: in runs, mkdir on the existing folder waited
    on the kernel's directory locks for about 5% of the writer's time."""
    tmp = tmp_dir / f"{uuid.uuid4().hex}{final.suffix}"
    try:
        write(tmp)
        try:
            os.replace(tmp, final)
        except FileNotFoundError:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
