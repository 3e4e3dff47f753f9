"""JPEGs decoded on the model's device (`runtime.decode: device`): run here
on the CPU, the same code path nvjpeg takes on a GPU, minus the decoder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from saliency_cli import device_decode
from saliency_cli.data import load_image

from .conftest import SAMPLES

ORIENTATION = 0x0112


def jpeg(path, array, orientation=None, mode="RGB"):
    image = Image.fromarray(array).convert(mode)
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    image.save(path, "JPEG", quality=92, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_the_cpu_path(tmp_path, orientation):
    array = np.random.default_rng(orientation).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    path = str(jpeg(tmp_path / "o.jpg", array, orientation))
    raw = device_decode.read_jpeg(path)
    (decoded,) = device_decode.decode([raw["jpeg"]], torch.device("cpu"))
    shown = device_decode.orient(decoded, raw["orientation"])
    expected = np.asarray(load_image(path))
    assert raw["size"] == (expected.shape[1], expected.shape[0])
    assert np.array_equal(shown.permute(1, 2, 0).numpy(), expected)  # the same libjpeg-turbo here


def test_only_jpegs_the_device_can_take(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    good = jpeg(tmp_path / "good.jpg", array)
    grey = jpeg(tmp_path / "grey.jpg", array, mode="L")
    cmyk = jpeg(tmp_path / "cmyk.jpg", array, mode="CMYK")
    Image.fromarray(array).save(tmp_path / "png.jpg", "PNG")  # a PNG named .jpg
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert device_decode.read_jpeg(str(good)) is not None and device_decode.read_jpeg(str(grey)) is not None
    for name in ("cmyk.jpg", "png.jpg", "cut.jpg", "missing.jpg"):
        assert device_decode.read_jpeg(str(tmp_path / name)) is None, name
    Image.fromarray(array).save(tmp_path / "p.png")
    assert device_decode.read_jpeg(str(tmp_path / "p.png")) is None and cmyk.exists()


def test_a_jpeg_the_device_cannot_decode_takes_the_cpu_path():
    broken = torch.frombuffer(bytearray(b"\xff\xd8\xff" + b"\x00" * 64 + b"\xff\xd9"), dtype=torch.uint8)
    good = torch.frombuffer(bytearray((SAMPLES / "rocket.jpg").read_bytes()), dtype=torch.uint8)
    images = device_decode.decode([good, broken, good], torch.device("cpu"))
    assert images[1] is None and images[0].shape == images[2].shape == (3, 427, 640)


def run(folder, out, *extra):
    cmd = [sys.executable, "-m", "saliency_cli", "explain", str(folder), "-o", str(out), "-m", "grad-cam",
           "-m", "gradient", "--batch-size", "3", "-q", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    records = {}
    for line in (out / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["key"]] = record
    return proc, records


def test_explain_decoding_on_the_device_matches_the_cpu_path(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    photo = np.asarray(load_image(str(SAMPLES / "chelsea.png")))
    jpeg(folder / "cat.jpg", photo)
    jpeg(folder / "turned.jpg", np.ascontiguousarray(np.rot90(photo)), orientation=6)
    jpeg(folder / "cmyk.jpg", photo, mode="CMYK")
    Image.fromarray(photo).save(folder / "cat.png")
    data = (folder / "cat.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    cpu, on_cpu = run(folder, tmp_path / "cpu")
    dev, on_dev = run(folder, tmp_path / "dev", "--set", "runtime.decode=device", "--set", "output.renderer=torch")
    assert cpu.returncode == dev.returncode == 1, dev.stderr  # two bad files, the same two
    assert {k: (r["status"], r.get("error")) for k, r in on_dev.items()} == \
        {k: (r["status"], r.get("error")) for k, r in on_cpu.items()}
    assert on_dev["turned"]["size"] == on_cpu["turned"]["size"] == [451, 300]
    for key in ("cat.jpg", "turned", "cmyk", "cat.png"):
        assert on_dev[key]["predictions"][0]["class"] == on_cpu[key]["predictions"][0]["class"]
        a = np.load(tmp_path / "cpu" / key / "grad-cam.npy")
        b = np.load(tmp_path / "dev" / key / "grad-cam.npy")
        assert float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999, key
        with Image.open(tmp_path / "dev" / key / "gradient.png") as png:
            assert png.size == (451, 300)


def test_a_photo_the_device_cannot_resize_takes_the_cpu_path(tmp_path, monkeypatch):
    """CUDA's antialiased resize raises for very large factors (a panorama to
    224 px); that photo is decoded and resized on the CPU, the others not."""
    from saliency_cli.config import Config
    from saliency_cli.data import ImageDataset, collate
    from saliency_cli.discovery import InputItem

    photo = np.asarray(load_image(str(SAMPLES / "chelsea.png")))
    items = [InputItem(path=str(jpeg(tmp_path / f"{i}.jpg", photo)), key=str(i)) for i in range(3)]
    cfg = Config().preprocess
    on_device = device_decode.classifier_input
    calls = []

    def refuses_the_second(image, cfg):
        calls.append(image.shape)
        if len(calls) == 2:
            raise RuntimeError("Too much shared memory required")
        return on_device(image, cfg)

    monkeypatch.setattr(device_decode, "classifier_input", refuses_the_second)
    dataset = ImageDataset(items, cfg, keep_original=True, device=torch.device("cpu"))
    read = [dataset[i] for i in range(3)]
    on_cpu_path = []
    monkeypatch.setattr(dataset, "_decode", lambda it: on_cpu_path.append(it["index"]) or type(dataset)._decode(
        dataset, it))
    batch = dataset.finish(collate(read))
    assert len(calls) == 3 and on_cpu_path == [1]
    assert not batch.failed and batch.inputs.shape == (3, 3, 224, 224)
    on_cpu = ImageDataset(items, cfg, keep_original=True)[1]  # Pillow's decoding and resizing
    assert torch.equal(batch.inputs[1], on_cpu["input"]) and torch.equal(batch.ok[1]["original"], on_cpu["original"])
