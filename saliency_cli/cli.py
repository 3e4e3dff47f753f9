"""The `saliency` command. Commands only parse options, build a Config and
delegate; every user-facing failure is a SaliencyError, printed on one line
with exit code 2 (`--debug` adds the traceback).

Exit codes: 0 all done; 1 some input files failed (see the manifest);
2 bad usage, config, method, layer or model; 3 an unexpected internal error;
130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 141 --jsonl reader gone.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import traceback
import warnings
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .config import Config, dump_config, load_config
from .errors import OutputClosed, SaliencyError, Terminated, interrupt_code

log = logging.getLogger("saliency")

app = typer.Typer(
    name="saliency",
    help="Saliency maps for PyTorch image models, in batches, from the command line.\n\n"
    "Start with: saliency explain sample_images -o out",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="YAML config file. Default: the built-in offline "
                 "EfficientNet-Lite0 (ImageNet) config, as in configs/efficientnet_lite0.yaml.",
                 show_default=False),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="KEY.PATH=VALUE", help="Override one config value, e.g. "
                 "--set methods.smoothgrad.n=25 (repeatable; the value is read as YAML).",
                 show_default=False),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug messages.")]


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _setup_logging(quiet: bool, debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
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


class _LevelPrefix(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.levelname_lower = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return True


def _handle_errors(command):
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
            raise typer.Exit(2) from None
        except (typer.Exit, typer.Abort):
            raise
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


def _config(config: Path | None, sets: list[str] | None) -> Config:
    return load_config(config, sets or [])


@app.command(
    epilog="[bold]Examples[/bold]\n\n"
    "  saliency explain sample_images -o out\n\n"
    "  saliency explain photos/ -m grad-cam -m smoothgrad -o out --batch-size 16\n\n"
    "  saliency explain photos/ -m all --grid --report -o out\n\n"
    "  saliency explain cat.jpg -m smoothgrad --set methods.smoothgrad.base=guided-backprop\n\n"
    "  saliency explain photos/ -c configs/resnet50.yaml --target 'tabby' -o out\n\n"
    "  find data -name '*.jpg' | saliency explain - -o out --quiet --jsonl > records.jsonl\n\n"
    "Outputs: OUT/<relative path without suffix>/<method>.png (heatmap over the photo) and "
    ".npy (raw float32 map at model-input size), plus OUT/manifest.jsonl (one record per image). "
    "A rerun skips finished images (and redoes maps made with other settings). "
    "Exit codes: 0 ok, 1 some inputs failed, 2 bad usage or "
    "config, 3 internal error, 130/143 interrupted, 141 --jsonl reader gone.",
)
@_handle_errors
def explain(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively, "
                                               "sorted) or - to read paths from stdin.", show_default=False)],
    config: ConfigOpt = None,
    method: Annotated[Optional[list[str]], typer.Option(
        "--method", "-m", help="Method to run (repeatable; `all` for every method of the task). "
        "Default: the config's `run` list. See `saliency methods`.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("saliency-out"),
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per batch "
                          "(config runtime.batch_size, default 8).", show_default=False, min=1)] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N "
                      "(default auto: CUDA when available).", show_default=False)] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="Class to explain: predicted "
                      "(each image's top-1, default), a class index, or a class name.",
                      show_default=False)] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Predictions recorded per image "
                     "(default 5).", show_default=False, min=1)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute images that an "
                         "earlier run already finished.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on "
                     "stderr; no progress bar.")] = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Print each manifest record to stdout as "
                     "it is written (nothing else goes to stdout).")] = False,
    grid: Annotated[bool, typer.Option("--grid", help="Also write OUT/<image>/grid.png: the photo "
                    "and every method side by side, labelled.")] = False,
    report: Annotated[bool, typer.Option("--report", help="Also write OUT/report.html, a static "
                      "page of every image and method (paged, lazy-loading).")] = False,
    no_overlay: Annotated[bool, typer.Option("--no-overlay", help="PNGs show the bare heatmap, "
                          "not blended over the photo.")] = False,
    colormap: Annotated[Optional[str], typer.Option("--colormap", help="jet (default), viridis, "
                        "inferno or gray; signed maps always use blue-white-red.",
                        show_default=False)] = None,
    amp: Annotated[bool, typer.Option("--amp", help="Autocast classifiers to bfloat16: faster where "
                   "the hardware has bfloat16 units; CAM maps barely change, raw gradients do "
                   "(see README).")] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop after the batch in which an "
                         "input first fails (exit code 1) instead of recording it and going on.")] = False,
    shard: Annotated[Optional[str], typer.Option("--shard", metavar="K/N", help="Process only "
                     "shard K (0..N-1) of N of the sorted inputs; under torchrun the run shards "
                     "itself by RANK/WORLD_SIZE. The last shard to finish merges the manifests.",
                     show_default=False)] = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Explain images: write heatmap PNGs, raw .npy maps and a manifest."""
    _setup_logging(quiet, debug)
    flags = [f"output.grid={str(grid).lower()}"] if grid else []
    flags += ["output.report=true"] if report else []
    flags += ["output.overlay=false"] if no_overlay else []
    flags += [f"output.colormap={colormap}"] if colormap else []
    flags += ["runtime.amp=true"] if amp else []
    cfg = _config(config, [*(set_ or []), *flags])  # validated like the config file
    runtime = cfg.runtime
    if batch_size is not None:
        runtime.batch_size = batch_size
    if device is not None:
        runtime.device = device
    if target is not None:
        runtime.target = target
    if top_k is not None:
        runtime.top_k = top_k
    from .pipeline import run  # torch import deferred: `saliency --help` stays fast

    signal.signal(signal.SIGTERM, _on_sigterm)
    summary = run(
        cfg, paths, out, methods=method or None, overwrite=overwrite,
        progress=not quiet and sys.stderr.isatty(),
        on_record=_RecordPrinter() if jsonl else None,
        shard=_parse_shard(shard), fail_fast=fail_fast,
    )
    if summary.interrupted:
        if summary.remaining:
            log.log(summary.stop_level, "interrupted after %d image(s), %d left; rerun the same command to finish",
                    summary.ok, summary.remaining)
        else:  # the signal (or the reader's exit) came after the last image
            log.log(summary.stop_level, "interrupted after the last image; nothing is left to do in %s", out)
        raise typer.Exit(summary.exit_code)
    done = f"{summary.ok} image(s) written to {out}"
    if summary.skipped:
        done += f", {summary.skipped} already done"
    if summary.failed:
        done += f", {summary.failed} failed (see {out}/manifest.jsonl)"
    if summary.seconds:
        done += f" in {summary.seconds:.1f}s"
    log.info("%s", done)
    raise typer.Exit(summary.exit_code)


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    k, sep, n = text.partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit()) or int(n) < 1:
        raise SaliencyError(f"--shard expects K/N with 0 <= K < N, e.g. 0/4; got {text!r}")
    return int(k), int(n)


class _RecordPrinter:
    """--jsonl: each manifest record on stdout as it lands. When the reader
    goes away (`| head`), the run stops once, quietly, like a shell tool on
    SIGPIPE; the manifest on disk still gets every finished record."""

    def __init__(self) -> None:
        self.closed = False

    def __call__(self, record: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            self.closed = True
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            raise OutputClosed() from None


@app.command("methods")
@_handle_errors
def methods_cmd(
    params: Annotated[bool, typer.Option("--params", "-p", help="Also list each method's "
                      "parameters with their defaults.")] = False,
    debug: DebugOpt = False,
) -> None:
    """List the attribution methods (names for -m)."""
    from .methods import registry

    for name in registry.names():
        spec = registry.get(name)
        print(f"{name:18s} {spec.summary}  [{spec.paper}]")
        if params:
            for key, value in spec.defaults().items():
                print(f"{'':18s}   {key}: {json.dumps(value)}")


@app.command("merge", epilog="[bold]Example[/bold]\n\n  saliency merge out/")
@_handle_errors
def merge_cmd(
    out: Annotated[Path, typer.Argument(help="Output folder of a sharded run.", show_default=False)],
    debug: DebugOpt = False,
) -> None:
    """Fold the manifest parts of a sharded run into OUT/manifest.jsonl (one
    record per image, the latest), e.g. after a Slurm array job."""
    _setup_logging(False, debug)
    from .writer import MANIFEST, manifest_files, merge_manifests

    if not out.is_dir():
        raise SaliencyError(f"no such folder: {str(out)!r}")
    parts = [p for p in manifest_files(out) if p.name != MANIFEST]
    count = merge_manifests(out)
    log.info("merged %d part(s): %d record(s) in %s", len(parts), count, out / MANIFEST)


@app.command("report", epilog="[bold]Example[/bold]\n\n  saliency report out/ && xdg-open out/report.html")
@_handle_errors
def report_cmd(
    out: Annotated[Path, typer.Argument(help="Output folder of one or more runs.", show_default=False)],
    debug: DebugOpt = False,
) -> None:
    """(Re)write OUT/report.html from the manifest: one row per image, one
    column per method, the predictions or detections, failed inputs."""
    _setup_logging(False, debug)
    from .report import write_report
    from .writer import manifest_files

    if not manifest_files(out):
        raise SaliencyError(f"no manifest in {str(out)!r}: run `saliency explain ... -o {out}` first")
    write_report(out)


@app.command("config")
@_handle_errors
def config_cmd(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Print the effective config (defaults, file and --set applied) as YAML."""
    print(dump_config(_config(config, set_)), end="")


@app.command("layers", epilog="[bold]Example[/bold]\n\n  saliency layers -c configs/resnet50.yaml\n\n"
             "  saliency explain photos/ -m grad-cam --set methods.grad-cam.layer=layer3")
@_handle_errors
def layers_cmd(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """List the layers grad-cam can explain (4-D outputs, in the order they run)."""
    _setup_logging(False, debug)
    import torch

    from .methods import registry
    from .methods.layers import list_layers
    from .models import load_model

    cfg = _config(config, set_)
    if cfg.task != "classification":
        raise SaliencyError("layers lists the layers of classifiers (for grad-cam); this config has "
                            f"task: {cfg.task}")
    model = load_model(cfg.model).eval()
    images = torch.zeros(1, 3, *cfg.preprocess.size)
    rows = list_layers(model, images)
    width = max(len(r.name) for r in rows)
    print(f"  {'layer':{width}s}  {'type':24s} output (one image, input {cfg.preprocess.size[0]}x"
          f"{cfg.preprocess.size[1]})")
    for row in rows:
        runs = f"  runs {row.calls}x per forward: the last call is used" if row.calls > 1 else ""
        print(f"{'*' if row.default else ' '} {row.name:{width}s}  {row.kind:24s} "
              f"{'x'.join(map(str, row.shape[1:]))}{runs}")
    print("* default layer of grad-cam and guided-grad-cam (the last feature map before global pooling)")
    try:
        cam = registry.get("cam")
        cam.run(model, images, None, cam.make_params())
        print("cam: available (global average pooling + linear head)")
    except SaliencyError as exc:
        print(f"cam: not available for this model: {exc}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
