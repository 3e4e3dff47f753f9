"""`saliency evaluate` end to end on a tiny classifier and a toy detector:
the recorded config, the records, curves, summary and report, exactness
against per-step references through the whole command, resume, CI gates
and errors."""

from __future__ import annotations

import json
import math
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from saliency_cli.cli import app
from saliency_cli.config import Config
from saliency_cli.data import load_image, normalize, preprocess

from .conftest import SAMPLES
from .helpers import TinyCNN
from .test_cli import toy_detector_config

LABELS = "[Egyptian cat, espresso, missile, barbell, cup]"
TINY = ["--set", "model.factory=tests.helpers:TinyCNN", "--set", "preprocess.size=32", "--set", f"labels={LABELS}"]
BOXES = str(SAMPLES / "boxes.json")


def cli(*args: str):
    return CliRunner().invoke(app, [*args])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "out"
    result = cli("explain", str(SAMPLES), "-o", str(out), "-q", "-m", "gradient", "-m", "grad-cam", "--target", "0",
                 *TINY)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def evaluated(explained, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluated") / "out"
    shutil.copytree(explained, out)
    result = cli("evaluate", str(out), "--steps", "6", "--boxes", BOXES, "--json", "--report", "-q")
    return out, result


@pytest.fixture
def copy(evaluated, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(evaluated[0], out)
    return out


def test_explain_records_its_config_per_settings_digest(explained):
    records = lines(explained / "manifest.jsonl")
    digests = {d for r in records for d in r["settings"].values()}
    assert len(digests) == 2  # gradient's, grad-cam's
    for digest in digests:
        saved = json.loads((explained / "settings" / f"{digest}.json").read_text())
        assert saved["digest"] == digest and saved["config"]["model"]["factory"] == "tests.helpers:TinyCNN"
        assert saved["cwd"] and "params" in saved


def test_evaluate_writes_records_curves_summary_and_report(evaluated):
    out, result = evaluated
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # --json: the summary and nothing else on stdout
    assert summary == json.loads((out / "evaluation-summary.json").read_text())
    assert list(summary["methods"]) == ["gradient", "grad-cam"]
    assert not (out / ".tmp").exists()  # its temporary files, the summary's and the report's included, gone
    records = lines(out / "evaluation.jsonl")
    assert len(records) == 8 and all(r["status"] == "ok" for r in records)
    for record in records:
        (entry,) = record["maps"]
        assert entry["label"] == "Egyptian cat" and set(entry["metrics"]) >= {"deletion", "insertion",
                                                                             "average-drop", "increase"}
        assert np.load(out / record["curves"]["deletion"]).shape == (1, 7)
        if record["key"] == "chelsea":  # the only photo with a box of the class explained
            assert entry["metrics"]["pointing"] in (0.0, 1.0) and 0 <= entry["metrics"]["energy-pointing"] <= 1
        else:
            assert "pointing" not in entry["metrics"] and "no box of class 'Egyptian cat'" in entry["apart"]["pointing"]
    gradient = summary["methods"]["gradient"]
    assert gradient["images"] == 4 and gradient["metrics"]["pointing"]["n"] == 1
    assert gradient["metrics"]["pointing"]["apart"] == 3
    deletion = [r["maps"][0]["metrics"]["deletion"] for r in records if r["method"] == "gradient"]
    assert gradient["metrics"]["deletion"]["mean"] == pytest.approx(np.mean(deletion))
    page = (out / "evaluation.html").read_text()
    assert page.count("<svg") == 2 and page.count("<polyline") == 4 and "grad-cam" in page


def reference_curves(photo: Path, values: np.ndarray, target: int, steps: int) -> dict[str, np.ndarray]:
    """The definition, step by step, from the photo: the default substrates (zero; RISE's blur)."""
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    cfg = Config().preprocess
    cfg.size = [32, 32]
    x = normalize(preprocess(load_image(str(photo)), cfg)[0][None], cfg)[0]
    torch.manual_seed(0)  # explain's runtime.seed, before building
    model = TinyCNN().eval()
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    kernel = torch.from_numpy(scipy_ndimage.gaussian_filter(delta, 5)).float().expand(3, 1, 11, 11)
    blurred = torch.nn.functional.conv2d(x[None], kernel, padding=5, groups=3)[0]
    order = np.argsort(-values.ravel(), kind="stable")
    found = {"deletion": [], "insertion": []}
    for s in range(steps + 1):
        top = np.zeros(values.size, dtype=bool)
        top[order[:math.floor(Fraction(s * values.size, steps) + Fraction(1, 2))]] = True
        top = torch.from_numpy(top.reshape(values.shape))
        deleted, inserted = x.clone(), blurred.clone()
        deleted[:, top] = 0.0
        inserted[:, top] = x[:, top]
        with torch.no_grad():
            for name, inp in (("deletion", deleted), ("insertion", inserted)):
                found[name].append(float(model(inp[None]).softmax(1)[0, target]))
    return {k: np.array(v) for k, v in found.items()}


def test_the_command_equals_the_per_step_reference(evaluated):
    out, _ = evaluated
    coffee = [r for r in lines(out / "evaluation.jsonl") if r["key"] == "coffee"]
    assert len(coffee) == 2  # gradient's map and grad-cam's
    for record in coffee:
        values = np.load(out / record["map"])
        want = reference_curves(SAMPLES / "coffee.png", values, 0, 6)
        for name in ("deletion", "insertion"):
            np.testing.assert_allclose(np.load(out / record["curves"][name])[0], want[name], atol=1e-6)
            assert abs(record["maps"][0]["metrics"][name] - np.trapezoid(want[name], dx=1 / 6)) < 1e-6
        drop, increase = reference_confidence(SAMPLES / "coffee.png", values, 0)
        assert abs(record["maps"][0]["metrics"]["average-drop"] - drop) < 1e-4  # percent: 1e-6 of the ratio
        assert record["maps"][0]["metrics"]["increase"] == increase


def reference_confidence(photo: Path, values: np.ndarray, target: int) -> tuple[float, float]:
    """Average drop and increase from their definition, one input at a time."""
    cfg = Config().preprocess
    cfg.size = [32, 32]
    uint8 = preprocess(load_image(str(photo)), cfg)[0][None]
    torch.manual_seed(0)
    model = TinyCNN().eval()
    unit = torch.from_numpy((values - values.min()) / (values.max() - values.min()))
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    with torch.no_grad():
        y = float(model(normalize(uint8, cfg)).softmax(1)[0, target])
        o = float(model((uint8.float() / 255 * unit - mean) / std).softmax(1)[0, target])
    return max(0.0, y - o) / y * 100, 100.0 * (o > y)


def test_a_rerun_computes_only_what_is_missing(copy):
    again = cli("evaluate", str(copy), "--steps", "6", "--boxes", BOXES)
    assert again.exit_code == 0 and "8 of 8 (image, method) pair(s) already evaluated" in again.stderr
    assert len(lines(copy / "evaluation.jsonl")) == 8
    assert again.stdout.startswith("| method | images | deletion ↓ |")  # the table, without --json
    more = cli("evaluate", str(copy), "--metric", "sanity", "-m", "gradient", "--sanity-steps", "2", "-q")
    assert more.exit_code == 0, more.output
    latest = {(r["key"], r["method"]): r for r in lines(copy / "evaluation.jsonl")}
    assert len(lines(copy / "evaluation.jsonl")) == 12
    for key in ("chelsea", "coffee", "astronaut", "rocket"):
        entry = latest[(key, "gradient")]["maps"][0]
        assert {"deletion", "insertion", "sanity"} <= set(entry["metrics"])  # kept, and added
        assert entry["sanity"]["random_layers"] == [0, 2, 4]
        assert entry["sanity"]["spearman"][0] == pytest.approx(1.0, abs=1e-6)  # the rerun reproduces the map
    steps = cli("evaluate", str(copy), "--steps", "4", "--metric", "deletion", "-m", "grad-cam", "-q")
    assert steps.exit_code == 0 and np.load(copy / "chelsea" / "grad-cam.deletion.npy").shape == (1, 5)


def test_a_map_pointing_inside_the_box_hits(copy):
    values = np.zeros((32, 32), dtype=np.float32)
    values[16, 10] = 1.0  # chelsea's cat covers x 0..398 of 451
    np.save(copy / "chelsea" / "gradient.npy", values)
    values[:] = 0
    values[16, 31] = 1.0  # photo x ~ 444: 46 pixels right of the box
    np.save(copy / "chelsea" / "grad-cam.npy", values)
    result = cli("evaluate", str(copy), "--steps", "6", "--boxes", BOXES, "--metric", "pointing", "--overwrite",
                 "--json", "-q")
    assert result.exit_code == 0, result.output
    methods = json.loads(result.stdout)["methods"]
    assert methods["gradient"]["metrics"]["pointing"]["mean"] == 1.0
    assert methods["grad-cam"]["metrics"]["pointing"]["mean"] == 0.0
    tolerant = cli("evaluate", str(copy), "--boxes", BOXES, "--metric", "pointing", "--tolerance", "50", "--json")
    assert json.loads(tolerant.stdout)["methods"]["grad-cam"]["metrics"]["pointing"]["mean"] == 1.0


def test_gates_exit_with_1(copy):
    base = ["evaluate", str(copy), "--steps", "6", "--boxes", BOXES, "-q"]
    assert cli(*base, "--fail-under", "insertion=0").exit_code == 0
    failed = cli(*base, "--fail-under", "insertion=1.5")
    assert failed.exit_code == 1 and "gate failed: gradient: insertion" in failed.stderr
    assert cli(*base, "--fail-over", "deletion=-1").exit_code == 1
    unmeasured = cli(*base, "--fail-under", "sanity=0.5")
    assert unmeasured.exit_code == 2 and "not computed in this run" in unmeasured.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--metric", "deleton"], "unknown metric 'deleton' (did you mean 'deletion'?)"),
    (["--metric", "pointing"], "--metric pointing needs ground-truth boxes: --boxes COCO.json"),
    (["--deletion-substrate", "grey"], "--deletion-substrate: unknown choice 'grey'"),
    (["--fail-under", "insertion"], "--fail-under expects METRIC=VALUE"),
    (["--boxes", "/no/such.json"], "--boxes: cannot read '/no/such.json'"),
    (["-m", "cam"], "no maps of method cam to evaluate"),
])
def test_usage_errors_are_one_line_with_exit_code_2(copy, args, message):
    result = cli("evaluate", str(copy), *args)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unreadable_map_is_recorded_and_the_run_goes_on(copy):
    (copy / "rocket" / "gradient.npy").write_bytes(b"not a map")
    result = cli("evaluate", str(copy), "--steps", "6", "--overwrite", "-m", "gradient")
    assert result.exit_code == 1 and "cannot read" in result.stderr
    latest = {r["key"]: r for r in lines(copy / "evaluation.jsonl") if r["method"] == "gradient"}
    assert latest["rocket"]["status"] == "error" and latest["chelsea"]["status"] == "ok"
    assert json.loads((copy / "evaluation-summary.json").read_text())["methods"]["gradient"]["failed"] == 1


def test_maps_whose_config_no_longer_matches_are_an_error(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(TinyCNN().state_dict(), checkpoint)
    out = tmp_path / "out"
    photo = str(SAMPLES / "chelsea.png")
    made = cli("explain", photo, "-o", str(out), "-q", "-m", "gradient", *TINY,
               "--set", f"model.checkpoint={checkpoint}")
    assert made.exit_code == 0, made.output
    torch.save(TinyCNN(classes=5).state_dict(), checkpoint)  # another file now
    result = cli("evaluate", str(out), "--steps", "4")
    assert result.exit_code == 2 and "no longer matches the gradient maps" in result.stderr
    assert "changed or is missing since the maps were made" in result.stderr
    other = cli("evaluate", str(out), "--steps", "4", "--set", "model.factory=tests.helpers:TinyCNN")
    assert other.exit_code == 2 and "the config given (-c/--set): this config no longer matches" in other.stderr
    shutil.rmtree(out / "settings")
    missing = cli("evaluate", str(out), "--steps", "4")
    assert missing.exit_code == 2 and "made before saliency explain recorded its config" in missing.stderr


def test_a_detection_folder(tmp_path):
    """The toy detector finds a cat on the left half and a cup on the right
    half, scored by each half's mean: D-RISE similarity = that score, so the
    curves are the means of the perturbed halves, known exactly."""
    config = toy_detector_config(tmp_path, num_masks=16)
    out = tmp_path / "out"
    photo = SAMPLES / "coffee.png"
    assert cli("explain", str(photo), "-c", str(config), "-o", str(out), "-q").exit_code == 0
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "coffee.png"}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "cup"}, {"id": 3, "name": "dog"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 300, 190]},
                        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [200, 0, 400, 400]}]}))
    result = cli("evaluate", str(out), "--steps", "4", "--boxes", str(boxes), "--json", "--report")
    assert result.exit_code == 0, result.output
    assert "1 category matches no class of the model" in result.stderr and ": dog" in result.stderr
    (record,) = lines(out / "evaluation.jsonl")
    assert [m["label"] for m in record["maps"]] == ["cup", "cat"]
    cup, cat = record["maps"]
    assert cup["metrics"]["pointing"] in (0.0, 1.0) and "IoU >= 0.5" in cat["apart"]["pointing"]  # IoU 0.75, 0.475
    image = torch.from_numpy(np.asarray(load_image(str(photo)), dtype=np.float32) / 255).permute(2, 0, 1)
    maps = np.load(out / record["map"])
    curves = np.load(out / record["curves"]["deletion"])
    for k, half in enumerate([slice(300, 600), slice(0, 300)]):  # cup right, cat left
        order = np.argsort(-maps[k].ravel(), kind="stable")
        want = []
        for s in range(5):
            keep = np.ones(maps[k].size, dtype=bool)
            keep[order[:math.floor(Fraction(s * maps[k].size, 4) + Fraction(1, 2))]] = False
            deleted = image * torch.from_numpy(keep.reshape(maps[k].shape))
            want.append(float(deleted[:, :, half].mean().clamp(0, 1)))
        np.testing.assert_allclose(curves[k], want, atol=1e-6)
    assert json.loads(result.stdout)["methods"]["d-rise"]["maps"] == 2


def test_the_progress_bar_counts_the_inputs_scored(copy, capsys, monkeypatch):
    from saliency_cli.evaluation.metrics import Options
    from saliency_cli.evaluation.run import evaluate
    from saliency_cli.tasks.base import Progress

    counts = []  # the bar's count after each update (tqdm itself redraws at most every 0.1 s)
    update = Progress.__call__
    monkeypatch.setattr(Progress, "__call__", lambda self, n: (update(self, n), counts.append(self.count)))
    result = evaluate(copy, Options(("deletion", "insertion"), steps=3), overwrite=True, progress=True, chunk=8)
    assert result.evaluated == 8 and result.failed == 0
    total = 8 * (2 * 4 + 1)  # per image and method: two curves of 4 inputs, plus one
    assert counts[-1] == total and f"{total}.0/{total}.0" in capsys.readouterr().err
    assert counts[0] == 8 and len(counts) > 2  # chunk by chunk (8 inputs a call), within one batch of photos


def test_maps_of_a_run_that_decoded_jpegs_on_the_device_are_evaluated(evaluated, tmp_path):
    """runtime.decode=device (a GPU's default; here the same path on the CPU):
    evaluate decodes each photo as that run did, the JPEG read for the device."""
    out = tmp_path / "out"
    result = cli("explain", str(SAMPLES / "rocket.jpg"), str(SAMPLES / "chelsea.png"), "-o", str(out), "-q",
                 "-m", "gradient", "--target", "0", *TINY, "--set", "runtime.decode=device")
    assert result.exit_code == 0, result.output
    result = cli("evaluate", str(out), "--steps", "6", "-q")
    assert result.exit_code == 0, result.output
    mine = {r["key"]: r for r in lines(out / "evaluation.jsonl")}
    assert {k: r["status"] for k, r in mine.items()} == {"rocket": "ok", "chelsea": "ok"}
    cpu = {r["key"]: r for r in lines(evaluated[0] / "evaluation.jsonl") if r["method"] == "gradient"}
    for key in mine:  # the PNG decoded as before; the JPEG by libjpeg-turbo either way, resized by torch here
        ours, theirs = mine[key]["maps"][0]["metrics"], cpu[key]["maps"][0]["metrics"]
        for metric in ("deletion", "insertion", "average-drop", "increase"):
            assert ours[metric] == pytest.approx(theirs[metric], abs=1e-6 if key == "chelsea" else 1e-3), (key, metric)


def test_a_class_beyond_the_model_is_one_clear_error(explained, tmp_path):
    """Checked on the host: on a GPU an index out of range would be a device
    assert that ends CUDA for the whole process."""
    out = tmp_path / "out"
    shutil.copytree(explained, out)
    records = lines(out / "manifest.jsonl")
    records[0]["target"]["class"] = 7  # TinyCNN has 5 outputs
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = cli("evaluate", str(out), "--steps", "4", "-m", "gradient")
    assert result.exit_code == 2, result.output
    assert "the maps explain class 7, but the model has 5 outputs" in result.output
