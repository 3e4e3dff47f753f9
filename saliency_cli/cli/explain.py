"""`saliency explain`: the main command."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, TextIO

import typer

from ..errors import OutputClosed, SaliencyError
from .common import (
    ConfigOpt,
    DebugOpt,
    QuietOpt,
    SetOpt,
    app,
    drop_stdout,
    flag,
    handle_errors,
    load,
    on_sigterm,
    option,
    setup_logging,
    stdout_to_stderr,
)

if TYPE_CHECKING:
    from ..pipeline import RunSummary
    from ..records import Record

log = logging.getLogger("saliency")


Paths = Annotated[list[str], typer.Argument(metavar="PATH", help="Image files, folders (searched recursively, "
                                            "sorted) or - to read paths from stdin.", show_default=False)]
Methods = Annotated[Optional[list[str]], option(
    "--method", "-m", metavar="NAME", help="Method to run (repeatable; `all` for every method of the task that "
    "applies to the model, the others named and skipped). Default: the config's `run` list. See `saliency methods`.")]
Out = Annotated[Path, option("--out", "-o", metavar="DIR", help="Output folder.", show_default=True)]
BatchSize = Annotated[Optional[int], option("--batch-size", metavar="N", min=1, help="Images per batch (config "
                      "runtime.batch_size, default 8).")]
Device = Annotated[Optional[str], option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N (default "
                   "auto: CUDA when available).")]
Target = Annotated[Optional[str], option("--target", metavar="CLASS", help="Class to explain: predicted (each "
                   "image's top-1, default), a class index, or a class name.")]
TopK = Annotated[Optional[int], option("--top-k", metavar="K", min=1, help="Predictions recorded per image "
                 "(default 5).")]
Overwrite = Annotated[bool, flag("--overwrite", help="Recompute images that an earlier run already finished.")]
Jsonl = Annotated[bool, flag("--jsonl", help="Print each manifest record to stdout as it is written (nothing "
                  "else goes to stdout).")]
Grid = Annotated[bool, flag("--grid", help="Also write OUT/<image>/grid.png: the photo and every method side by "
                 "side, labelled.")]
Report = Annotated[bool, flag("--report", help="Also write OUT/report.html, a static page of every image and "
                   "method (paged, lazy-loading).")]
NoOverlay = Annotated[bool, flag("--no-overlay", help="PNGs show the bare heatmap, not blended over the photo.")]
Colormap = Annotated[Optional[str], option("--colormap", metavar="NAME", help="jet (default), viridis, inferno or "
                     "gray; signed maps always use blue-white-red.")]
Amp = Annotated[bool, flag("--amp", help="Autocast classifiers to bfloat16: faster where the hardware has "
                "bfloat16 units; CAM maps barely change, raw gradients do (see README).")]
FailFast = Annotated[bool, flag("--fail-fast", help="Stop after the batch in which an input first fails (exit "
                     "code 1) instead of recording it and going on.")]
Profile = Annotated[bool, flag("--profile", help="At the end, print on stderr where the time went: decode, "
                    "transfer, attribution, render, encode, write, idle (seconds and share of the wall time).")]
Hidden = Annotated[bool, flag("--include-hidden", help="Also take hidden files and folders (names starting with a "
                   "dot, such as .ipynb_checkpoints) inside folders; skipped by default.")]
Shard = Annotated[Optional[str], option("--shard", metavar="K/N", help="Process only shard K (0..N-1) of N of the "
                  "sorted inputs; under torchrun the run shards itself by RANK/WORLD_SIZE. The last shard to "
                  "finish merges the manifests.")]

EPILOG = (
    "[bold]Examples[/bold]\n\n"
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
    "config, 3 internal error, 4 OUT full or read-only (finished images kept; free space and rerun), "
    "130/143 interrupted, 141 stdout's reader gone (--jsonl | head). "
    "Runs into one OUT take turns: a second run waits for the first."
)


@app.command(epilog=EPILOG)
@handle_errors
def explain(paths: Paths, config: ConfigOpt = None, method: Methods = None, out: Out = Path("saliency-out"),
            batch_size: BatchSize = None, device: Device = None, target: Target = None, top_k: TopK = None,
            overwrite: Overwrite = False, quiet: QuietOpt = False, jsonl: Jsonl = False, grid: Grid = False,
            report: Report = False, no_overlay: NoOverlay = False, colormap: Colormap = None, amp: Amp = False,
            fail_fast: FailFast = False, shard: Shard = None, include_hidden: Hidden = False,
            profile: Profile = False, set_: SetOpt = None,
            debug: DebugOpt = False) -> None:
    """Explain images: write heatmap PNGs, raw .npy maps and a manifest."""
    setup_logging(quiet, debug)
    # every option reaches the config as --set and the file do, and is checked with them
    cfg = load(config, set_, {
        "runtime.batch_size": batch_size, "runtime.device": device, "runtime.target": target,
        "runtime.top_k": top_k, "runtime.amp": amp or None, "output.grid": grid or None,
        "output.report": report or None, "output.overlay": False if no_overlay else None,
        "output.colormap": colormap,
    })
    from .. import pipeline  # torch import deferred: `saliency --help` stays fast
    from ..runtime import reuse_freed_memory

    if cfg.runtime.reuse_memory:
        reuse_freed_memory()  # says so under --debug

    signal.signal(signal.SIGTERM, on_sigterm)
    printer = _RecordPrinter(sys.stdout) if jsonl else None
    with stdout_to_stderr():
        summary = pipeline.run(
            cfg, paths, out, methods=method or None, overwrite=overwrite,
            progress=not quiet and sys.stderr.isatty(), on_record=printer,
            shard=_parse_shard(shard), fail_fast=fail_fast, include_hidden=include_hidden,
        )
    _tell(summary, out)
    if profile and summary.seconds:
        print(summary.profile.table(summary.seconds, {"decode": summary.decoded_where}), file=sys.stderr)
    raise typer.Exit(summary.exit_code)


def _tell(summary: RunSummary, out: Path) -> None:
    """The run's last line on stderr."""
    if summary.interrupted:
        if summary.remaining:
            log.log(summary.stop_level, "interrupted after %d image(s), %d left; rerun the same command to finish",
                    summary.ok, summary.remaining)
        else:  # the signal (or the reader's exit) came after the last image
            log.log(summary.stop_level, "interrupted after the last image; nothing is left to do in %s", out)
        return
    done = f"{summary.ok} image(s) written to {out}"
    if summary.skipped:
        done += f", {summary.skipped} already done"
    if summary.failed:
        done += f", {summary.failed} failed (see {out}/manifest.jsonl)"
    if summary.seconds:
        done += f" in {summary.seconds:.1f}s"
    log.info("%s", done)


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

    def __init__(self, stdout: TextIO) -> None:
        self.stdout = stdout  # the command's stdout (the run's own stdout goes to stderr)
        self.closed = False

    def __call__(self, record: Record) -> None:
        if self.closed:
            return
        try:
            self.stdout.write(record.to_line())
            self.stdout.flush()
        except BrokenPipeError:
            self.closed = True
            drop_stdout(self.stdout)
            raise OutputClosed() from None
