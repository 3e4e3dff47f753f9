"""Decoding PNG photos: libpng (imagecodecs) against Pillow's decoder.

`saliency explain` decodes a plain PNG photo (8-bit RGB or RGBA, nothing
that turns it) with libpng through imagecodecs, its image data inflated
first by ISA-L where it is compressed (png._stored), and every other file
with Pillow (png.decode_plain, data.load_image). This times the three ways
(ours, libpng on the file as it is, Pillow) on the sample PNGs and on one
of them enlarged to 12 megapixels (saved by Pillow at its default level),
one thread, median of the repeats, and checks that they give the same
pixels:

    python benchmarks/png_decode.py
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image

from saliency_cli import png

from common import median_ms, sample_photos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=21)
    args = ap.parse_args()
    if png._imagecodecs is None:
        raise SystemExit("imagecodecs is not installed: every PNG decodes with Pillow")
    photos = {path.name: path.read_bytes() for path in sample_photos() if path.suffix == ".png"}
    large = io.BytesIO()
    Image.open(io.BytesIO(photos["coffee.png"])).convert("RGB").resize((4000, 3000), Image.BICUBIC).save(large, "PNG")
    photos["coffee.png at 4000x3000"] = large.getvalue()
    print("| PNG | size | ours, ms (as load_image: to a PIL image) | libpng on the file as it is, ms | "
          "Pillow, ms | libpng as it is / ours | Pillow / ours |")
    print("|---|---|---|---|---|---|---|")
    stored = png._stored
    for name, content in photos.items():
        assert png._plain(content, Image.MAX_IMAGE_PIXELS), name

        def ours() -> Image.Image:  # what load_image does with a plain PNG's bytes
            return Image.fromarray(png.decode_plain(content, Image.MAX_IMAGE_PIXELS), "RGB")

        def as_it_is() -> Image.Image:  # libpng inflating with the system's zlib
            png._stored = lambda data: None
            try:
                return ours()
            finally:
                png._stored = stored

        def pillow() -> Image.Image:
            with Image.open(io.BytesIO(content)) as img:
                return img.convert("RGB")

        reference = np.asarray(pillow())
        for way in (ours, as_it_is):
            assert np.array_equal(np.asarray(way()), reference), f"{name}: {way.__name__} and Pillow disagree"
        a, b, c = (median_ms(way, args.repeats) for way in (ours, as_it_is, pillow))
        note = "" if stored(content) else " (stored already: libpng reads it as it is)"
        print(f"| {name}{note} | {'x'.join(map(str, pillow().size))} | {a:.2f} | {b:.2f} | {c:.2f} | {b / a:.2f} | "
              f"{c / a:.2f} |")


if __name__ == "__main__":
    main()
