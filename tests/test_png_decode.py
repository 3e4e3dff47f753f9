"""Decoding PNG photos: plain ones (8-bit RGB or RGBA, nothing that turns
them) by libpng through imagecodecs, every other PNG by Pillow, and either
way exactly what Pillow alone gives: the same pixels and size, or the same
error."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from saliency_cli import data, png
from saliency_cli.errors import InputError

from .conftest import SAMPLES

pytest.importorskip("imagecodecs")

RNG = np.random.default_rng(7)
PHOTO = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)
XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="{}"/>'
       '</rdf:RDF></x:xmpmeta>')


def saved(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def before_iend(png_bytes: bytes, extra: bytes) -> bytes:
    """`extra` chunks inserted after the image data, where Pillow reads them only once it has decoded."""
    assert png_bytes.endswith(chunk(b"IEND", b""))
    return png_bytes[:-12] + extra + png_bytes[-12:]


def built(pixels: np.ndarray, colour: int) -> bytes:
    """A PNG written by hand (no filter, one IDAT): for the depths Pillow does not write."""
    height, width = pixels.shape[:2]
    depth = 8 * pixels.dtype.itemsize
    rows = pixels.astype(pixels.dtype.newbyteorder(">")).reshape(height, -1).view(np.uint8)
    body = zlib.compress(np.hstack([np.zeros((height, 1), np.uint8), rows]).tobytes())
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return png.SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def itxt(keyword: str, text: str) -> bytes:
    return chunk(b"iTXt", keyword.encode() + b"\0\0\0\0\0" + text.encode())


def with_info(texts: dict[str, str], compressed: bool = False) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_itxt(key, value, zip=compressed)
    return info


def rgba() -> Image.Image:
    alpha = RNG.integers(0, 256, PHOTO.shape[:2], dtype=np.uint8)
    return Image.fromarray(np.dstack([PHOTO, alpha]), "RGBA")


def exif(orientation: int) -> Image.Exif:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags


rgb = Image.fromarray(PHOTO, "RGB")
XMP_KEY = "XML:com.adobe.xmp"
FILES = {  # name: (PNG bytes, whether libpng decodes it)
    "rgb": (saved(rgb), True),
    "rgb, level 9": (saved(rgb, compress_level=9), True),
    "rgba": (saved(rgba()), True),
    "rgb, a comment and an upright XMP": (saved(rgb, pnginfo=with_info({"Comment": "hi", XMP_KEY: XMP.format(1)})),
                                          True),
    "rgb, gamma and a colour profile": (saved(rgb, icc_profile=b"not really a profile", dpi=(72, 72)), True),
    "rgb, transparent colour": (saved(rgb, transparency=tuple(int(v) for v in PHOTO[0, 0])), False),
    "rgb, by hand": (built(PHOTO, 2), True),
    "rgb, 16-bit": (built(PHOTO.astype(np.uint16) * 257 + 3, 2), False),
    "grey, 16-bit": (saved(rgb.convert("I;16")), False),
    "grey": (saved(rgb.convert("L")), False),
    "palette": (saved(rgb.quantize(16)), False),
    "rgb, EXIF turned": (saved(rgb, exif=exif(6)), False),
    "rgb, XMP turned": (saved(rgb, pnginfo=with_info({XMP_KEY: XMP.format(6)})), False),
    "rgb, XMP turned after the image data": (before_iend(saved(rgb), itxt("XML:com.adobe.xmp", XMP.format(8))), False),
    "rgb, upright XMP after the image data": (before_iend(saved(rgb), itxt("XML:com.adobe.xmp", XMP.format(1))), True),
    "rgb, EXIF as text": (before_iend(saved(rgb), chunk(b"tEXt", b"Raw profile type exif\0\nexif\n 0\n\n")), False),
    "rgb, an unknown chunk": (before_iend(saved(rgb), chunk(b"prVt", b"private")), False),
    "animated": (saved(rgb, save_all=True, append_images=[Image.fromarray(255 - PHOTO, "RGB")]), False),
    "rgb, XMP compressed": (saved(rgb, pnginfo=with_info({XMP_KEY: XMP.format(1)}, compressed=True)), False),
    "rgb, compressed comment": (saved(rgb, pnginfo=with_info({"Comment": "hi"}, compressed=True)), True),
}


def pillow_only(path, monkeypatch) -> Image.Image | str:
    """What load_image gave before libpng took plain PNGs: the image, or its error message."""
    with monkeypatch.context() as patch:
        patch.setattr(png, "_imagecodecs", None)
        try:
            return data.load_image(str(path))
        except InputError as exc:
            return f"InputError: {exc}"


def loaded(path) -> Image.Image | str:
    try:
        return data.load_image(str(path))
    except InputError as exc:
        return f"InputError: {exc}"


def assert_same(ours, reference) -> None:
    if isinstance(reference, str):
        assert ours == reference
    else:
        assert isinstance(ours, Image.Image) and ours.mode == reference.mode == "RGB"
        assert ours.size == reference.size
        assert np.array_equal(np.asarray(ours), np.asarray(reference))


@pytest.mark.parametrize("name", list(FILES))
def test_every_png_decodes_as_pillow_decodes_it(name, tmp_path, monkeypatch):
    content, plain = FILES[name]
    path = tmp_path / "photo.png"
    path.write_bytes(content)
    calls = []
    real = png._imagecodecs.png_decode
    monkeypatch.setattr(png._imagecodecs, "png_decode", lambda b: calls.append(1) or real(b))
    assert_same(loaded(path), pillow_only(path, monkeypatch))
    assert bool(calls) == plain, "libpng should decode" if plain else "Pillow should decode"


def test_turned_photos_come_out_turned(tmp_path):
    for name in ("rgb, EXIF turned", "rgb, XMP turned", "rgb, XMP turned after the image data"):
        path = tmp_path / "photo.png"
        path.write_bytes(FILES[name][0])
        assert data.load_image(str(path)).size == (37, 53), name  # 53 x 37 stored, shown on its side


@pytest.mark.parametrize("damage", ["truncated", "bad crc in the image data", "no IEND", "garbage after the header"])
def test_damaged_pngs_get_the_same_error_or_pixels(damage, tmp_path, monkeypatch):
    content = bytearray(FILES["rgb"][0])
    if damage == "truncated":
        content = content[:len(content) // 2]
    elif damage == "bad crc in the image data":
        idat = content.index(b"IDAT")
        content[idat + 10] ^= 0xFF  # a byte of the compressed data: the chunk's CRC no longer matches
    elif damage == "no IEND":
        content = content[:-12]
    else:
        content = content[:33] + bytes(RNG.integers(0, 256, 200, dtype=np.uint8))
    path = tmp_path / "photo.png"
    path.write_bytes(bytes(content))
    reference = pillow_only(path, monkeypatch)
    assert_same(loaded(path), reference)
    if damage == "truncated":
        assert isinstance(reference, str) and reference.startswith("InputError: cannot decode image")


def test_decompression_bombs_are_still_refused(tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    path.write_bytes(FILES["rgb"][0])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 53 x 37 is more than twice that
    assert png.decode_plain(path.read_bytes(), Image.MAX_IMAGE_PIXELS) is None
    with pytest.raises(InputError, match="decompression bomb"):
        data.load_image(str(path))


def test_without_imagecodecs_pillow_decodes_everything(tmp_path, monkeypatch):
    monkeypatch.setattr(png, "_imagecodecs", None)
    assert png.decode_plain(FILES["rgb"][0], None) is None
    path = tmp_path / "photo.png"
    path.write_bytes(FILES["rgb"][0])
    assert np.array_equal(np.asarray(data.load_image(str(path))), PHOTO)


def test_the_header_decides_what_libpng_takes():
    content = FILES["rgb"][0]
    assert png._plain(content, None)
    header = bytearray(content[16:29])
    header[12] = 1  # interlaced (Adam7)
    interlaced = content[:8] + chunk(b"IHDR", bytes(header)) + content[33:]
    assert not png._plain(interlaced, None)
    assert not png._plain(content, 53 * 37 - 1) and png._plain(content, 53 * 37)
    assert not png._plain(b"GIF89a" + content[6:], None)


def test_the_sample_photos_decode_as_pillow_decodes_them(monkeypatch):
    photos = sorted(SAMPLES.glob("*.png"))
    assert [p.name for p in photos] == ["astronaut.png", "chelsea.png", "coffee.png"]
    for path in photos:
        assert png._plain(path.read_bytes(), Image.MAX_IMAGE_PIXELS), path.name  # all three take libpng's way
        assert_same(loaded(path), pillow_only(path, monkeypatch))


def test_libpng_leaves_other_threads_the_gil():
    """Photos decode on the writer's threads beside the thread that renders,
    or drives a GPU: while one thread decodes a large PNG without pause, a
    loop of small steps on another keeps most of its pace."""
    import threading
    import time

    content = saved(Image.fromarray(np.tile(PHOTO, (40, 40, 1)), "RGB"))  # 2120 x 1480
    assert png._plain(content, None)
    stop = threading.Event()

    def pace() -> float:
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.5:
            time.sleep(0)
            count += 1
        return count / (time.perf_counter() - start)

    def decode_until_stopped():
        while not stop.is_set():
            png.decode_plain(content, None)

    alone = pace()
    thread = threading.Thread(target=decode_until_stopped)
    thread.start()
    try:
        beside = pace()
    finally:
        stop.set()
        thread.join()
    assert beside > 0.2 * alone, (alone, beside)


# ------------------------------------------------------------------ ISA-L's inflating (png._stored)

SMOOTH = np.dstack([np.add.outer(np.arange(90), np.arange(120)) // k for k in (1, 2, 3)]).astype(np.uint8)


def idat_bodies(content: bytes) -> list[bytes]:
    return [content[start + 8:start + 8 + length] for kind, start, length in png._chunks(content) if kind == b"IDAT"]


def zlib_in_idats(pixels: np.ndarray, stream: bytes, parts: int = 1) -> bytes:
    """A PNG of `pixels`' size whose image data is `stream`, cut into `parts` IDAT chunks."""
    height, width = pixels.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    cuts = np.linspace(0, len(stream), parts + 1).astype(int)
    idats = b"".join(chunk(b"IDAT", stream[a:b]) for a, b in zip(cuts[:-1], cuts[1:]))
    return png.SIGNATURE + chunk(b"IHDR", header) + idats + chunk(b"IEND", b"")


def unfiltered_rows(pixels: np.ndarray) -> bytes:
    return np.hstack([np.zeros((pixels.shape[0], 1), np.uint8), pixels.reshape(pixels.shape[0], -1)]).tobytes()


@pytest.mark.parametrize("image", [Image.fromarray(SMOOTH, "RGB"), Image.fromarray(np.dstack([SMOOTH, SMOOTH[..., :1]]),
                                                                                  "RGBA")])
def test_compressed_image_data_is_inflated_by_isal_and_stored_for_libpng(image, monkeypatch):
    content = saved(image, compress_level=9)
    stored = png._stored(content)
    assert stored is not None and png._plain(stored, None)
    (body,) = idat_bodies(stored)
    channels = len(image.getbands())
    rows = image.height * (1 + image.width * channels)
    assert body[:2] == b"\x78\x01" and body[2] & 0b110 == 0  # zlib, then a stored deflate block
    assert zlib.decompress(body) == zlib.decompress(b"".join(idat_bodies(content)))
    assert len(body) == 2 + rows + 5 * -(-rows // 65535) + 4
    with Image.open(io.BytesIO(stored)) as reopened:  # a valid PNG: every CRC and the adler32 check out
        assert np.array_equal(np.asarray(reopened), np.asarray(image))
    given = []
    real = png._imagecodecs.png_decode
    monkeypatch.setattr(png._imagecodecs, "png_decode", lambda b: given.append(b) or real(b))
    assert np.array_equal(png.decode_plain(content, None), SMOOTH)
    assert given == [stored]


def test_image_data_in_several_idat_chunks_is_inflated_whole():
    content = zlib_in_idats(SMOOTH, zlib.compress(unfiltered_rows(SMOOTH)), parts=5)
    assert len(idat_bodies(content)) == 5 and png._stored(content) is not None
    assert np.array_equal(png.decode_plain(content, None), SMOOTH)


@pytest.mark.parametrize("case", ["stored already", "bad crc", "stream too short", "stream too long",
                                  "chunk between the idats", "no isal"])
def test_libpng_reads_the_file_as_it_is_where_inflating_first_would_not_do(case, tmp_path, monkeypatch):
    rows = unfiltered_rows(SMOOTH)
    content = {
        "stored already": saved(Image.fromarray(SMOOTH, "RGB"), compress_level=0),
        "stream too short": zlib_in_idats(SMOOTH, zlib.compress(rows[:-40])),
        "stream too long": zlib_in_idats(SMOOTH, zlib.compress(rows + bytes(3 * len(rows)))),
    }.get(case, zlib_in_idats(SMOOTH, zlib.compress(rows), parts=2))
    if case == "bad crc":
        content = content[:-13] + bytes([content[-13] ^ 1]) + content[-12:]  # the last IDAT's CRC
    elif case == "chunk between the idats":
        first = next(start + 12 + length for kind, start, length in png._chunks(content) if kind == b"IDAT")
        content = content[:first] + chunk(b"tEXt", b"Comment\0between") + content[first:]
    elif case == "no isal":
        monkeypatch.setattr(png, "_isal", None)
    assert png._stored(content) is None
    path = tmp_path / "photo.png"
    path.write_bytes(content)
    assert_same(loaded(path), pillow_only(path, monkeypatch))


def test_a_stream_that_would_inflate_far_beyond_the_image_costs_no_memory():
    import tracemalloc

    rows = unfiltered_rows(SMOOTH)
    content = zlib_in_idats(SMOOTH, zlib.compress(rows + bytes(300 * len(rows))))  # 10 MB of zeros after the rows
    assert len(idat_bodies(content)[0]) < len(rows)  # compressed: _stored inflates it
    tracemalloc.start()
    try:
        assert png._stored(content) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30 * len(rows), peak  # a tenth of the stream, inflated whole
