"""The host side of a run: large photos drawn at a capped size, and the
`--profile` table."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from saliency_cli import png
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


def test_on_the_cpu_the_writers_threads_decode_each_batch_after_writing_the_last(tmp_path, monkeypatch, caplog):
    """Decoding on threads (the model on the CPU, no worker process): one
    pool does the host's work, and each batch's files are queued on it
    before the next batch's decoding, so both run while the model waits."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from saliency_cli.config import load_config
    from saliency_cli.data import ImageDataset
    from saliency_cli.pipeline import run

    from .test_reliability import many_images

    many_images(tmp_path / "in", 6)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    queued, decoded_on = [], set()  # (pool, "decode" | "write", image index) in the order queued
    submit, getitem = ThreadPoolExecutor.submit, ImageDataset.__getitem__

    def queue(pool, fn, *args, **kwargs):
        if isinstance(getattr(fn, "__self__", None), ImageDataset):
            queued.append((pool, "decode", args[0]))
        elif getattr(fn, "__name__", "") == "_run_jobs":
            queued.append((pool, "write", int(args[0].input[-7:-4])))  # .../img003.png
        return submit(pool, fn, *args, **kwargs)

    def decode(self, index):
        decoded_on.add(threading.current_thread().name.rsplit("_", 1)[0])
        return getitem(self, index)

    monkeypatch.setattr(ThreadPoolExecutor, "submit", queue)
    monkeypatch.setattr(ImageDataset, "__getitem__", decode)
    cfg = load_config(None, ["model.factory=tests.helpers:TinyCNN", "runtime.workers=0", "runtime.batch_size=2",
                              "runtime.device=cpu"])  # the CPU path also where a GPU is
    with caplog.at_level("DEBUG", logger="saliency"):
        summary = run(cfg, [str(tmp_path / "in")], tmp_path / "out", methods=["gradient"])
    assert summary.exit_code == 0 and summary.ok == 6 and summary.decode_threads == 2
    assert f"PNGs are encoded by {png.encoder('fast')}" in caplog.text  # fpng where installed: the least CPU
    assert decoded_on == {"saliency-writer"}
    assert len({pool for pool, _, _ in queued}) == 1  # one pool
    order = [(kind, index) for _, kind, index in queued]
    assert order == [("decode", 0), ("decode", 1), ("write", 0), ("write", 1), ("decode", 2), ("decode", 3),
                     ("write", 2), ("write", 3), ("decode", 4), ("decode", 5), ("write", 4), ("write", 5)]
