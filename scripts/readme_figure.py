"""Stack the per-photo grids of a run (OUT/<key>/grid.png, from --grid) into
one figure for the README: one photo per band, each grid folded into
`LINES` lines of panels so that sixteen panels stay readable.

    python scripts/readme_figure.py outputs/demo outputs/demo/demo-grid.jpg
"""

import math
import sys
from pathlib import Path

from PIL import Image

from saliency_cli.records import read_manifest

WIDTH = 2400  # pixels: the widest line is scaled to this, the others by the same factor
LINES = 2  # lines of panels per photo
GAP = 6  # compose_grid's gap between panels (saliency_cli/render.py)


def panels_per_grid(out_dir: Path) -> dict[str, int]:
    """key -> panels in its grid: the photo and one per method written."""
    return {key: 1 + len(record.outputs) for key, record in read_manifest(out_dir).items() if record.ok}


def fold(grid: Image.Image, panels: int) -> list[Image.Image]:
    """The grid cut at panel boundaries into LINES pieces (panels of one grid
    share one width: the photo's, scaled to the grid's height)."""
    width = (grid.width - GAP * (panels + 1)) // panels
    per_line = math.ceil(panels / LINES)
    pieces = []
    for start in range(0, panels, per_line):
        stop = min(panels, start + per_line)
        left = start * (width + GAP)
        pieces.append(grid.crop((left, 0, left + GAP + (stop - start) * (width + GAP), grid.height)))
    return pieces


def main(out_dir: str, figure: str) -> None:
    counts = panels_per_grid(Path(out_dir))
    grids = sorted(Path(out_dir).glob("*/grid.png"))
    if not grids:
        sys.exit(f"no grid.png under {out_dir}: run saliency explain with --grid first")
    lines = [piece for path in grids
             for piece in fold(Image.open(path).convert("RGB"), counts[path.parent.name])]
    scale = WIDTH / max(line.width for line in lines)  # one factor: captions keep one size
    rows = [line.resize((round(line.width * scale), round(line.height * scale)), Image.LANCZOS) for line in lines]
    canvas = Image.new("RGB", (WIDTH, sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for row in rows:
        canvas.paste(row, (0, y))
        y += row.height
    Path(figure).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(figure, quality=85)
    print(f"{figure}: {len(grids)} photos, {canvas.width}x{canvas.height}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
