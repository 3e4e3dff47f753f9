"""PNG encoding: both encoders lossless and readable; the fallback when the
fast encoder is not installed."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from saliency_cli import png
from saliency_cli.writer import Writer


@pytest.mark.parametrize("compression", ["fast", "zlib"])
@pytest.mark.parametrize("shape", [(1, 1, 3), (37, 53, 3), (300, 451, 3)])
def test_encoders_are_lossless(compression, shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = png.encode(image, compression)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as decoded:
        decoded.load()
        assert decoded.format == "PNG" and decoded.mode == "RGB"
        assert np.array_equal(np.asarray(decoded), image)
    from_pil = png.encode(Image.fromarray(image), compression)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(from_pil))), image)


def test_fast_uses_fpng_where_installed_and_falls_back(monkeypatch):
    pytest.importorskip("fpng")
    image = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert png.encoder("fast") == "fpng" and png.encoder("zlib") == "pillow"
    monkeypatch.setattr(png, "_fpng", None)  # a platform without its wheel
    assert png.encoder("fast") == "pillow"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.encode(image, "fast")))), image)


def test_writer_writes_either_encoding(tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    for compression in ("fast", "zlib"):
        writer = Writer(tmp_path / compression, png_compression=compression)
        writer.save_png("k/m.png", image)
        writer.close()
        assert np.array_equal(np.asarray(Image.open(tmp_path / compression / "k/m.png")), image)
