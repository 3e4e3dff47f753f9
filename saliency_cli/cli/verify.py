"""`saliency verify OUT`: do the files of every current record load as recorded?"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from ..errors import SaliencyError
from .common import DebugOpt, app, flag, handle_errors, setup_logging

log = logging.getLogger("saliency")


@app.command("verify", epilog="[bold]Example[/bold] (a CI step after explain)\n\n"
             "  saliency explain photos/ -o out -q && saliency verify out\n\n"
             "Prints one line per problem on stdout (FILE: what is wrong) and a summary on stderr. "
             "Exit codes: 0 every file loads as recorded, 1 problems found, 2 no manifest in OUT.")
@handle_errors
def verify_cmd(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output folder of one or more runs.", show_default=False)],
    quiet: Annotated[bool, flag("--quiet", "-q", help="No summary; only the problems.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Check every file the manifest's current records name: it exists, each
    .npy has its recorded shape, dtype and full length, each PNG decodes whole
    at the size it was drawn (the photo's, or png_size). Exit code 1 if anything does not."""
    setup_logging(quiet, debug)
    from ..integrity import verify_folder
    from ..records import manifest_files

    if not manifest_files(out):
        raise SaliencyError(f"no manifest in {str(out)!r}: run `saliency explain ... -o {out}` first")
    result = verify_folder(out)
    for _, rel, problem in result.problems:
        print(f"{out / rel}: {problem}")
    failed = f"; {result.failed} input(s) recorded as failed (no files to check)" if result.failed else ""
    if result.problems:
        images = len({key for key, _, _ in result.problems})
        log.warning("%d problem(s) in %d of %d image(s) in %s%s; remove those files and rerun the same "
                    "`saliency explain` command to redo them", len(result.problems), images, result.images, out,
                    failed)
        raise typer.Exit(1)
    log.info("%d image(s), %d file(s) in %s: every file loads as recorded%s", result.images, result.files, out,
             failed)
