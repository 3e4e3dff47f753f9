"""The one user-facing error type, and the per-input error type.

`SaliencyError` means "the run cannot start or continue as asked" (bad config,
unknown method or layer, unloadable model): the CLI prints its message on one
line and exits with code 2. `InputError` is about one input file: the pipeline
records it in the manifest and goes on.
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable


class SaliencyError(Exception):
    """A problem the user can fix; its message is shown without a traceback."""

    exit_code = 2


# errors that every later write into OUT would meet too: stop, keep what is done
OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class OutputFull(SaliencyError):
    """OUT is full, over its quota or read-only: the run stops at once (exit
    code 4), keeping every finished image; a rerun after the fix goes on."""

    exit_code = 4


def out_of_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in OUT_OF_SPACE


def output_full(out_dir: object, exc: OSError, kept: int | None) -> OutputFull:
    """The one line a full or read-only OUT gets: where, what, and the fix
    (and how many finished images it keeps, when the run got that far)."""
    if exc.errno == errno.EROFS:
        fix = "make it writable"
    elif exc.errno == errno.EDQUOT:
        fix = "free space (or raise the quota)"
    else:
        fix = "free space"
    name = errno.errorcode.get(exc.errno or 0, "")
    kept_text = "" if kept is None else f": {kept} finished image(s) are kept"
    return OutputFull(f"cannot write to {str(out_dir)!r}: {exc.strerror or exc} ({name}); {fix}, then rerun the "
                      f"same command{kept_text}")


class NotApplicable(SaliencyError):
    """The model lacks what a method needs (a CAM head, a feature map,
    attention): an error when the method is named, a skip under `-m all`."""


class InputError(Exception):
    """One input file could not be used (corrupt, truncated, not an image...)."""


def did_you_mean(word: str, choices: Iterable[str], *, what: str, list_valid: bool = True) -> str:
    """'unknown X 'foo' (did you mean 'bar'?); valid: a, b, c' for error messages
    (without the list of valid choices when it is too long to help)."""
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    if not list_valid:
        return f"unknown {what} {word!r}{hint}"
    shown = ", ".join(choices) if len(choices) <= 40 else ", ".join(choices[:40]) + ", ..."
    return f"unknown {what} {word!r}{hint}; valid: {shown}"


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: finish the images already computed, then stop."""

    exit_code = 143


class OutputClosed(KeyboardInterrupt):
    """The reader of --jsonl's stdout went away (`... --jsonl | head`): stop as
    SIGPIPE would stop a shell tool, after the images already computed."""

    exit_code = 141


def interrupt_code(exc: KeyboardInterrupt) -> int:
    """The exit code of a stop: 130 for Ctrl-C, 143 for SIGTERM, 141 for a closed pipe."""
    return getattr(exc, "exit_code", 130)
