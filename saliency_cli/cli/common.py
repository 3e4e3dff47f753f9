"""What every command shares: the Typer app, logging to stderr, the one
error handler, and the options every command takes (-c, --set, --debug).

Exit codes: 0 all done; 1 some input files failed (see the manifest);
2 bad usage, config, method, layer or model; 3 an unexpected internal error;
4 OUT full or read-only (finished images kept); 130 interrupted (Ctrl-C),
143 terminated (SIGTERM), 141 stdout's reader gone (`| head`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ..errors import OutputClosed, SaliencyError, Terminated, interrupt_code

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("saliency")


class _BareHelp:
    """`-h, --help` shown bare, as the flags are (Typer would add `<bool>`)."""

    def get_help_option(self, ctx: Any) -> Any:
        help_option = super().get_help_option(ctx)  # type: ignore[misc]
        if help_option is not None:
            help_option.metavar = ""
        return help_option


class Group(_BareHelp, typer.core.TyperGroup):
    def main(self, *args: Any, **kwargs: Any) -> Any:
        """A usage error (an unknown option, a missing PATH, a value out of
        range) on one line, exit code 2, as every other error of the tool
        (Typer would draw a box around it under the usage line)."""
        if not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        try:
            code = super().main(*args, **{**kwargs, "standalone_mode": False})
        except Exception as exc:
            if not _is_click_error(exc):
                raise
            if type(exc).__name__ != "NoArgsIsHelpError":  # (bare `saliency`: the help is shown)
                ctx = getattr(exc, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                print(f"saliency: error: {exc.format_message().rstrip('.')}{hint}", file=sys.stderr)
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


def _is_click_error(exc: Exception) -> bool:
    """A click usage or parameter error (Typer brings its own copy of click
    in some versions and uses click's in others: matched by name)."""
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__)


class Command(_BareHelp, typer.core.TyperCommand):
    """The class of every command (cli/__init__.py sets it). Its arguments
    show their name alone (PATH, OUT), not beside a Python type
    (`<list[str]>`, `<path>`) as Typer would."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.param_type_name == "argument":
                param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]


app = typer.Typer(
    name="saliency",
    cls=Group,
    help="Saliency maps for PyTorch image models, in batches, from the command line.\n\n"
    "Start with: saliency explain sample_images -o out",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def option(*names: str, help: str, metavar: str, **kwargs: Any) -> typer.models.OptionInfo:
    """An option taking a value, shown in --help as `--name METAVAR` (Typer
    would show the Python type: `<int range>`, `<list[str]>`), without a
    default unless `show_default=True`."""
    return typer.Option(*names, help=help, metavar=metavar, show_default=kwargs.pop("show_default", False), **kwargs)


def flag(*names: str, help: str, **kwargs: Any) -> typer.models.OptionInfo:
    """An on/off option, shown in --help as the bare `--name` (Typer would add
    `<bool>`, which reads as if it took a value)."""
    return typer.Option(*names, help=help, metavar="", **kwargs)


def _version(value: bool) -> None:
    if value:
        import platform

        import torch

        from .. import __version__

        print(f"saliency-cli {__version__} (torch {torch.__version__}, Python {platform.python_version()})")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, flag("--version", callback=_version, is_eager=True,
                                  help="Print the version (and torch's) and exit.")] = False,
) -> None:
    pass


ConfigOpt = Annotated[
    Optional[Path],
    option("--config", "-c", metavar="FILE", help="YAML config file. Default: the built-in offline "
           "EfficientNet-Lite0 (ImageNet) config, as in configs/efficientnet_lite0.yaml."),
]
SetOpt = Annotated[
    Optional[list[str]],
    option("--set", metavar="KEY.PATH=VALUE", help="Override one config value, e.g. "
           "--set methods.smoothgrad.n=25 (repeatable; the value is read as YAML)."),
]
DebugOpt = Annotated[bool, flag("--debug", help="Show tracebacks and debug messages.")]
QuietOpt = Annotated[bool, flag("--quiet", "-q", help="Only warnings and errors on stderr; no progress bar.")]


def on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def setup_logging(quiet: bool, debug: bool) -> None:
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("saliency: %(levelname_lower)s%(message)s"))
    handler.addFilter(_LevelPrefix())
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):  # once per message
        text = str(message)
        if text not in seen:
            seen.add(text)
            log.warning("%s", text)

    warnings.showwarning = show


class _Stderr(logging.StreamHandler):
    """Writes to sys.stderr as it is at each message, not as it was when the
    command began: a command run in-process (Typer's CliRunner, a notebook)
    gets a stderr that is closed once it returns, where a later log line of
    the same process would fail."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


class _LevelPrefix(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.levelname_lower = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return True


def handle_errors(command):
    """SaliencyError -> one line, exit 2; anything unexpected -> exit 3."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False) or os.environ.get("SALIENCY_DEBUG") == "1"
        try:
            return command(*args, **kwargs)
        except SaliencyError as exc:
            if debug:
                traceback.print_exc()
            print(f"saliency: error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None
        except (typer.Exit, typer.Abort):
            raise
        except BrokenPipeError:  # stdout's reader went away (`| head`): stop quietly, as shell tools do
            drop_stdout(sys.stdout)
            raise typer.Exit(OutputClosed.exit_code) from None
        except KeyboardInterrupt as exc:
            print("saliency: interrupted", file=sys.stderr)
            raise typer.Exit(interrupt_code(exc)) from None
        except Exception as exc:  # a bug: say so, briefly
            if debug:
                traceback.print_exc()
            else:
                print("saliency: internal error (rerun with --debug for the traceback)", file=sys.stderr)
            print(f"saliency: error: {type(exc).__name__}: {exc}", file=sys.stderr)
            raise typer.Exit(3) from None

    return wrapper


def drop_stdout(stdout: Any) -> None:
    """stdout's reader went away: point it at /dev/null, so that Python's
    flush at exit raises no second error."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())


@contextlib.contextmanager
def stdout_to_stderr():
    """stdout carries only what a command prints itself (records, tables,
    JSON): while models load and run, anything else printed there (torch.hub's
    `Downloading: ...` line on a first run, a model factory's print) goes to
    stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def load(config: Path | None, sets: list[str] | None, options: dict[str, Any] | None = None) -> Config:
    """The config of a command: file, then --set, then the command's own
    options ({"runtime.batch_size": 16}, None values left out), one path
    and one set of checks for all three. Imported late: `--help` stays fast."""
    from ..config import load_config

    return load_config(config, sets or [], {k: v for k, v in (options or {}).items() if v is not None})
