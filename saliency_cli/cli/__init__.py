"""The `saliency` command. Commands only parse options, build a Config
through one path (file, --set, options) and delegate; every user-facing
failure is a SaliencyError, printed on one line with exit code 2 (`--debug`
adds the traceback). Exit codes: see common.py and `saliency explain --help`.

A new command is a module here whose functions use `@app.command`,
imported below.
"""

import inspect

from typer.core import TyperCommand

# isort: off
from .common import Command, app
from . import explain  # noqa: F401
from . import tools  # noqa: F401
from . import verify  # noqa: F401
from . import evaluate  # noqa: F401
# isort: on

# `saliency --help` lists each command with its docstring's first paragraph; in rich
# markup mode Typer keeps that paragraph's line breaks, which then cut its sentences
for _command in app.registered_commands:
    if _command.cls in (None, TyperCommand):  # not a command's own class
        _command.cls = Command
    if _command.short_help is None and _command.callback is not None and _command.callback.__doc__:
        _command.short_help = " ".join(inspect.getdoc(_command.callback).split("\n\n")[0].split())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
