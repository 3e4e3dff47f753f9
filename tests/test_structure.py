"""The shape of the package: no import cycles, small modules and functions, a
loop that knows no task or method, and extension points that are real (a
method and a task registered here, at run time, run through `saliency explain`)."""

from __future__ import annotations

import ast
import dataclasses
import json
import typing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from saliency_cli import tasks
from saliency_cli.cli import app
from saliency_cli.config import Config
from saliency_cli.data import normalize
from saliency_cli.figures import Picture
from saliency_cli.methods import registry
from saliency_cli.methods.registry import Attribution, Method, as_logits, select_targets

from .conftest import SAMPLES

PACKAGE = Path(__file__).resolve().parent.parent / "saliency_cli"
GENERATED = {"colormap_data.py", "label_names.py"}  # data tables


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Modules of the package that `path` imports anywhere (inside functions
    too), except under `if TYPE_CHECKING:` (never executed)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != name}


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_import_cycles_anywhere():
    files = package_files()
    modules = {module_name(p) for p in files}
    graph = {module_name(p): imports_of(p, modules) for p in files}
    assert graph["saliency_cli.config"] >= {"saliency_cli.tasks", "saliency_cli.methods.registry"}  # the walk works
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_command_line_starts_without_torch_until_a_command_needs_it(tmp_path):
    """`import saliency_cli` and the CLI's modules leave torch unloaded (1.8 s
    to import): `saliency --help` and `saliency verify` run without it, and the
    API's names load it on first use."""
    import subprocess
    import sys

    (tmp_path / "manifest.jsonl").write_text("")
    script = f"""
import sys
from typer.testing import CliRunner
import saliency_cli
from saliency_cli.cli import app
assert "torch" not in sys.modules, "imported torch"
for args in (["--help"], ["explain", "--help"], ["verify", {str(tmp_path)!r}, "-q"]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
    assert "torch" not in sys.modules, args
import saliency_cli.methods.registry  # the subpackage of the same name, imported after the package
assert "gradient" in saliency_cli.methods() and "torch" in sys.modules
from saliency_cli import Detections, attribute, explain_detections
assert attribute.__module__ == "saliency_cli.api" and "attribute" in dir(saliency_cli)
from unittest import mock
with mock.patch.object(saliency_cli, "methods", lambda: ["patched"]):
    assert saliency_cli.methods() == ["patched"]
assert "gradient" in saliency_cli.methods()
"""
    patched_before_loading = """
import saliency_cli
from unittest import mock
with mock.patch.object(saliency_cli, "methods", lambda: ["patched"]):
    assert saliency_cli.methods() == ["patched"]
assert "gradient" in saliency_cli.methods()
"""
    for code in (script, patched_before_loading):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr


def test_modules_and_functions_stay_small():
    too_long = []
    for path in package_files():
        lines = path.read_text().count("\n")
        if path.name not in GENERATED and lines > 300:
            too_long.append(f"{path.relative_to(PACKAGE)}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 50:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, too_long


def test_the_loop_names_no_task_and_no_method_parameter():
    tree = ast.parse((PACKAGE / "pipeline.py").read_text())
    words = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    words |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    parameters = {f.name for name in registry.names() for f in dataclasses.fields(registry.get(name).params)}
    assert parameters >= {"layer", "num_masks", "score_threshold", "noise_batch"}
    # the config's own keys (output.grid, runtime.seed) may share a name with a method parameter
    sections = [Config, *(t for t in typing.get_type_hints(Config).values() if dataclasses.is_dataclass(t))]
    config_keys = {f.name for section in sections for f in dataclasses.fields(section)}
    assert not (words & parameters) - config_keys, words & parameters
    assert not words & set(tasks.names()), words & set(tasks.names())


# ------------------------------------------------------------------ extension points, at run time


class Scorer(nn.Module):
    """A model of a third kind: one score per image (say, image quality)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x).relu().mean(dim=(1, 2, 3))


def scorer() -> nn.Module:
    torch.manual_seed(0)
    return Scorer()


@dataclass
class EnergyParams:
    power: float = 2.0


def energy(model, images, targets, params):
    """A toy classification method: |x|^power summed over channels (the model only gives the logits)."""
    logits = as_logits(model(images), images.shape[0]).detach()
    return Attribution(images.abs().pow(params.power).sum(1), logits, select_targets(logits, targets))


@dataclass(frozen=True, kw_only=True)
class ScoreMethod(Method):
    """The contract of the toy task's methods: compute(model, images, params) -> maps [B,H,W]."""

    compute: object
    task: str = "toy-scoring"


def score_gradient(model, images, params):
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(model(x).sum(), x)
    return grad.abs().amax(dim=1) * params.scale


@dataclass
class ScoreGradientParams:
    scale: float = 1.0


class Scoring(tasks.Task):
    """The toy task: per image, its score in the record and each method's map."""

    name = "toy-scoring"
    default_run = ("score-gradient",)

    def explain(self, batch, run):
        x = normalize(batch.inputs.to(self.device), self.cfg.preprocess)
        scores = run.model(x).tolist()
        for i, it in enumerate(batch.ok):
            work = run.work[it["index"]]
            record = self.new_record(work, it)
            record.fields["score"] = round(scores[i], 6)
            jobs, pictures = [], []
            for name in work.methods:
                bound = run.methods[name]
                values = bound.method.compute(run.model, x[i:i + 1], bound.params)[0]
                record.outputs[name] = files = self.expected_files(work.item.key, name)
                jobs.append(partial(run.writer.save_npy, files.npy, values.numpy()))
                shown = values if run.figures.device is not None else values.numpy()
                pictures += [Picture(rel, bound.method, bound.params, shown) for rel in files.pngs]
            jobs += run.figures.jobs(pictures, it, {})
            run.writer.submit(record, jobs, nbytes=self.photo_bytes(it))


@pytest.fixture
def extensions():
    registry.register("toy-energy", summary="toy", paper="none", params=EnergyParams, pixel_space=False)(energy)
    registry.add(ScoreMethod(name="score-gradient", summary="toy", paper="none", params=ScoreGradientParams,
                             compute=score_gradient))
    tasks.register(Scoring)
    yield
    registry.remove("toy-energy")
    registry.remove("score-gradient")
    tasks.remove("toy-scoring")


def explain(*args: str):
    return CliRunner().invoke(app, ["explain", str(SAMPLES / "chelsea.png"), "-q", *args])


def test_a_method_registered_at_run_time_runs_through_explain(extensions, tmp_path):
    result = explain("-o", str(tmp_path), "-m", "toy-energy", "-m", "gradient", "--set", "preprocess.size=32",
                     "--set", "methods.toy-energy.power=1", "--set", "model.factory=tests.helpers:TinyCNN")
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert list(record["outputs"]) == ["toy-energy", "gradient"]
    from saliency_cli.data import load_image, preprocess

    cfg = Config().preprocess
    cfg.size = [32, 32]
    x = normalize(preprocess(load_image(str(SAMPLES / "chelsea.png")), cfg)[0][None], cfg)
    np.testing.assert_allclose(np.load(tmp_path / "chelsea" / "toy-energy.npy"), x.abs().sum(1)[0].numpy(),
                               rtol=1e-6)
    assert (tmp_path / "chelsea" / "toy-energy.png").is_file()


def test_a_task_registered_at_run_time_runs_through_explain(extensions, tmp_path):
    args = ("-o", str(tmp_path), "--set", "task=toy-scoring", "--set", "preprocess.size=[24,40]",
            "--set", f"model.factory={__name__}:scorer", "--set", "labels=null")
    result = explain(*args)
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and isinstance(record["score"], float)
    assert record["outputs"] == {"score-gradient": {"png": "chelsea/score-gradient.png",
                                                    "npy": "chelsea/score-gradient.npy"}}
    assert np.load(tmp_path / "chelsea" / "score-gradient.npy").shape == (24, 40)
    wrong = explain("-o", str(tmp_path), "--set", "task=toy-scoring", "-m", "gradient")
    assert wrong.exit_code == 2 and "toy-scoring methods: score-gradient" in wrong.output
    again = explain(*args)
    assert again.exit_code == 0 and len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 1


def test_an_unknown_task_is_a_config_error(tmp_path):
    result = explain("-o", str(tmp_path), "--set", "task=clasification")
    assert result.exit_code == 2 and "unknown task 'clasification' (did you mean 'classification'?)" in result.output
