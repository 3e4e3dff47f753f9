"""Ultralytics detectors behind the detector protocol, offline, on random
weights (calibrated so that their scores spread), against Ultralytics' own
letterbox, NMS and predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import saliency_cli as sal
from saliency_cli.yolo import UltralyticsDetector, letterbox

from .conftest import SAMPLES
from .helpers import assert_same_state, model_state

pytest.importorskip("ultralytics")


@pytest.fixture(scope="module")
def ultralytics_env(tmp_path_factory):
    """Ultralytics writes a settings file on first import: into this test's folder. Its import
    also sets OMP_NUM_THREADS=1, which the CLI tests run after these would inherit: restored."""
    folder = tmp_path_factory.mktemp("ultralytics")
    saved = {k: os.environ.get(k) for k in ("YOLO_CONFIG_DIR", "YOLO_OFFLINE", "YOLO_VERBOSE", "OMP_NUM_THREADS")}
    os.environ.update(YOLO_CONFIG_DIR=str(folder), YOLO_OFFLINE="1", YOLO_VERBOSE="False")
    yield {"YOLO_CONFIG_DIR": str(folder), "YOLO_OFFLINE": "1"}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def random_yolo(seed: int = 0):
    """YOLOv8n with random weights whose scores spread over (0, 1): batch
    norm statistics calibrated on noise, the class biases raised (the
    default init keeps every score near zero)."""
    from ultralytics import YOLO

    torch.manual_seed(seed)
    yolo = YOLO("yolov8n.yaml")
    net = yolo.model
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    generator = torch.Generator().manual_seed(seed)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(4, 3, 320, 320, generator=generator))
        for branch in net.model[-1].cv3:
            branch[-1].bias.fill_(-1.0)
    net.eval()
    net.names = {i: f"thing{i}" for i in range(len(net.names))}
    return yolo


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def as_input(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255


def matched(ours, boxes, scores, labels, iou=0.99, tol=1e-3) -> bool:
    """Every reference detection has one of ours with its class, its score
    and (nearly) its box, and there are as many of each."""
    if len(ours) != len(boxes):
        return False
    overlap = sal.detection.box_iou(boxes.detach().float(), ours.boxes.detach())
    for i in range(len(boxes)):
        same = (overlap[i] > iou) & (ours.labels == labels[i]) & ((ours.scores - scores[i]).abs() < tol)
        if not same.any():
            return False
    return True


@pytest.mark.parametrize(("height", "width"), [(480, 640), (200, 300), (700, 1000), (640, 640)])
def test_letterbox_as_ultralytics(ultralytics_env, height, width):
    from ultralytics.data.augment import LetterBox

    array = photo(height, width)
    theirs = LetterBox(640, auto=True, stride=32)(image=array[..., ::-1].copy())[..., ::-1]  # it works in BGR
    ours, gain, (left, top) = letterbox(as_input(array), 640, 32)
    ours = (ours[0].permute(1, 2, 0) * 255).round().numpy()
    assert ours.shape == theirs.shape and gain == pytest.approx(min(640 / height, 640 / width))
    new_h, new_w = round(height * gain), round(width * gain)
    inside = np.zeros(ours.shape[:2], bool)
    inside[top:top + new_h, left:left + new_w] = True
    assert (ours[~inside] == 114).all() and (theirs[~inside] == 114).all()  # the same grey border
    gap = np.abs(ours[inside] - theirs[inside]).mean()
    assert gap == 0 if gain == 1 else gap < 3.0  # cv2's and torch's bilinear resizing differ a little


def test_nms_as_ultralytics(ultralytics_env):
    from ultralytics.utils import nms, ops

    generator = torch.Generator().manual_seed(1)
    anchors, classes = 2000, 12
    centre = torch.rand(1, 2, anchors, generator=generator) * torch.tensor([[[640.0], [480.0]]])
    size = 20 + torch.rand(1, 2, anchors, generator=generator) * 150
    scores = torch.rand(1, classes, anchors, generator=generator) ** 3
    raw = torch.cat([centre, size, scores], dim=1)
    detector = UltralyticsDetector(random_yolo(), conf=0.4, iou=0.5, max_det=300)
    # a 1280x928 photo letterboxed to 640x480: gain 0.5, 8 rows of grey above (Ultralytics' scale_boxes)
    ours = detector._select(raw[0], 0.5, 0, 8, 1280, 928)
    (theirs,) = nms.non_max_suppression(raw.clone(), 0.4, 0.5, max_det=300)
    theirs[:, :4] = ops.scale_boxes((480, 640), theirs[:, :4], (928, 1280))
    assert len(ours) > 20
    assert matched(ours, theirs[:, :4], theirs[:, 4], theirs[:, 5].long(), iou=0.999, tol=1e-6)
    assert torch.equal(ours.probs.argmax(1), ours.labels) and torch.equal(ours.probs.amax(1), ours.scores)


@pytest.mark.parametrize("height", [640, 500])  # 500: letterboxed with 6 rows of grey above and below
def test_the_adapter_finds_what_predict_finds(ultralytics_env, height):
    yolo = random_yolo()
    array = photo(height, 640, seed=3)
    with torch.no_grad():
        (ours,) = UltralyticsDetector(yolo, conf=0.7, iou=0.5)(as_input(array))
    (result,) = yolo.predict(Image.fromarray(array), conf=0.7, iou=0.5, verbose=False)
    assert len(ours) > 5 and ours.probs.shape == (len(ours), 80)
    boxes = result.boxes
    assert matched(ours, boxes.xyxy, boxes.conf, boxes.cls.long(), iou=0.98, tol=1e-3)


def test_explain_detections_takes_a_yolo_model_and_leaves_it_as_given(ultralytics_env):
    yolo = random_yolo()
    yolo.model.train()  # as a user's model may be: it is evaluated in eval mode, then restored
    before = model_state(yolo.model)
    image = as_input(photo(160, 224, seed=5))[0]
    params = dict(num_masks=24, grid=4, score_threshold=0.8, max_detections=3)
    small = sal.explain_detections(yolo, image, mask_batch=4, **params)[0]
    large = sal.explain_detections(yolo, image, mask_batch=24, **params)[0]
    assert_same_state(before, model_state(yolo.model))
    assert len(small.detections) >= 1 and small.maps.shape == (len(small.detections), 160, 224)
    torch.testing.assert_close(small.maps, large.maps, rtol=1e-4, atol=1e-6)  # the chunk size changes nothing


def yolo_config(tmp_path, yolo, **extra) -> Path:
    checkpoint = tmp_path / "random.pt"
    yolo.save(str(checkpoint))
    config = tmp_path / "yolo.yaml"
    lines = [
        "task: detection",
        f"model: {{ultralytics: '{checkpoint}', trust_checkpoint: true, kwargs: {{conf: 0.5}}}}",
        "methods:",
        "  d-rise: {num_masks: 32, grid: 4, score_threshold: 0.85, max_detections: 3}",
    ] + [f"{k}: {v}" for k, v in extra.items()]
    config.write_text("\n".join(lines) + "\n")
    return config


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "saliency_cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


def test_d_rise_on_a_yolo_checkpoint_end_to_end(ultralytics_env, tmp_path):
    config = yolo_config(tmp_path, random_yolo())
    out = tmp_path / "out"
    proc = cli(ultralytics_env, "explain", str(SAMPLES / "coffee.png"), "-c", str(config), "-o", str(out), "--jsonl")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)  # stdout holds the record alone: Ultralytics' messages stay off it
    detections = record["detections"]
    assert 1 <= len(detections) <= 3 and all(d["label"].startswith("thing") for d in detections)
    maps = np.load(out / record["outputs"]["d-rise"]["npy"])
    assert maps.shape[0] == len(detections) and np.isfinite(maps).all()
    for d in detections:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 < x1 <= 600 and 0 <= y0 < y1 <= 400  # in the photo's pixels
        with Image.open(out / d["png"]) as png:
            assert png.size == (600, 400)


def test_clear_errors(ultralytics_env, tmp_path):
    config = yolo_config(tmp_path, random_yolo())
    untrusted = tmp_path / "untrusted.yaml"
    untrusted.write_text(config.read_text().replace("trust_checkpoint: true", "trust_checkpoint: false"))
    proc = cli(ultralytics_env, "explain", str(SAMPLES / "coffee.png"), "-c", str(untrusted), "-o", str(tmp_path))
    assert proc.returncode == 2 and "pickled Ultralytics checkpoint" in proc.stderr
    proc = cli(ultralytics_env, "explain", str(SAMPLES / "coffee.png"), "-o", str(tmp_path),
               "--set", "model.factory=null", "--set", "model.ultralytics=yolov8n.yaml")
    assert proc.returncode == 2 and "model.ultralytics models are for task: detection" in proc.stderr
    missing = config.read_text().replace(str(tmp_path / "random.pt"), str(tmp_path / "nope.pt"))
    (tmp_path / "missing.yaml").write_text(missing)
    proc = cli(ultralytics_env, "explain", str(SAMPLES / "coffee.png"), "-c", str(tmp_path / "missing.yaml"),
               "-o", str(tmp_path))
    assert proc.returncode == 2 and "no such file" in proc.stderr and "nothing is downloaded" in proc.stderr


def test_bad_inputs_stay_bad_inputs_once_ultralytics_is_imported(ultralytics_env, tmp_path):
    """Importing Ultralytics patches Pillow's Image.open to fetch a HEIF
    plugin for files Pillow cannot identify: decoding must not go through it."""
    import ultralytics  # noqa: F401  (applies the patch)

    from saliency_cli.data import load_image
    from saliency_cli.errors import InputError

    (tmp_path / "note.png").write_text("hello, not an image")
    with pytest.raises(InputError, match="not an image"):
        load_image(str(tmp_path / "note.png"))
