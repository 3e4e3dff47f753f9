"""The seven newer methods through `saliency explain` with the default
EfficientNet-Lite0 config, on cheap settings (their own tests cover the
definitions): files, shapes and the manifest."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .conftest import SAMPLES
from .test_cli import records, saliency

CHEAP = ["methods.integrated-gradients.steps=2", "methods.rise.num_masks=8",
         "methods.occlusion.window=112", "methods.occlusion.stride=112",
         "methods.score-cam.layer=_conv_stem"]  # 32 channels: 33 forwards, not the head's 1281
NEW = ["integrated-gradients", "grad-cam-plus-plus", "layer-cam", "score-cam", "eigen-cam", "rise", "occlusion"]


def test_explain_writes_every_new_method(tmp_path):
    photo = SAMPLES / "chelsea.png"
    args = ["explain", str(photo), "-o", str(tmp_path), "--grid"]
    for name in NEW:
        args += ["-m", name]
    for item in CHEAP:
        args += ["--set", item]
    proc = saliency(*args)
    assert proc.returncode == 0, proc.stderr
    (record,) = records(tmp_path)
    assert record["status"] == "ok" and sorted(record["outputs"]) == sorted(NEW)
    with Image.open(photo) as original:
        size = original.size
    for name in NEW:
        raw = np.load(tmp_path / record["outputs"][name]["npy"])
        assert raw.shape == (224, 224) and raw.dtype == np.float32 and np.isfinite(raw).all(), name
        assert raw.std() > 0, name
        with Image.open(tmp_path / record["outputs"][name]["png"]) as png:
            assert png.size == size, name
    assert (tmp_path / "chelsea" / "grid.png").exists()
    assert np.load(tmp_path / "chelsea" / "integrated-gradients.npy").min() < 0  # reduce: sum, signed
