"""`saliency evaluate`: score the maps of an output folder."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import SaliencyError
from .common import (
    ConfigOpt,
    DebugOpt,
    QuietOpt,
    SetOpt,
    app,
    flag,
    handle_errors,
    load,
    on_sigterm,
    option,
    setup_logging,
    stdout_to_stderr,
)

log = logging.getLogger("saliency")


Out = Annotated[Path, typer.Argument(metavar="OUT", help="Output folder of saliency explain (its manifest and .npy "
                                     "maps).", show_default=False)]
Metric = Annotated[Optional[list[str]], option(
    "--metric", metavar="NAME", help="deletion, insertion, average-drop, increase, pointing, energy-pointing, sanity "
    "or all (repeatable). Default: deletion, insertion, average-drop, increase, and the pointing games with --boxes.")]
Method = Annotated[Optional[list[str]], option("--method", "-m", metavar="NAME", help="Evaluate only this method's "
                   "maps (repeatable). Default: every method in OUT.")]
Boxes = Annotated[Optional[Path], option("--boxes", metavar="FILE", help="Ground-truth boxes, COCO-format JSON (for "
                  "the pointing games); categories match the model's labels by name.")]
Steps = Annotated[int, option("--steps", metavar="S", min=1, help="Deletion/insertion steps S (k_s = round(s*N/S) "
                  "pixels at step s).", show_default=True)]
DeletionSub = Annotated[str, option("--deletion-substrate", metavar="NAME", help="What deleted pixels become: zero "
                        "(0 after normalisation: the mean colour), black, noise or blur.", show_default=True)]
InsertionSub = Annotated[str, option("--insertion-substrate", metavar="NAME", help="What insertion starts from: "
                         "blur (RISE: Gaussian 11x11, sigma 5), zero, black or noise.", show_default=True)]
Score = Annotated[str, option("--score", metavar="NAME", help="Deletion/insertion score: probability (softmax) or "
                  "logit.", show_default=True)]
Tolerance = Annotated[float, option("--tolerance", metavar="PIXELS", min=0, help="Pointing game: a hit within this "
                      "many photo pixels of a box.", show_default=True)]
SanitySteps = Annotated[int, option("--sanity-steps", metavar="N", min=1, help="Sanity check: randomisation steps at "
                        "which the maps are recomputed (every layer when the model has fewer).", show_default=True)]
Seed = Annotated[int, option("--seed", metavar="N", help="Seed of the noise substrate and the re-initialised "
                 "weights.", show_default=True)]
Json = Annotated[bool, flag("--json", help="Print the summary as JSON on stdout (nothing else goes there).")]
FailUnder = Annotated[Optional[list[str]], option("--fail-under", metavar="METRIC=VALUE", help="Exit with 1 "
                      "when a method's mean of METRIC is below VALUE, e.g. insertion=0.5 (repeatable).")]
FailOver = Annotated[Optional[list[str]], option("--fail-over", metavar="METRIC=VALUE", help="Exit with 1 when "
                     "a method's mean is above VALUE, for metrics where lower is better (deletion=0.2).")]
Report = Annotated[bool, flag("--report", help="Also write OUT/evaluation.html: the table and the mean "
                   "deletion/insertion curves per method.")]
Device = Annotated[Optional[str], option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N (default: "
                   "the config's).")]
BatchSize = Annotated[Optional[int], option("--batch-size", metavar="N", min=1, help="Images per batch; all their "
                      "maps go through the model together (default: the config's runtime.batch_size).")]
Overwrite = Annotated[bool, flag("--overwrite", help="Recompute metrics an earlier run already computed.")]

EPILOG = (
    "[bold]Examples[/bold]\n\n"
    "  saliency evaluate out\n\n"
    "  saliency evaluate out --boxes sample_images/boxes.json --report\n\n"
    "  saliency evaluate out --metric sanity -m guided-backprop -m gradient\n\n"
    "  saliency evaluate out --json --fail-under insertion=0.5 --fail-over deletion=0.2\n\n"
    "Reads OUT/manifest.jsonl, the maps and the config each was made with (OUT/settings/), reruns the same "
    "model with the same preprocessing, and writes OUT/evaluation.jsonl (one record per image and method), "
    "the curves (OUT/<image>/<method>.<metric>.npy) and OUT/evaluation-summary.json; prints the summary table. "
    "A rerun computes only what is missing. "
    "Exit codes: 0 ok, 1 some maps failed or a --fail-under/--fail-over gate failed, 2 bad usage, "
    "3 internal error, 130/143 interrupted."
)


@app.command(epilog=EPILOG)
@handle_errors
def evaluate(out: Out, metric: Metric = None, method: Method = None, boxes: Boxes = None, steps: Steps = 224,
             deletion_substrate: DeletionSub = "zero", insertion_substrate: InsertionSub = "blur",
             score: Score = "probability", tolerance: Tolerance = 15.0, sanity_steps: SanitySteps = 10,
             seed: Seed = 0, json_: Json = False, fail_under: FailUnder = None, fail_over: FailOver = None,
             report: Report = False, device: Device = None, batch_size: BatchSize = None,
             overwrite: Overwrite = False, quiet: QuietOpt = False, config: ConfigOpt = None, set_: SetOpt = None,
             debug: DebugOpt = False) -> None:
    """Score the maps of an output folder: deletion, insertion, average drop, increase in confidence,
    pointing games, sanity check; per method, the mean with its 95% confidence interval."""
    setup_logging(quiet, debug)
    from ..evaluation.metrics import Options, parse_gates, parse_metrics

    metrics = parse_metrics(metric, boxes is not None)
    under, over = parse_gates(fail_under, "--fail-under"), parse_gates(fail_over, "--fail-over")
    ungated = [m for m in [*under, *over] if m not in metrics]
    if ungated:
        raise SaliencyError(f"--fail-under/--fail-over {ungated[0]}: that metric is not computed in this run "
                            f"(metrics: {', '.join(metrics)})")
    options = Options(metrics, steps, deletion_substrate, insertion_substrate, score, tolerance,  # type: ignore[arg-type]
                      sanity_steps, seed, boxes)
    options.check()
    if not out.is_dir():
        raise SaliencyError(f"no such folder: {str(out)!r}")
    if not os.access(out, os.W_OK | os.X_OK):
        raise SaliencyError(f"no permission to write in {str(out)!r} (the evaluation is written there)")
    given = load(config, set_) if config is not None or set_ else None
    from ..evaluation.run import evaluate as run_evaluation  # torch import deferred: --help stays fast
    from ..runtime import reuse_freed_memory

    if given is None or given.runtime.reuse_memory:
        reuse_freed_memory()  # says so under --debug

    signal.signal(signal.SIGTERM, on_sigterm)
    with stdout_to_stderr():
        result = run_evaluation(out, options, methods=method, overwrite=overwrite, given=given, device=device,
                                batch_size=batch_size, progress=not quiet and sys.stderr.isatty(), report=report)
    if result.interrupted:
        raise typer.Exit(result.interrupted)
    _show(result, out, json_, report)
    failed = _gates(result.data, under, over)
    raise typer.Exit(1 if result.failed or failed else 0)


def _show(result, out: Path, as_json: bool, report: bool) -> None:
    from ..evaluation.summary import table
    from ..outputs import EVALUATION_REPORT, EVALUATION_SUMMARY

    if as_json:
        sys.stdout.write(json.dumps(result.data, indent=1, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(table(result.data))
    done = f"evaluated {result.evaluated} (image, method) pair(s)"
    if result.done:
        done += f", {result.done} already done"
    if result.failed:
        done += f", {result.failed} failed (see {out / 'evaluation.jsonl'})"
    log.info("%s; summary: %s", done, out / EVALUATION_SUMMARY)
    if report:
        log.info("report: %s", out / EVALUATION_REPORT)


def _gates(data: dict, under: dict[str, float], over: dict[str, float]) -> list[str]:
    from ..evaluation.summary import gate_failures

    failed = gate_failures(data, under, over)
    for line in failed:
        log.error("gate failed: %s", line)
    return failed
