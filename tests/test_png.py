"""PNG encoding: every encoder lossless and readable, the ISA-L one built as
the PNG specification says; which one `fast` picks, where, and the fallbacks
when a wheel is missing; the GIL left to other threads."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from saliency_cli import png
from saliency_cli.writer import Writer

ENCODERS = ["fpng", "isal", "pillow"]


@pytest.mark.parametrize("using", ["fast", "zlib", *ENCODERS])
@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 1, 3), (37, 53, 3), (300, 451, 3)])
def test_encoders_are_lossless(using, shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = png.encode(image, using)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as decoded:
        decoded.load()  # Pillow checks every chunk's CRC and the zlib stream's checksum
        assert decoded.format == "PNG" and decoded.mode == "RGB"
        assert np.array_equal(np.asarray(decoded), image)
    from_pil = png.encode(Image.fromarray(image), using)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(from_pil))), image)


def test_the_isal_png_is_the_up_filtered_rows_deflated():
    """Built by hand from the PNG specification: chunks and CRCs, the filter
    bytes, the rows, independently of Pillow's reader."""
    import struct
    import zlib

    image = np.random.default_rng(3).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    data = png.encode(image, "isal")
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        at += 12 + length
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (4, 5, 8, 2, 0, 0, 0)
    raw = np.frombuffer(zlib.decompress(chunks[1][1]), dtype=np.uint8).reshape(5, 1 + 4 * 3)
    assert list(raw[:, 0]) == [0, 2, 2, 2, 2]  # the first row as it is, then Up
    rows = image.reshape(5, 12).astype(int)
    assert np.array_equal(raw[0, 1:], rows[0])
    assert np.array_equal(raw[1:, 1:], (rows[1:] - rows[:-1]) % 256)


def test_fast_picks_by_where_the_writer_runs_and_falls_back(monkeypatch):
    pytest.importorskip("fpng")
    pytest.importorskip("isal")
    image = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert png.encoder("fast") == "fpng" and png.encoder("zlib") == "pillow"
    assert png.encoder("fast", beside_model=True) == "isal"  # it leaves the model the GIL
    assert png.encoder("zlib", beside_model=True) == "pillow"
    monkeypatch.setattr(png, "_isal", None)  # a platform without ISA-L's wheel: fpng on a GPU too
    assert png.encoder("fast", beside_model=True) == "fpng"
    monkeypatch.undo()
    monkeypatch.setattr(png, "_fpng", None)  # without fpng's: ISA-L on the CPU too
    assert png.encoder("fast") == "isal"
    monkeypatch.setattr(png, "_isal", None)  # neither: Pillow
    assert png.encoder("fast") == "pillow" and png.encoder("fast", beside_model=True) == "pillow"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.encode(image, "fast")))), image)


def test_the_isal_encoder_leaves_other_threads_the_gil():
    """A thread encoding beside the one that runs the model must not stop it:
    while one thread encodes large PNGs without pause, another thread's loop
    of small steps keeps most of its pace. (fpng holds the GIL while it
    encodes: the same loop beside it falls to a small fraction of its pace.)"""
    import threading
    import time

    pytest.importorskip("isal")
    image = np.random.default_rng(4).integers(0, 256, (1000, 1500, 3), dtype=np.uint8)
    stop = threading.Event()

    def pace() -> float:  # small steps, each releasing and taking back the GIL, per second
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.5:
            time.sleep(0)
            count += 1
        return count / (time.perf_counter() - start)

    def encode_until_stopped(using):
        while not stop.is_set():
            png.encode(image, using)

    alone = pace()
    paces = {}
    for using in ("isal", "fpng") if png._fpng is not None else ("isal",):
        stop.clear()
        thread = threading.Thread(target=encode_until_stopped, args=(using,))
        thread.start()
        try:
            paces[using] = pace()
        finally:
            stop.set()
            thread.join()
    assert paces["isal"] > 0.2 * alone, (alone, paces)
    if "fpng" in paces:  # the contrast the choice of encoder rests on
        assert paces["fpng"] < 0.2 * paces["isal"], (alone, paces)


def test_writer_writes_either_encoding(tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    for using in ("fast", "zlib", *ENCODERS):
        writer = Writer(tmp_path / using, png_encoder=using)
        writer.save_png("k/m.png", image)
        writer.close()
        assert np.array_equal(np.asarray(Image.open(tmp_path / using / "k/m.png")), image)
