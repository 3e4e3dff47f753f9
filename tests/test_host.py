"""The host side of a run: large photos drawn at a capped size, and the
`--profile` table."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from saliency_cli.config import OutputConfig
from saliency_cli.plan import DEFAULT_PNG_MAX_SIDE

from .test_cli import saliency, toy_detector_config


def test_the_digest_default_is_the_config_default():
    assert OutputConfig().png_max_side == DEFAULT_PNG_MAX_SIDE


def test_large_photos_are_drawn_at_png_max_side(tmp_path):
    big = np.random.default_rng(0).integers(0, 256, (800, 1200, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=90)
    out = tmp_path / "out"
    args = ("explain", str(tmp_path / "big.jpg"), "-o", str(out), "-m", "grad-cam", "--grid")
    proc = saliency(*args, "--set", "output.png_max_side=300")
    assert proc.returncode == 0, proc.stderr
    with Image.open(out / "big" / "grad-cam.png") as png:
        assert png.size == (300, 200)
    assert np.load(out / "big" / "grad-cam.npy").shape == (224, 224)  # the map never changes
    record = json.loads((out / "manifest.jsonl").read_text())
    assert record["size"] == [1200, 800] and record["png_size"] == [300, 200] and (out / record["grid"]).is_file()
    verified = saliency("verify", str(out))
    assert verified.returncode == 0, verified.stdout + verified.stderr  # PNGs checked at the size drawn
    again = saliency(*args, "--set", "output.png_max_side=600")  # another size: redrawn
    assert again.returncode == 0 and "made with other settings" in again.stderr
    with Image.open(out / "big" / "grad-cam.png") as png:
        assert png.size == (600, 400)


def test_detections_are_outlined_on_the_capped_png(tmp_path):
    Image.new("RGB", (800, 400), (90, 90, 90)).save(tmp_path / "wide.png")
    config = toy_detector_config(tmp_path, num_masks=16)
    out = tmp_path / "out"
    proc = saliency("explain", str(tmp_path / "wide.png"), "-c", str(config), "-o", str(out), "-q",
                    "--set", "output.png_max_side=200", "--no-overlay")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "manifest.jsonl").read_text())
    assert [d["box"] for d in record["detections"]] in ([[0, 0, 400, 400], [400, 0, 800, 400]],
                                                         [[400, 0, 800, 400], [0, 0, 400, 400]])
    with Image.open(out / record["detections"][0]["png"]) as png:
        drawn = np.asarray(png)
    assert drawn.shape == (100, 200, 3)
    outline = (drawn == 255).all(-1) | (drawn == 0).all(-1)  # the box's white-on-black frame
    assert outline[:, 99:102].any(axis=1).mean() > 0.5  # the boxes meet at x = 100 in the PNG


def test_profile_says_where_the_time_went(tmp_path):
    for name in ("a", "b"):
        Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / f"{name}.png")
    proc = saliency("explain", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "out"), "-q",
                    "--profile", "-m", "gradient", "--device", "cpu", "--set", "runtime.workers=0")
    assert proc.returncode == 0 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    where = "on 2 threads of the main process" if (os.cpu_count() or 1) > 1 else "in the main process"
    assert lines[1].startswith("  decode") and lines[1].endswith(where), lines[1]
    assert lines[0].startswith("where the time went")
    phases = [line.split()[0] for line in lines[1:]]
    assert phases == ["decode", "transfer", "attribution", "render", "encode", "write", "idle"]
    seconds = {line.split()[0]: float(line.split()[1]) for line in lines[1:]}
    assert seconds["attribution"] > 0 and all(v >= 0 for v in seconds.values())
