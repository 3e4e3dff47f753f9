"""`saliency` end to end, as a user runs it: a real process, real exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import SAMPLES

PHOTOS = sorted(p for p in SAMPLES.iterdir() if p.suffix in {".png", ".jpg"})
CATS = {"Egyptian cat", "tabby", "tiger cat", "Persian cat", "Siamese cat"}


def saliency(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "saliency_cli", *args], input=stdin, capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = saliency("explain", str(SAMPLES), "-m", "gradient", "-m", "gradient-x-input", "-o", str(out))
    return proc, out


@pytest.fixture
def demo_copy(demo_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(demo_run[1], out)
    return out


def test_explain_sample_images(demo_run):
    proc, out = demo_run
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    recs = {r["key"]: r for r in records(out)}
    assert sorted(recs) == sorted(p.stem for p in PHOTOS)
    chelsea = recs["chelsea"]
    assert chelsea["predictions"][0]["label"] in CATS
    assert chelsea["target"]["class"] == chelsea["predictions"][0]["class"]
    assert 0.5 < chelsea["predictions"][0]["prob"] <= 1.0
    for photo in PHOTOS:
        rec = recs[photo.stem]
        assert rec["status"] == "ok" and rec["input"] == str(photo)
        with Image.open(photo) as original:
            size = original.size
        for method in ("gradient", "gradient-x-input"):
            files = rec["outputs"][method]
            with Image.open(out / files["png"]) as png:
                assert png.size == size and png.mode == "RGB"
            raw = np.load(out / files["npy"])
            assert raw.shape == (224, 224) and raw.dtype == np.float32 and np.isfinite(raw).all()
    # gradient maps are non-negative (max-abs), gradient x input is signed (sum)
    assert np.load(out / "chelsea/gradient.npy").min() >= 0
    assert np.load(out / "chelsea/gradient-x-input.npy").min() < 0
    assert not (out / ".tmp").exists()


def test_second_run_skips_everything(demo_copy):
    before = {p: p.stat().st_mtime_ns for p in demo_copy.rglob("*.*")}
    proc = saliency("explain", str(SAMPLES), "-m", "gradient", "-m", "gradient-x-input", "-o", str(demo_copy))
    assert proc.returncode == 0, proc.stderr
    assert "4 of 4 image(s) already done" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in demo_copy.rglob("*.*")} == before


def test_a_new_method_only_computes_that_method(demo_copy):
    old = (demo_copy / "chelsea/gradient.npy").stat().st_mtime_ns
    proc = saliency("explain", str(SAMPLES), "-m", "gradient", "-m", "deconvnet", "-o", str(demo_copy))
    assert proc.returncode == 0, proc.stderr
    assert (demo_copy / "chelsea/gradient.npy").stat().st_mtime_ns == old
    latest = {r["key"]: r for r in records(demo_copy)}
    assert set(latest["chelsea"]["outputs"]) == {"gradient", "gradient-x-input", "deconvnet"}
    assert set(latest["chelsea"]["seconds"]) == {"decode", "deconvnet"}


def test_changed_settings_redo_only_the_affected_maps(demo_copy):
    """A rerun with other method parameters (or PNG style) must not keep maps
    made with the old ones; untouched methods stay as they are."""
    x_input = (demo_copy / "chelsea/gradient-x-input.npy").stat().st_mtime_ns
    cmd = ("explain", str(SAMPLES), "-m", "gradient", "-m", "gradient-x-input", "-o", str(demo_copy))
    proc = saliency(*cmd, "--set", "methods.gradient.reduce=sum-abs")
    assert proc.returncode == 0, proc.stderr
    assert "4 image(s) in" in proc.stderr and "made with other settings" in proc.stderr
    latest = {r["key"]: r for r in records(demo_copy)}
    assert set(latest["chelsea"]["seconds"]) == {"decode", "gradient"}  # only gradient was redone
    assert (demo_copy / "chelsea/gradient-x-input.npy").stat().st_mtime_ns == x_input
    assert set(latest["chelsea"]["outputs"]) == set(latest["chelsea"]["settings"]) == {"gradient", "gradient-x-input"}
    again = saliency(*cmd, "--set", "methods.gradient.reduce=sum-abs")
    assert again.returncode == 0 and "4 of 4 image(s) already done" in again.stderr
    restyled = saliency(*cmd, "--set", "methods.gradient.reduce=sum-abs", "--colormap", "viridis")
    assert restyled.returncode == 0 and "made with other settings" in restyled.stderr


def test_records_without_settings_count_as_done(demo_copy):
    """Output folders from before settings were recorded are not redone."""
    manifest = demo_copy / "manifest.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "settings"}) + "\n" for r in lines))
    proc = saliency("explain", str(SAMPLES), "-m", "gradient", "-m", "gradient-x-input", "-o", str(demo_copy),
                    "--set", "methods.gradient.reduce=sum-abs")
    assert proc.returncode == 0 and "4 of 4 image(s) already done" in proc.stderr


def test_overwrite_recomputes(demo_copy):
    old = (demo_copy / "coffee/gradient.png").stat().st_mtime_ns
    proc = saliency("explain", str(SAMPLES / "coffee.png"), "-m", "gradient", "-o", str(demo_copy),
                    "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert (demo_copy / "coffee/gradient.png").stat().st_mtime_ns != old
    latest = records(demo_copy)[-1]
    assert latest["key"] == "coffee"
    assert set(latest["outputs"]) == {"gradient", "gradient-x-input"}  # the other method's files are still listed


def test_an_output_folder_that_is_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        proc = saliency("explain", str(SAMPLES / "chelsea.png"), "-o", str(out), "-q")
        assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_stdin_jsonl_and_a_bad_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    paths = f"{SAMPLES / 'chelsea.png'}\n{bad}\n{SAMPLES / 'rocket.jpg'}\n"
    out = tmp_path / "out"
    proc = saliency("explain", "-", "-m", "gradient", "-o", str(out), "--jsonl", "--target", "tabby",
                    stdin=paths, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert printed == records(out)
    status = {r["input"]: r["status"] for r in printed}
    assert status == {str(SAMPLES / "chelsea.png"): "ok", str(bad): "error",
                      str(SAMPLES / "rocket.jpg"): "ok"}
    assert all(r["target"]["label"] == "tabby" for r in printed if r["status"] == "ok")
    assert "broken.jpg: cannot decode image" in proc.stderr or "broken.jpg: not an image" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["-m", "grad-came"], "unknown method 'grad-came'"),
    (["--set", "runtime.bach_size=2"], "unknown key 'runtime.bach_size'"),
    (["--set", "model.checkpoint=/no/such.pt", "--set", "model.factory=null", "--set", "model.arch=resnet18"],
     "no such file '/no/such.pt'"),
    (["--target", "unicorn"], "unknown class name 'unicorn'"),
    (["--device", "tpu"], "--device: expected auto, cpu, cuda or cuda:N"),
])
def test_user_errors_are_one_line_with_exit_code_2(tmp_path, args, message):
    proc = saliency("explain", str(SAMPLES / "chelsea.png"), "-o", str(tmp_path / "o"), "-q", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saliency: error: ") and message in lines[0], proc.stderr


@pytest.mark.parametrize(("body", "message"), [
    ("raise RuntimeError('weights not found')", "model.factory {file}:build raised RuntimeError: weights not found"),
    ("return torch.nn.Linear(5, 3)", "the model cannot run on a 1x3x224x224 input (preprocess.size): RuntimeError"),
])
def test_a_broken_model_is_one_line_with_exit_code_2(tmp_path, body, message):
    """The user's factory or model fails: their error, said once, not 'internal error'."""
    factory = tmp_path / "models.py"
    factory.write_text(f"import torch\n\ndef build():\n    {body}\n")
    proc = saliency("explain", str(SAMPLES / "chelsea.png"), "-o", str(tmp_path / "o"), "-q",
                    "--set", f"model.factory={factory}:build")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message.format(file=factory) in lines[0], proc.stderr
    assert not (tmp_path / "o").exists()


def test_debug_shows_the_traceback(tmp_path):
    proc = saliency("explain", str(SAMPLES / "chelsea.png"), "-m", "nope", "--debug", "-o", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_missing_input_and_empty_folder(tmp_path):
    proc = saliency("explain", str(tmp_path / "nothing-here"), "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = saliency("explain", str(tmp_path / "empty"), "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and "no images found" in proc.stderr


def test_methods_and_help_teach():
    listed = saliency("methods").stdout
    import saliency_cli as sal

    assert [line.split()[0] for line in listed.splitlines() if line and not line[0].isspace()] == sal.methods()
    params = saliency("methods", "--params").stdout
    assert "noise_level: 0.15" in params and "n: 50" in params
    helptext = saliency("explain", "--help").stdout
    assert "saliency explain sample_images -o out" in helptext and "--set" in helptext


def test_the_command_list_shows_each_summary_on_one_line():
    """`saliency --help` lists every command with its docstring's first
    paragraph joined into one line (in a terminal wide enough for it)."""
    import inspect

    from saliency_cli.cli import app

    listing = subprocess.run([sys.executable, "-m", "saliency_cli", "--help"], capture_output=True, text=True,
                             env={**os.environ, "COLUMNS": "300"}, timeout=60).stdout
    for command in app.registered_commands:
        summary = " ".join(inspect.getdoc(command.callback).split("\n\n")[0].split())
        assert summary in listing, summary


def test_help_shows_flags_bare_and_values_by_what_they_are():
    """In every command's --help (and saliency --help) an on/off option,
    -h/--help too, is the bare `--name` (Typer would add `<bool>`, as if it
    took a value), an option that takes a value shows what to write (N,
    NAME, FILE), not a Python type (`<int range>`, `<list[str]>`), and an
    argument its name alone (PATH, OUT)."""
    import typer
    from typer.testing import CliRunner

    from saliency_cli.cli import app

    group = typer.main.get_command(app)
    checked = 0
    for name, command in [("", group), *group.commands.items()]:
        helptext = CliRunner().invoke(app, [name, "--help"] if name else ["--help"], env={"COLUMNS": "200"}).stdout
        context = typer.Context(command)
        for param in [*command.params, command.get_help_option(context)]:
            # (Typer brings its own click: no isinstance)
            label = param.opts[0] if param.param_type_name == "option" else param.metavar
            row = next(line for line in helptext.splitlines() if re.match(rf"\W+{label}\s", line))
            assert not re.search(r"<(bool|int|float|str|path|list)\b", row), (name, row)
            if param.param_type_name == "option" and not param.is_flag:
                assert param.metavar and f" {param.metavar} " in row, (name, row)
            checked += 1
    assert checked > 65, checked


def test_config_command_shows_effective_values():
    import yaml

    proc = saliency("config", "--set", "methods.smoothgrad.n=25")
    assert proc.returncode == 0
    shown = yaml.safe_load(proc.stdout)
    assert shown["methods"]["smoothgrad"]["n"] == 25
    assert shown["methods"]["smoothgrad"]["noise_level"] == 0.15  # defaults filled in
    assert shown["model"]["factory"] == "saliency_cli.models:efficientnet_lite0"


def test_cam_family_through_the_cli(tmp_path):
    out = tmp_path / "out"
    proc = saliency("explain", str(SAMPLES / "chelsea.png"), "-o", str(out), "-m", "cam", "-m", "grad-cam",
                    "-m", "guided-grad-cam", "--set", "methods.guided-grad-cam.layer=_blocks.15")
    assert proc.returncode == 0, proc.stderr
    assert "layer '_swish' runs 2 times per forward pass; explaining its last call (output 1280x7x7)" in proc.stderr
    for method in ("cam", "grad-cam", "guided-grad-cam"):
        raw = np.load(out / "chelsea" / f"{method}.npy")
        assert raw.shape == (224, 224) and np.isfinite(raw).all()
    cam, grad_cam = np.load(out / "chelsea/cam.npy"), np.load(out / "chelsea/grad-cam.npy")
    # EfficientNet-Lite0 ends in GAP + linear on a 7x7 map: Grad-CAM = ReLU(CAM) / 49,
    # and this CAM is positive everywhere, so the saved maps differ by exactly 49
    assert cam.min() > 0
    np.testing.assert_allclose(grad_cam, cam / 49, rtol=1e-4)


def test_layers_lists_candidates_and_marks_the_default():
    proc = saliency("layers")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    default = [line for line in lines if line.startswith("* ") and "ReLU6" in line]
    assert len(default) == 1 and "_swish" in default[0] and "1280x7x7" in default[0] and "runs 2x" in default[0]
    assert any("_blocks.15 " in line and "MBConvBlock" in line and "320x7x7" in line for line in lines)
    assert "cam: available" in proc.stdout
    vgg = saliency("layers", "--set", "model.factory=null", "--set", "model.arch=vgg11",
                   "--set", "preprocess.size=64")
    assert vgg.returncode == 0, vgg.stderr
    assert any(line.startswith("* features ") for line in vgg.stdout.splitlines())
    assert "cam: not available" in vgg.stdout


def detection_config(tmp_path: Path, arch: str, kwargs: str) -> Path:
    path = tmp_path / "detect.yaml"
    path.write_text(f"""
task: detection
model:
  arch: {arch}
  kwargs: {{weights_backbone: null, {kwargs}}}
preprocess: {{max_size: 256}}
run: [d-rise]
methods:
  d-rise: {{num_masks: 16, mask_batch: 8, score_threshold: 0.0, max_detections: 2}}
""")
    return path


@pytest.mark.parametrize(("arch", "kwargs"), [
    ("fasterrcnn_mobilenet_v3_large_320_fpn", "box_score_thresh: 0.0"),
    ("retinanet_resnet50_fpn", "score_thresh: 0.0, min_size: 256, max_size: 256"),
])
def test_d_rise_end_to_end_with_torchvision_detectors(tmp_path, arch, kwargs):
    config = detection_config(tmp_path, arch, kwargs)
    out = tmp_path / "out"
    photo = SAMPLES / "astronaut.png"
    proc = saliency("explain", str(photo), "-c", str(config), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    (record,) = records(out)
    assert record["status"] == "ok" and len(record["detections"]) == 2
    raw = np.load(out / record["outputs"]["d-rise"]["npy"])
    assert raw.shape == (2, 256, 256) and raw.dtype == np.float32 and np.isfinite(raw).all()
    assert raw.min() >= 0 and raw.max() <= 1
    for det in record["detections"]:
        x0, y0, x1, y1 = det["box"]
        assert 0 <= x0 <= x1 <= 512 and 0 <= y0 <= y1 <= 512  # in the photo's own pixels
        assert det["label"] and 0 <= det["score"] <= 1
        with Image.open(out / det["png"]) as png:
            assert png.size == (512, 512)
    again = saliency("explain", str(photo), "-c", str(config), "-o", str(out))
    assert again.returncode == 0 and "1 of 1 image(s) already done" in again.stderr


def test_task_and_method_must_agree(tmp_path):
    proc = saliency("explain", str(SAMPLES / "chelsea.png"), "-m", "d-rise", "-o", str(tmp_path))
    assert proc.returncode == 2
    assert "method 'd-rise' is for task: detection, and this config has task: classification" in proc.stderr
    config = detection_config(tmp_path, "fasterrcnn_mobilenet_v3_large_320_fpn", "box_score_thresh: 0.0")
    proc = saliency("explain", str(SAMPLES / "chelsea.png"), "-c", str(config), "-m", "grad-cam", "-o",
                    str(tmp_path))
    assert proc.returncode == 2 and "detection methods: d-rise" in proc.stderr
    proc = saliency("layers", "-c", str(config))
    assert proc.returncode == 2 and "task: detection" in proc.stderr


FACTORY_DETECTOR = """
import torch
from saliency_cli import Detections

def build():
    def detect(images):  # a cat on the left half, a cup on the right half
        h, w = images.shape[-2:]
        out = []
        for image in images:
            left, right = image[:, :, : w // 2].mean(), image[:, :, w // 2:].mean()
            out.append(Detections(torch.tensor([[0.0, 0.0, w / 2, h], [w / 2, 0.0, w, h]]),
                                  torch.stack([left, right]).clamp(0, 1),
                                  torch.eye(2), torch.tensor([0, 1])))
        return out
    return detect
"""


def toy_detector_config(folder: Path, num_masks: int) -> Path:
    """A detection config whose factory builds the toy detector above."""
    (folder / "toy_detector.py").write_text(FACTORY_DETECTOR)
    config = folder / "toy.yaml"
    config.write_text(f"""
task: detection
model: {{factory: "{folder / 'toy_detector.py'}:build"}}
labels: [cat, cup]
run: [d-rise]
methods:
  d-rise: {{num_masks: {num_masks}, grid: 4, score_threshold: 0.0}}
""")
    return config


def test_factory_detector_and_target_class(tmp_path):
    config = toy_detector_config(tmp_path, num_masks=64)
    out = tmp_path / "out"
    proc = saliency("explain", str(SAMPLES / "coffee.png"), "-c", str(config), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert [d["label"] for d in records(out)[0]["detections"]] == ["cup", "cat"]  # brighter right half first
    proc = saliency("explain", str(SAMPLES / "coffee.png"), "-c", str(config), "-o", str(out), "--overwrite",
                    "--target", "cat")
    assert proc.returncode == 0, proc.stderr
    record = records(out)[-1]
    assert [d["label"] for d in record["detections"]] == ["cat"]
    saliency_map = np.load(out / record["outputs"]["d-rise"]["npy"])[0]
    half = saliency_map.shape[1] // 2
    assert saliency_map[:, :half].mean() > saliency_map[:, half:].mean()  # the cat's evidence is on the left


def test_channels_last_and_amp_keep_the_maps(tmp_path):
    """channels_last (the default) agrees with the contiguous layout to float
    rounding; --amp changes Grad-CAM only slightly and keeps the prediction."""
    photo = str(SAMPLES / "chelsea.png")
    runs = {"default": [], "contiguous": ["--set", "runtime.channels_last=false"], "amp": ["--amp"]}
    maps = {}
    for name, extra in runs.items():
        out = tmp_path / name
        proc = saliency("explain", photo, "-o", str(out), "-m", "gradient", "-m", "grad-cam", "-q", *extra)
        assert proc.returncode == 0, proc.stderr
        assert records(out)[0]["predictions"][0]["label"] == "Egyptian cat"
        maps[name] = {m: np.load(out / "chelsea" / f"{m}.npy") for m in ("gradient", "grad-cam")}
    for method in ("gradient", "grad-cam"):
        want = maps["contiguous"][method]
        np.testing.assert_allclose(maps["default"][method], want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
    amp, full = maps["amp"]["grad-cam"].ravel(), maps["contiguous"]["grad-cam"].ravel()
    assert amp @ full / (np.linalg.norm(amp) * np.linalg.norm(full)) > 0.99
    assert np.abs(amp - full).max() > 1e-3 * np.abs(full).max()  # bfloat16 ran: more than float32 rounding
