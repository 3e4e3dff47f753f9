"""Smaller things users trip on: stale D-RISE PNGs after --overwrite, a
labels list of the wrong length, a Grad-CAM layer that gives a constant map,
hidden files in photo folders, --version, the default methods of a task."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import saliency_cli as sal
from saliency_cli.cli import app
from saliency_cli.config import load_config
from saliency_cli.discovery import discover
from saliency_cli.errors import SaliencyError
from saliency_cli.integrity import verify_folder
from saliency_cli.pipeline import run

from .conftest import SAMPLES
from .helpers import TinyCNN
from .test_cli import records, saliency
from .test_reliability import GOOD, many_images

TINY_SET = "model.factory=tests.helpers:TinyCNN"

DETECTOR = """
import torch
from saliency_cli import Detections

def build(count=2):
    def detect(images):  # the first `count` of: a cat on the left half, a cup on the right half
        h, w = images.shape[-2:]
        out = []
        for image in images:
            scores = torch.stack([image[:, :, : w // 2].mean(), image[:, :, w // 2:].mean()]).clamp(0.1, 1)
            boxes = torch.tensor([[0.0, 0.0, w / 2, h], [w / 2, 0.0, w, h]])
            out.append(Detections(boxes[:count], scores[:count], torch.eye(2)[:count], torch.arange(2)[:count]))
        return out
    return detect
"""


def test_a_detection_config_runs_d_rise_and_overwrite_drops_pngs_of_lost_detections(tmp_path):
    (tmp_path / "detector.py").write_text(DETECTOR)
    config = tmp_path / "detect.yaml"  # no `run:` list, no -m: the task's default
    config.write_text(f"task: detection\nmodel: {{factory: \"{tmp_path / 'detector.py'}:build\"}}\n"
                      "labels: [cat, cup]\nmethods:\n  d-rise: {num_masks: 16, grid: 4, score_threshold: 0.0}\n")
    out = tmp_path / "out"
    proc = saliency("explain", str(SAMPLES / "coffee.png"), "-c", str(config), "-o", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    assert records(out)[-1]["outputs"]["d-rise"]["png"] == ["coffee/d-rise-0.png", "coffee/d-rise-1.png"]
    cfg = load_config(config, ["model.kwargs={count: 1}"])
    assert run(cfg, [str(SAMPLES / "coffee.png")], out, overwrite=True).exit_code == 0
    record = records(out)[-1]
    assert record["outputs"]["d-rise"]["png"] == ["coffee/d-rise-0.png"] and len(record["detections"]) == 1
    assert sorted(p.name for p in (out / "coffee").iterdir()) == ["d-rise-0.png", "d-rise.npy"]
    assert verify_folder(out).problems == []


def test_labels_that_do_not_fit_the_model(tmp_path, saliency_log, caplog):
    photo = tmp_path / "a.png"
    Image.fromarray(GOOD).save(photo)
    with caplog.at_level(logging.WARNING, logger="saliency"):
        run(load_config(None, [TINY_SET, "labels=[a, b, c, d, e]"]), [str(photo)], tmp_path / "o1",
            methods=["gradient"])
        assert caplog.text == ""
        run(load_config(None, [TINY_SET, "labels=[a, b, c, d, e, f]"]), [str(photo)], tmp_path / "o2",
            methods=["gradient"])
    assert "labels: 6 name(s) for a model with 5 outputs" in caplog.text
    with pytest.raises(SaliencyError, match=r"labels: class 3 is explained but the list has only 2 name\(s\)"):
        run(load_config(None, [TINY_SET, "labels=[a, b]", "runtime.target=3"]), [str(photo)], tmp_path / "o3",
            methods=["gradient"])


def test_a_grad_cam_layer_with_a_one_pixel_map_is_flagged(saliency_log, caplog):
    model, images = TinyCNN().eval(), torch.rand(2, 3, 16, 16)
    with caplog.at_level(logging.WARNING, logger="saliency"):
        sal.attribute(model, images, method="grad-cam", layer="conv2")
        assert caplog.text == ""
        maps = sal.attribute(model, images, method="grad-cam", layer="pool")
    assert "grad-cam: layer 'pool' outputs a 1x1 map" in caplog.text and "constant" in caplog.text
    assert torch.allclose(maps, maps[:, :1, :1].expand_as(maps))  # constant over each image, as it says


def test_hidden_files_and_folders_are_skipped_unless_asked(tmp_path, saliency_log, caplog):
    many_images(tmp_path / "in", 1)
    for hidden in (".ipynb_checkpoints/img000-checkpoint.png", "._img000.png", "sub/.thumb.png"):
        (tmp_path / "in" / hidden).parent.mkdir(exist_ok=True)
        Image.fromarray(GOOD).save(tmp_path / "in" / hidden)
    assert [i.key for i in discover([str(tmp_path / "in")]).items] == ["img000"]
    assert discover([str(tmp_path / "in" / "._img000.png")]).items  # named explicitly: taken
    with caplog.at_level(logging.INFO, logger="saliency"):
        summary = run(load_config(None, [TINY_SET]), [str(tmp_path / "in")], tmp_path / "out", methods=["gradient"])
    assert summary.found == 1 and "skipping 3 hidden file(s) and folder(s)" in caplog.text
    summary = run(load_config(None, [TINY_SET]), [str(tmp_path / "in")], tmp_path / "out", methods=["gradient"],
                  include_hidden=True)
    assert (summary.found, summary.skipped, summary.ok) == (4, 1, 3)


def test_version(saliency_log):
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith(f"saliency-cli {sal.__version__} (torch ")


def test_a_command_run_in_process_leaves_logging_working(tmp_path, saliency_log, capsys):
    """CliRunner gives a command a stderr that it closes afterwards; the log
    lines of later work in the same process still reach the real stderr."""
    result = CliRunner().invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 2 and "no manifest" in result.output
    saliency_log.warning("after the command")
    err = capsys.readouterr().err
    assert "saliency: warning: after the command" in err and "Logging error" not in err


PRINTING_FACTORY = """
from tests.helpers import TinyCNN

def build():
    print('Downloading: "https://example.invalid/tiny.pth" to /tmp/tiny.pth')  # as torch.hub does, on stdout
    return TinyCNN()
"""


def test_stdout_carries_only_the_commands_output(tmp_path):
    """What a model's loading prints on stdout (torch.hub's `Downloading:`
    line on a first run, a factory's print) goes to stderr: explain --jsonl,
    evaluate --json and layers keep stdout parseable. evaluate names its
    report only when it wrote it."""
    import json

    (tmp_path / "printing.py").write_text(PRINTING_FACTORY)
    factory = f"model.factory={tmp_path / 'printing.py'}:build"
    out = tmp_path / "out"
    proc = saliency("explain", str(SAMPLES / "chelsea.png"), str(SAMPLES / "coffee.png"), "-o", str(out),
                    "-m", "gradient", "--set", factory, "--set", "labels=null", "--jsonl")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["status"] for line in proc.stdout.splitlines()] == ["ok", "ok"]
    assert "Downloading: " in proc.stderr
    proc = saliency("evaluate", str(out), "--metric", "deletion", "--steps", "4", "--json", "--report")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["methods"]["gradient"]
    assert "Downloading: " in proc.stderr and f"report: {out / 'evaluation.html'}" in proc.stderr
    proc = saliency("evaluate", str(out), "--metric", "deletion", "--steps", "4")  # names no stale report
    assert proc.returncode == 0 and "report:" not in proc.stderr, proc.stderr
    proc = saliency("layers", "--set", factory)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["layer", "type"] and "Downloading: " in proc.stderr


def test_a_closed_stdout_ends_any_command_quietly(tmp_path):
    """`saliency methods | head -1` and the like: the reader gone, the command
    stops with 141 (as a shell tool killed by SIGPIPE), no internal error."""
    import subprocess
    import sys

    for args in (["methods", "--params"], ["config"]):
        proc = subprocess.Popen([sys.executable, "-m", "saliency_cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        proc.stdout.close()  # before the command writes anything
        stderr = proc.stderr.read()
        assert proc.wait(timeout=120) == 141, stderr
        assert stderr == "", stderr


def test_usage_errors_are_one_line_with_exit_code_2(tmp_path):
    """An unknown option, a missing PATH, a value out of range, an unknown
    command: one `saliency: error:` line naming the help to read, exit 2, as
    every other error of the tool (not Typer's box under the usage line)."""
    cmd = "python -m saliency_cli"  # as saliency() runs it; installed: 'saliency explain --help'
    cases = {
        ("explain", "x.jpg", "--overwite"): "No such option: --overwite (Possible options: --overwrite) "
                                            f"(see '{cmd} explain --help')",
        ("explain",): f"Missing argument 'PATH' (see '{cmd} explain --help')",
        ("explain", "x.jpg", "--batch-size", "0"): "Invalid value for '--batch-size'",
        ("explian",): f"No such command 'explian'. Did you mean 'explain'? (see '{cmd} --help')",
        ("verify",): f"Missing argument 'OUT' (see '{cmd} verify --help')",
    }
    for args, message in cases.items():
        proc = saliency(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith(f"saliency: error: {message}") and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stdout == "" and not list(tmp_path.iterdir())
    bare = saliency(cwd=tmp_path)  # the help, as before
    assert bare.returncode == 2 and f"Usage: {cmd}" in bare.stdout and bare.stderr == ""
