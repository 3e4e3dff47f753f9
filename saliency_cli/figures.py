"""The PNG jobs of a run: each map drawn over its photo, and an image's grid.

Jobs run on the writer's threads. A decoded item (see data.ImageDataset)
carries what drawing needs: `original` (the photo, uint8 [h,w,3], or None),
`size` (its width, height) and `box` (the part of the photo the model saw).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .methods.registry import Method
from .outputs import grid_path
from .records import Record
from .render import compose_grid, draw_detection, render_heatmap
from .writer import Writer

Caption = Callable[[Record, "str | None"], str]  # (record, PNG or None for the photo) -> subtitle


class Figures:
    def __init__(self, output: Any, writer: Writer):
        self.output = output  # the config's output section
        self.writer = writer

    def heatmap(self, method: Method, params: Any, rel: str, values: np.ndarray, item: dict,
                panels: dict[str, Image.Image], detection: tuple[list[float], str] | None = None) -> None:
        """Render one map as OUT/<rel> (over the photo unless --no-overlay),
        outlining `detection` (box in photo pixels, label) if given; the
        image is kept in `panels` for the grid."""
        if values.ndim == 3:  # reduce: none keeps channels; show the max-abs view
            values = np.abs(values).max(axis=0)
        out = self.output
        style, percentile = method.display(params)
        original = item["original"].numpy() if item["original"] is not None and out.overlay else None
        image = render_heatmap(values, style=style, colormap=out.colormap, size=tuple(item["size"]),
                               box=item["box"], original=original, alpha=out.alpha,
                               percentile=out.clip_percentile or percentile, weighted=method.pixel_space)
        if detection is not None:
            image = draw_detection(image, *detection)
        panels[rel] = image
        self.writer.save_png(rel, image)

    def grid_job(self, record: Record, item: dict, panels: dict[str, Image.Image],
                 caption: Caption) -> Callable[[], None]:
        """The job writing the image's grid from the panels its PNG jobs
        rendered before it (outputs of earlier runs are read back); sets
        `record.grid`."""
        record.grid = grid_path(record.key)

        def job() -> None:
            photo = Image.fromarray(item["original"].numpy())
            cells = [(photo, Path(record.input).name, caption(record, None))]
            for name, files in record.outputs.items():
                for rel in files.pngs:
                    image = panels.get(rel)
                    if image is None:
                        with Image.open(self.writer.out / rel) as stored:
                            image = stored.convert("RGB")
                    cells.append((image, name, caption(record, rel)))
            self.writer.save_png(record.grid, compose_grid(cells))

        return job
