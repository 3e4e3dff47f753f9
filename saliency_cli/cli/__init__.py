"""The `saliency` command. Commands only parse options, build a Config
through one path (file, --set, options) and delegate; every user-facing
failure is a SaliencyError, printed on one line with exit code 2 (`--debug`
adds the traceback). Exit codes: see common.py and `saliency explain --help`.

A new command is a module here whose functions use `@app.command`,
imported below.
"""

# isort: off
from .common import app  # noqa: F401
from . import explain  # noqa: F401
from . import tools  # noqa: F401
from . import verify  # noqa: F401
from . import evaluate  # noqa: F401
# isort: on


def main() -> None:
    app()


if __name__ == "__main__":
    main()
