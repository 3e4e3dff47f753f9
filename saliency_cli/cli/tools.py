"""The smaller commands: methods, config, layers, merge, report."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from ..errors import SaliencyError
from .common import ConfigOpt, DebugOpt, SetOpt, app, flag, handle_errors, load, setup_logging, stdout_to_stderr

log = logging.getLogger("saliency")


@app.command("methods")
@handle_errors
def methods_cmd(
    params: Annotated[bool, flag("--params", "-p", help="Also list each method's parameters with their "
                      "defaults.")] = False,
    debug: DebugOpt = False,
) -> None:
    """List the attribution methods (names for -m)."""
    from ..methods import registry

    width = max(map(len, registry.names()))
    for name in registry.names():
        spec = registry.get(name)
        print(f"{name:{width}s} {spec.summary}  [{spec.paper}]")
        if params:
            for key, value in spec.defaults().items():
                print(f"{'':{width}s}   {key}: {json.dumps(value)}")


@app.command("merge", epilog="[bold]Example[/bold]\n\n  saliency merge out/")
@handle_errors
def merge_cmd(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output folder of a sharded run.", show_default=False)],
    debug: DebugOpt = False,
) -> None:
    """Fold the manifest parts of a sharded run into OUT/manifest.jsonl (one
    record per image, the latest), e.g. after a Slurm array job."""
    setup_logging(False, debug)
    from ..outputs import MANIFEST
    from ..records import manifest_files, merge_manifests

    if not out.is_dir():
        raise SaliencyError(f"no such folder: {str(out)!r}")
    parts = [p for p in manifest_files(out) if p.name != MANIFEST]
    count = merge_manifests(out)
    log.info("merged %d part(s): %d record(s) in %s", len(parts), count, out / MANIFEST)


@app.command("report", epilog="[bold]Example[/bold]\n\n  saliency report out/ && xdg-open out/report.html")
@handle_errors
def report_cmd(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output folder of one or more runs.", show_default=False)],
    debug: DebugOpt = False,
) -> None:
    """(Re)write OUT/report.html from the manifest: one row per image, one
    column per method, the predictions or detections, failed inputs."""
    setup_logging(False, debug)
    from ..records import manifest_files
    from ..report import write_report

    if not manifest_files(out):
        raise SaliencyError(f"no manifest in {str(out)!r}: run `saliency explain ... -o {out}` first")
    write_report(out)


@app.command("config")
@handle_errors
def config_cmd(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Print the effective config (defaults, file and --set applied) as YAML."""
    from ..config import dump_config

    print(dump_config(load(config, set_)), end="")


@app.command("layers", epilog="[bold]Example[/bold]\n\n  saliency layers -c configs/resnet50.yaml\n\n"
             "  saliency explain photos/ -m grad-cam --set methods.grad-cam.layer=layer3")
@handle_errors
def layers_cmd(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """List the layers the layer methods (grad-cam, layer-cam, score-cam...) can
    explain (feature maps, NHWC maps and transformer tokens, in the order they
    run) and which methods apply."""
    setup_logging(False, debug)
    import torch

    from ..methods import registry
    from ..methods.layers import list_layers
    from ..models import load_model

    cfg = load(config, set_)
    if not any(registry.get(name).takes_layer for name in registry.names(cfg.task)):
        raise SaliencyError(f"layers lists the layers that layer methods (grad-cam...) can explain; no method "
                            f"of task: {cfg.task} explains a layer")
    with stdout_to_stderr():  # stdout: the table alone
        model = load_model(cfg.model).eval()
        images = torch.zeros(1, 3, *cfg.preprocess.size)
        rows = list_layers(model, images)
        applies = _applies(model, images, cfg)
    width = max([len(r.name) for r in rows] + [5])
    print(f"  {'layer':{width}s}  {'type':24s} output (one image, input {cfg.preprocess.size[0]}x"
          f"{cfg.preprocess.size[1]})")
    for row in rows:
        runs = f"  runs {row.calls}x per forward: the last call is used" if row.calls > 1 else ""
        print(f"{'*' if row.default else ' '} {row.name:{width}s}  {row.kind:24s} {row.output}{runs}")
    layered = ", ".join(name for name in registry.names(cfg.task) if registry.get(name).takes_layer)
    print(f"* default layer of {layered}: the last feature map before global pooling; for a "
          f"transformer, the last token layer whose patch tokens reach the classifier (ViT: the last block's first "
          "LayerNorm)" if any(r.default for r in rows) else "no default layer: name one with the method's `layer`")
    for line in applies:
        print(line)


def _applies(model, images, cfg) -> list[str]:
    """One line per method that needs more of a model than gradients: whether it applies."""
    from ..errors import NotApplicable
    from ..methods import registry

    lines = []
    for name in registry.names(cfg.task):
        method = registry.get(name)
        if method.needs:
            try:
                method.check_applies(model, images, cfg.method_params(name))
                lines.append(f"{name}: available")
            except NotApplicable as exc:
                lines.append(f"{name}: not available for this model: {exc}")
    return lines
