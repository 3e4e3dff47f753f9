"""The PNG jobs of a run: each map drawn over its photo, and an image's grid.

A decoded item (see data.ImageDataset) carries what drawing needs:
`original` (the photo as shown, uint8 [h,w,3], or None), `size` (the
photo's width, height) and `box` (the part of the photo the model saw, in
its pixels). A photo whose longer side exceeds `output.png_max_side` is shown
scaled down (render.shown_scale); the .npy is never affected.

Two renderers draw the same pixels (render_torch.py says how close): numpy
(render.py) inside the writer's jobs, on the writer's threads, or torch on
the model's device, all the maps of one photo at once, right away, so that
only the finished overlays come back to the host (`output.renderer`; auto
picks torch when the model runs on CUDA: the maps are already there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .methods.registry import Method
from .outputs import grid_path
from .profile import Profile
from .records import Record
from .render import compose_grid, draw_detection, open_image, render_heatmap, shown_scale, shown_size
from .render_torch import render_overlays
from .writer import Writer

Caption = Callable[[Record, "str | None"], str]  # (record, PNG or None for the photo) -> subtitle


@dataclass
class Picture:
    """One PNG to draw: a map (a numpy array for the numpy renderer, a tensor
    on the device for torch), its method and parameters, and optionally a
    detection to outline (box in photo pixels, label)."""

    rel: str
    method: Method
    params: Any
    values: Any
    detection: tuple[list[float], str] | None = None


def _photo_on_host(item: dict) -> torch.Tensor:
    """The photo the PNGs show, brought to the host where the device decoded
    it (runtime.decode): once, by the main thread, for the numpy renderer and
    the grid, which draw it in the writer's threads."""
    if item["original"] is not None and item["original"].device.type != "cpu":
        item["original"] = item["original"].cpu()
    return item["original"]


class Figures:
    def __init__(self, output: Any, writer: Writer, device: torch.device, profile: Profile):
        self.output = output  # the config's output section
        self.writer = writer
        self.profile = profile
        use_torch = output.renderer == "torch" or (output.renderer == "auto" and device.type == "cuda")
        self.device = device if use_torch else None  # where maps must be for `jobs`; None: numpy arrays

    def jobs(self, pictures: list[Picture], item: dict, panels: dict[str, Any]) -> list[Callable[[], None]]:
        """The jobs writing these PNGs of one photo; the images are kept in
        `panels` for the grid. With the torch renderer they are drawn now."""
        if not pictures:
            return []
        if self.device is None:
            _photo_on_host(item)
            return [partial(self._draw_and_save, p, item, panels) for p in pictures]
        with self.profile.timed("render"):
            overlays = self._render_on_device(pictures, item).cpu().numpy()
        return [partial(self._save, p, overlays[i], item, panels) for i, p in enumerate(pictures)]

    def held(self, pictures: list[Picture], item: dict) -> int:
        """Bytes the jobs of `pictures` hold until written, beyond the photo and
        the maps: the finished overlays, with the torch renderer."""
        if self.device is None or not pictures:
            return 0
        width, height = self._geometry(item)[0]
        return len(pictures) * width * height * 3

    def _geometry(self, item: dict) -> tuple[tuple[int, int], tuple[float, ...], float]:
        """The PNG's size, the model's box in it, and its scale from the photo."""
        scale = shown_scale(item["size"], self.output.png_max_side)
        size = shown_size(item["size"], self.output.png_max_side)
        return size, tuple(v * scale for v in item["box"]), scale

    def _photo(self, item: dict) -> Any:
        return item["original"] if item["original"] is not None and self.output.overlay else None

    def _draw_and_save(self, picture: Picture, item: dict, panels: dict[str, Any]) -> None:
        values = picture.values
        if values.ndim == 3:  # reduce: none keeps channels; show the max-abs view
            values = np.abs(values).max(axis=0)
        out, (size, box, _) = self.output, self._geometry(item)
        style, percentile = picture.method.display(picture.params)
        photo = self._photo(item)
        with self.profile.timed("render"):
            image = render_heatmap(values, style=style, colormap=out.colormap, size=size, box=box,
                                   original=None if photo is None else photo.numpy(), alpha=out.alpha,
                                   percentile=out.clip_percentile or percentile,
                                   weighted=picture.method.pixel_space)
        self._save(picture, image, item, panels)

    def _render_on_device(self, pictures: list[Picture], item: dict) -> torch.Tensor:
        out, (size, box, _) = self.output, self._geometry(item)
        shown = [p.method.display(p.params) for p in pictures]
        photo = self._photo(item)
        return render_overlays(
            [p.values for p in pictures], [style for style, _ in shown],
            [out.clip_percentile or percentile for _, percentile in shown],
            [p.method.pixel_space for p in pictures], colormap=out.colormap, size=size, box=box,
            photo=None if photo is None else photo.to(self.device, non_blocking=True), alpha=out.alpha)

    def _save(self, picture: Picture, image: np.ndarray, item: dict, panels: dict[str, Any]) -> None:
        if picture.detection is not None:
            scale = self._geometry(item)[2]
            box, text = picture.detection
            image = np.asarray(draw_detection(image, [v * scale for v in box], text))
        panels[picture.rel] = image
        self.writer.save_png(picture.rel, image)

    def grid_job(self, record: Record, item: dict, panels: dict[str, Any],
                 caption: Caption) -> Callable[[], None]:
        """The job writing the image's grid from the panels its PNG jobs
        rendered before it (outputs of earlier runs are read back); sets
        `record.grid`."""
        record.grid = grid_path(record.key)
        photo = _photo_on_host(item).numpy()

        def job() -> None:
            cells = [(photo, Path(record.input).name, caption(record, None))]
            for name, files in record.outputs.items():
                for rel in files.pngs:
                    image = panels.get(rel)
                    if image is None:
                        with open_image(self.writer.out / rel) as stored:
                            image = stored.convert("RGB")
                    cells.append((image, name, caption(record, rel)))
            self.writer.save_png(record.grid, compose_grid(cells))

        return job
