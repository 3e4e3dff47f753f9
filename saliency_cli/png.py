"""PNG encoding and decoding. Every PNG the tool writes (overlays, bare
heatmaps, detection PNGs, grids) goes through `encode`; photos stored as
PNGs are read through `decode_plain` where it can (end of this module:
ISA-L inflates, libpng unfilters).

Three encoders, all lossless (the pixels are the same; the time, the file
size and Python's GIL differ; BENCHMARKS.md, a 600x400 photo overlay):

- fpng (a fast single-pass encoder): 0.65-0.8 ms, the least CPU, but it
  holds the GIL while it encodes, so a thread encoding beside the thread
  that runs the model stalls it: EfficientNet-Lite0's Grad-CAM on one CPU
  thread took 1.34-1.38x its time alone beside a thread rendering and
  encoding with fpng (1.10-1.13x rendering only), and a loop of small torch
  operations, as a GPU's launching thread runs, fell to 1/200 of its rate.
- isal: PNG's Up filter (numpy), then a zlib stream from ISA-L at level 1,
  which releases the GIL: 1.6-2.1 ms, files 5-10% smaller than fpng's; the
  model beside it took 1.07-1.17x its time.
- pillow: zlib level 1 with the run-length strategy, 17.6 ms, files about
  15% smaller than fpng's: `output.png_compression: zlib`, and the fallback.

`fast` (the default) takes fpng where the model runs on the CPU, the least
CPU time (there the writer's threads mostly run between the model's
batches: loading.ThreadedLoader), and isal where it runs on a GPU, whose
work the main thread launches while the writer's threads render and
encode beside it; each falls back to the other where its wheel is missing,
then to Pillow.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator
from typing import Literal

import numpy as np
from PIL import Image

Compression = Literal["fast", "zlib"]
Encoder = Literal["fpng", "isal", "pillow"]

# zlib level 1 with the run-length strategy: on a 512x512 overlay it took 24 ms
# for 381 KiB, against 32 ms / 424 KiB for level 1's default strategy and
# 135 ms / 383 KiB for PIL's default level 6. Overlays of photos compress little.
ZLIB_LEVEL = 1
ZLIB_STRATEGY = 3  # Z_RLE

try:  # optional speed-ups: wheels for Linux (x86_64, aarch64), Windows and macOS (fpng: Apple silicon)
    import fpng as _fpng
except ImportError:  # pragma: no cover - depends on the platform
    _fpng = None
try:
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - depends on the platform
    _isal = None
try:  # libpng, which inflates with the system's zlib (wheels for Linux, macOS and Windows, x86_64 and arm64)
    import imagecodecs as _imagecodecs
except ImportError:  # pragma: no cover - depends on the platform
    _imagecodecs = None

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def installed() -> list[Encoder]:
    """The encoders this machine has (Pillow's always)."""
    return [name for name, module in (("fpng", _fpng), ("isal", _isal)) if module is not None] + ["pillow"]


def encoder(compression: Compression, beside_model: bool = False) -> Encoder:
    """The encoder `compression` uses on this machine; `beside_model`: the
    writer's threads run while the model does, on a GPU (see above)."""
    if compression == "zlib":
        return "pillow"
    preferred: tuple[Encoder, ...] = ("isal", "fpng") if beside_model else ("fpng", "isal")
    return next((name for name in preferred if name in installed()), "pillow")


def named(using: Encoder | Compression) -> Encoder:
    """`using` if it names an encoder, else the one its compression setting picks here."""
    return encoder(using) if using in ("fast", "zlib") else using


def encode(image: np.ndarray | Image.Image, using: Encoder | Compression = "fast") -> bytes:
    """An RGB image (uint8 [h,w,3] or a PIL image) as PNG bytes, by the
    encoder named `using`, or the one a compression setting picks."""
    name = named(using)
    if name == "pillow":
        if not isinstance(image, Image.Image):
            image = Image.fromarray(image, "RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=ZLIB_LEVEL, compress_type=ZLIB_STRATEGY)
        return buffer.getvalue()
    array = np.ascontiguousarray(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image))
    if name == "fpng":
        return _fpng.from_ndarray(array)
    return _isal_png(array)


def _isal_png(array: np.ndarray) -> bytes:
    """A PNG of uint8 [h,w,3]: every row after the first with the Up filter
    (type 2: each byte minus the byte above, mod 256; the first row unfiltered),
    deflated by ISA-L at level 1. Both release the GIL on rows this long."""
    height, width, _ = array.shape
    rows = array.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 2
    filtered[0, 0] = 0
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, not interlaced
    return b"".join([SIGNATURE, *_chunk(b"IHDR", header), *_chunk(b"IDAT", _isal.compress(filtered, 1)),
                     *_chunk(b"IEND")])


def _chunk(kind: bytes, *body: bytes | memoryview) -> list[bytes | memoryview]:
    """A PNG chunk whose body is the `body` pieces in turn, as the pieces to
    join into the file (the body is not copied until then): length, kind,
    body, CRC."""
    crc = _isal.crc32(kind)  # 15x zlib's speed; both release the GIL on long data
    for piece in body:
        crc = _isal.crc32(piece, crc)
    return [struct.pack(">I4s", sum(map(len, body)), kind), *body, struct.pack(">I", crc)]


# ------------------------------------------------------------------ decoding photos

# Chunks that leave what Pillow decodes as it was: the pixels and the orientation
# (Pillow applies neither gamma nor colour profiles). Text chunks are plain too but
# where Pillow may read an orientation from them (_plain_text).
_PLAIN_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs",
                           b"tIME", b"bKGD"})
_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # as Pillow's Image.getexif searches XMP


def decode_plain(data: bytes, max_pixels: int | None) -> np.ndarray | None:
    """uint8 [h,w,3]: the pixels of a plain PNG photo (8-bit RGB or RGBA,
    not interlaced, no transparency key, no orientation, no animation, at
    most `max_pixels`), the alpha channel dropped, as Pillow decodes and
    converts it to RGB; decoded by libpng (imagecodecs), which releases the
    GIL and unfilters rows 1.3-3x as fast as Pillow's decoder (BENCHMARKS.md),
    its image data inflated first by ISA-L where that pays (`_stored`).
    None for any other PNG, or where libpng finds fault: Pillow decodes those
    (and names the fault)."""
    if _imagecodecs is None or not _plain(data, max_pixels):
        return None
    try:
        pixels = _imagecodecs.png_decode(_stored(data) or data)
    except Exception:  # a damaged file: Pillow's decoder gives the error its message
        return None
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        return None  # pragma: no cover - _plain lets only 8-bit RGB(A) through
    return pixels if pixels.shape[2] == 3 else np.ascontiguousarray(pixels[..., :3])


def _plain(data: bytes, max_pixels: int | None) -> bool:
    """Whether the PNG in `data` is one `decode_plain` takes: its header and
    every chunk, up to IEND, checked (a few dozen chunk headers for a photo)."""
    if not data.startswith(SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        return False
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if depth != 8 or colour not in (2, 6) or interlace or (max_pixels and width * height > max_pixels):
        return False
    for kind, start, length in _chunks(data):
        if kind == b"IEND":
            return True
        if kind in _TEXT_CHUNKS:
            if not _plain_text(kind, data[start + 8:start + 8 + length]):
                return False
        elif kind not in _PLAIN_CHUNKS:
            return False
    return False  # no IEND: truncated


def _chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(kind, where the chunk starts, length of its body) of each chunk of
    a PNG, up to IEND or the end of `data`."""
    position = 8
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        yield kind, position, length
        if kind == b"IEND":
            return
        position += 12 + length


_STORED_BLOCK = 65535  # the most a stored deflate block holds


def _stored(data: bytes) -> bytes | None:
    """A plain PNG (`_plain`) with its image data inflated by ISA-L and put
    back uncompressed (stored deflate blocks, one IDAT chunk), the other
    chunks as they were: libpng, which inflates with the system's zlib, then
    only copies the rows and unfilters them. ISA-L inflates the sample
    photos in 0.45-0.46 of zlib 1.2's time, and they decode in 0.59-0.62 of
    libpng's time alone (BENCHMARKS.md); it releases the GIL as libpng does.
    The inflated rows and their stored copy are held while libpng reads
    them: twice the photo's decoded size, for the moment.

    None where that does not pay, the image data being stored already, or
    where anything is amiss: an IDAT chunk's CRC, chunks between the IDAT
    chunks, a zlib stream that is damaged or does not inflate to exactly
    the image's rows (inflating stops there: a stream that would inflate
    beyond them costs no memory). libpng then reads the file as it is, and
    finds the fault where there is one."""
    if _isal is None:
        return None
    width, height, _, colour = struct.unpack_from(">IIBB", data, 16)
    size = height * (1 + width * (3 if colour == 2 else 4))  # each row: a filter byte, then 8-bit RGB(A)
    idats = [(start, length) for kind, start, length in _chunks(data) if kind == b"IDAT"]
    if not idats or sum(length for _, length in idats) >= size:  # stored already (or no image data)
        return None
    before, after = idats[0][0], idats[-1][0] + 12 + idats[-1][1]
    if after - before != sum(12 + length for _, length in idats):  # another chunk between them
        return None
    view = memoryview(data)
    compressed = [view[start + 8:start + 8 + length] for start, length in idats]
    for (start, length), body in zip(idats, compressed):
        if _isal.crc32(body, _isal.crc32(b"IDAT")) != struct.unpack_from(">I", data, start + 8 + length)[0]:
            return None
    inflater = _isal.decompressobj()
    try:
        rows = inflater.decompress(compressed[0] if len(compressed) == 1 else b"".join(compressed), size)
    except _isal.error:
        return None
    if len(rows) != size or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        return None
    rows = memoryview(rows)
    body = [b"\x78\x01"]  # zlib's header: deflate, 32K window
    for start in range(0, size, _STORED_BLOCK):
        block = rows[start:start + _STORED_BLOCK]
        body += [struct.pack("<BHH", start + _STORED_BLOCK >= size, len(block), 0xFFFF ^ len(block)), block]
    body.append(struct.pack(">I", _isal.adler32(rows)))
    return b"".join([view[:before], *_chunk(b"IDAT", *body), view[after:]])


def _plain_text(kind: bytes, body: bytes) -> bool:
    """Whether a text chunk leaves the orientation alone. Pillow reads one
    from EXIF stored as text ("Raw profile type exif") and from XMP
    ("XML:com.adobe.xmp", which photo editors add to most PNGs they save)
    where it holds a tiff:Orientation other than 1 (upright): uncompressed
    XMP is searched as Pillow searches it."""
    keyword, _, text = body.partition(b"\0")
    if keyword == b"Raw profile type exif":
        return False
    if keyword != b"XML:com.adobe.xmp":
        return True
    if kind == b"zTXt" or (kind == b"iTXt" and text[:1] != b"\0"):  # compressed
        return False
    found = _XMP_ORIENTATION.search(text)
    return found is None or found[2] not in b"2345678"
