"""Stack the per-photo grids of a run (OUT/<key>/grid.png, from --grid) into
one figure, one photo per row, for the README.

    python scripts/readme_figure.py outputs/demo outputs/demo/demo-grid.jpg
"""

import sys
from pathlib import Path

from PIL import Image

WIDTH = 2400  # pixels: the widest row is scaled to this, the others by the same factor


def main(out_dir: str, figure: str) -> None:
    grids = sorted(Path(out_dir).glob("*/grid.png"))
    if not grids:
        sys.exit(f"no grid.png under {out_dir}: run saliency explain with --grid first")
    images = [Image.open(path).convert("RGB") for path in grids]
    scale = WIDTH / max(img.width for img in images)  # one factor: captions keep one size
    rows = [img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS) for img in images]
    canvas = Image.new("RGB", (WIDTH, sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for row in rows:
        canvas.paste(row, (0, y))
        y += row.height
    Path(figure).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(figure, quality=85)
    print(f"{figure}: {len(rows)} photos, {canvas.width}x{canvas.height}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
