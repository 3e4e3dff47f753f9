"""The same contracts on a CUDA device (marked `cuda`: run where one exists)."""

from __future__ import annotations

import pytest
import torch

import saliency_cli as sal
from saliency_cli.methods import registry

from .conftest import SAMPLES
from .helpers import TinyCNN, seeded
from .test_cli import records, saliency

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("name", registry.names("classification"))
def test_methods_match_the_cpu(name):
    model = seeded(TinyCNN(), 0).eval()
    x = torch.randn(3, 3, 16, 16)
    extra = {"smoothgrad": {"n": 4, "noise_level": 0.0}, "integrated-gradients": {"steps": 3},
             "rise": {"num_masks": 8, "p": 1.0},  # every cell kept: the same masks whatever the device's RNG
             "occlusion": {"window": 4, "stride": 4}}.get(name, {})
    on_cpu = sal.attribute(model, x, name, **extra)
    on_gpu = sal.attribute(model.cuda(), x.cuda(), name, **extra)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-3, atol=1e-5)


def test_smoothgrad_sizes_its_chunks_from_free_memory(caplog):
    from saliency_cli.memory import chosen

    model = seeded(TinyCNN(), 0).eval().cuda()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    chosen.pop("noisy copies", None)
    with caplog.at_level("DEBUG", logger="saliency"):
        auto = sal.attribute(model, x, "smoothgrad", n=40)
    assert chosen["noisy copies"] > 4  # a tiny model: far more than the first call's probe of one batch
    assert f"{chosen['noisy copies']} noisy copies per call" in caplog.text and "MiB free" in caplog.text
    fixed = sal.attribute(model, x, "smoothgrad", n=40, noise_batch=7)
    torch.testing.assert_close(auto, fixed, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name, params, chunk", [
    ("integrated-gradients", {"steps": 20, "baseline": "noise"}, "step_batch"),
    ("rise", {"num_masks": 40}, "mask_batch"),
    ("occlusion", {"window": 8, "stride": 4}, "window_batch"),
    ("score-cam", {}, "channel_batch"),
])
def test_chunks_sized_from_free_memory_give_the_same_maps(name, params, chunk):
    model = seeded(TinyCNN(), 0).eval().cuda()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    auto = sal.attribute(model, x, name, **params)
    fixed = sal.attribute(model, x, name, **params, **{chunk: 7})
    torch.testing.assert_close(auto, fixed, rtol=1e-4, atol=1e-6)


def test_d_rise_masks_on_the_device():
    from .test_d_rise import RegionDetector

    image = torch.ones(3, 64, 80, device="cuda")
    (explained,) = sal.explain_detections(RegionDetector(), image, num_masks=64, score_threshold=0.1)
    assert explained.maps.device.type == "cuda"


def test_explain_on_cuda(tmp_path):
    proc = saliency("explain", str(SAMPLES / "chelsea.png"), "-o", str(tmp_path), "--device", "cuda",
                    "-m", "gradient", "-m", "grad-cam", "-m", "smoothgrad", "--set", "methods.smoothgrad.n=8",
                    "--debug")
    assert proc.returncode == 0, proc.stderr
    assert "on cuda" in proc.stderr
    assert "PNGs are encoded by isal" in proc.stderr  # the writer's threads leave the launching thread the GIL
    assert records(tmp_path)[0]["predictions"][0]["label"] == "Egyptian cat"


def test_batches_are_pinned_for_non_blocking_copies():
    from saliency_cli.data import Batch, collate

    item = {"index": 0, "error": None, "input": torch.zeros(3, 8, 8, dtype=torch.uint8)}
    assert collate([item, {**item, "index": 1}]).pin_memory().inputs.is_pinned()
    odd = Batch([item], [], [torch.zeros(3, 8, 8), torch.zeros(3, 4, 4)]).pin_memory()  # sizes differ
    assert all(t.is_pinned() for t in odd.inputs)


def test_overlays_drawn_on_the_gpu_match_numpy():
    import numpy as np

    from saliency_cli.render import render_heatmap
    from saliency_cli.render_torch import render_overlays

    from .test_render_torch import CASES, random_case

    rng = np.random.default_rng(0)
    total = beyond = 0
    for style, percentile, weighted in CASES * 4:
        values, size, box, photo = random_case(rng, style)
        ours = render_heatmap(values, style=style, colormap="jet", size=size, box=box, original=photo,
                              percentile=percentile, weighted=weighted)
        theirs = render_overlays([torch.from_numpy(values).cuda()], [style], [percentile], [weighted], colormap="jet",
                                 size=size, box=box, photo=torch.from_numpy(photo).cuda())
        assert theirs.device.type == "cuda"
        gap = np.abs(ours.astype(int) - theirs[0].cpu().numpy()).max(-1)
        total, beyond = total + gap.size, beyond + (gap > 1).sum()
    assert beyond / total < 1e-3


def test_jpegs_decoded_with_nvjpeg_match_the_cpu_path(tmp_path):
    """The whole device path on a GPU: nvjpeg, resizing, rendering; bad
    files get the same records as on the CPU path."""
    import numpy as np
    from PIL import Image

    from saliency_cli.data import load_image

    from .test_device_decode import run

    folder = tmp_path / "in"
    folder.mkdir()
    photo = np.asarray(load_image(str(SAMPLES / "chelsea.png")))
    Image.fromarray(photo).save(folder / "cat.jpg", quality=92)
    (folder / "cut.jpg").write_bytes((folder / "cat.jpg").read_bytes()[:5000])
    Image.fromarray(photo).save(folder / "cat.png")
    cpu, on_cpu = run(folder, tmp_path / "cpu", "--device", "cpu", "--grid")
    gpu, on_gpu = run(folder, tmp_path / "gpu", "--device", "cuda", "--profile", "--grid")
    # the numpy renderer draws the photo that the device decoded in the writer's threads
    numpy, on_numpy = run(folder, tmp_path / "numpy", "--device", "cuda", "--grid", "--set", "output.renderer=numpy")
    assert cpu.returncode == gpu.returncode == numpy.returncode == 1, gpu.stderr + numpy.stderr
    statuses = {k: r["status"] for k, r in on_cpu.items()}
    assert {k: r["status"] for k, r in on_gpu.items()} == {k: r["status"] for k, r in on_numpy.items()} == statuses
    for key in ("cat.jpg", "cat.png"):
        a, b = (np.load(tmp_path / d / key / "grad-cam.npy") for d in ("cpu", "gpu"))
        assert float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99, key
        with Image.open(tmp_path / "cpu" / key / "grid.png") as grid:
            size = grid.size
        for d in ("gpu", "numpy"):
            with Image.open(tmp_path / d / key / "grid.png") as grid, \
                 Image.open(tmp_path / d / key / "gradient.png") as png:
                assert png.size == (451, 300) and grid.size == size, (d, key)
