"""Finding images: the command line's PATH arguments (files, folders, `-`
for stdin) expanded into a sorted list of inputs.

Each input gets a `key`: the relative path (POSIX, without suffix) under
which its outputs are written, `OUT/<key>/<method>.png`. Keys never contain
`..` or an absolute path, so no output can land outside OUT.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import SaliencyError
from .outputs import TMP_DIR

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


@dataclass(frozen=True)
class InputItem:
    path: str  # as given or found, for the manifest and messages
    key: str  # output location relative to OUT, without suffix


@dataclass
class Discovery:
    items: list[InputItem]
    skipped: list[str]  # files in folders that are not images by their suffix
    hidden: list[str] = field(default_factory=list)  # hidden files and folders not walked


# ------------------------------------------------------------------ discovery


def discover(args: Sequence[str], stdin: Iterable[str] | None = None, exclude: Path | None = None,
             hidden: bool = False) -> Discovery:
    """Expand the command-line PATH arguments into a list of images.

    A folder is walked recursively in sorted order (following symlinks, each
    real folder once); `-` reads one path per line from stdin, in order. With
    one folder argument outputs mirror the tree inside it; with several
    arguments each output tree starts with the argument's own name.
    `exclude` (the output folder) is not walked: a rerun must not explain
    its own PNGs. A file named twice is explained once. Hidden files and
    folders inside a walked folder (names starting with a dot: Jupyter's
    .ipynb_checkpoints, macOS's ._photo.jpg) are skipped unless `hidden`;
    files named on the command line or stdin are always taken.
    """
    found: list[tuple[str, PurePosixPath]] = []
    skipped: list[str] = []
    unwalked: list[str] | None = None if hidden else []
    several = len(args) > 1
    for arg in args:
        if arg == "-":
            lines = stdin if stdin is not None else sys.stdin
            for line in lines:
                path = line.rstrip("\r\n")
                if path.strip():
                    found.append((path, _relative_to_cwd(path)))
            continue
        root = Path(arg)
        if root.is_dir():
            prefix = PurePosixPath(_safe_name(root)) if several else PurePosixPath()
            for path in _walk(root, exclude, unwalked):
                rel = PurePosixPath(*path.relative_to(root).parts)
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((str(path), prefix / rel))
                else:
                    skipped.append(str(path))
        elif root.exists():
            found.append((arg, PurePosixPath(root.name)))
        else:
            raise SaliencyError(f"no such file or folder: {arg!r}")
    return Discovery(_assign_keys(_once(found)), skipped, unwalked or [])


def _walk(root: Path, exclude: Path | None = None, hidden: list[str] | None = None) -> list[Path]:
    """Files under `root`; hidden ones (and hidden folders) are left out and
    listed in `hidden` unless it is None."""
    files: list[Path] = []
    seen: set[str] = set()
    skip = os.path.realpath(exclude) if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen or real == skip:  # a symlink loop, a second link to one folder, the output folder
            dirnames[:] = []
            continue
        seen.add(real)
        if hidden is not None:
            hidden += [os.path.join(dirpath, n) for n in sorted(dirnames + filenames) if n.startswith(".")]
            dirnames[:] = [n for n in dirnames if not n.startswith(".")]
            filenames = [n for n in filenames if not n.startswith(".")]
        dirnames.sort()
        files.extend(Path(dirpath) / name for name in filenames)
    return sorted(files, key=lambda p: p.relative_to(root).parts)


def _once(found: list[tuple[str, PurePosixPath]]) -> list[tuple[str, PurePosixPath]]:
    """The first mention of each path (made absolute and normalised: string
    work, no file-system calls per image); missing ones stay, to be reported
    when decoded."""
    seen: set[str] = set()
    kept = []
    for path, rel in found:
        absolute = os.path.abspath(path)
        if absolute not in seen:
            seen.add(absolute)
            kept.append((path, rel))
    return kept


def _safe_name(root: Path) -> str:
    name = root.resolve().name
    return name or "root"


def _relative_to_cwd(path: str) -> PurePosixPath:
    """A stdin path made relative and safe: `..` becomes `__`, roots vanish."""
    rel = os.path.relpath(os.path.abspath(path))
    parts = [("__" if p == ".." else p) for p in Path(rel).parts if p not in ("", ".", os.sep)]
    return PurePosixPath(*parts) if parts else PurePosixPath("input")


def _unreserved(rel: PurePosixPath) -> PurePosixPath:
    """Outputs of an input under a folder named .tmp go to _tmp/: OUT/.tmp is
    the writer's, emptied at the end of every run."""
    if rel.parts and rel.parts[0] == TMP_DIR:
        return PurePosixPath("_tmp", *rel.parts[1:])
    return rel


def _assign_keys(found: list[tuple[str, PurePosixPath]]) -> list[InputItem]:
    """Keys are paths without suffix; inputs that would share one (a.jpg next
    to a.png) keep their suffix instead, and any remaining clash gets -2, -3."""
    found = [(path, _unreserved(rel)) for path, rel in found]
    stems = [str(rel.with_suffix("")) if rel.suffix else str(rel) for _, rel in found]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    keys = [str(rel) if counts[stem] > 1 else stem for (_, rel), stem in zip(found, stems)]
    used: set[str] = set()
    items = []
    for (path, _), key in zip(found, keys):
        unique, n = key, 1
        while unique in used:
            n += 1
            unique = f"{key}-{n}"
        used.add(unique)
        items.append(InputItem(path, unique))
    return items
