"""The pointing game (Zhang et al. 2016, arXiv:1608.00507) and the energy
pointing game (Wang et al. 2020, Score-CAM, arXiv:1910.01279), against
ground-truth boxes in a COCO-format JSON file.

The map is resized bilinearly onto the region of the photo the model saw,
exactly as the PNG overlay places it (render.render_heatmap). Its maximum
(the first in row-major order on ties) is a hit when the centre of that
pixel lies within `tolerance` photo pixels (Euclidean) of a box of the
explained class. The energy is the share of the map's positive part that
falls on pixels whose centres lie in the union of those boxes.

Boxes file: `images[].file_name` matches an input whose path ends with it
(whole path components: `chelsea.png` matches `photos/chelsea.png`),
`annotations[]` give `image_id`, `category_id` and `bbox` (x, y, w, h in
the photo's pixels), and a category matches a class when its `name` equals
the model's label of that class, ignoring case. A box that several labels
should count for (a cat: "tabby", "Egyptian cat"...) is annotated once per
label.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from PIL import Image

from ..errors import SaliencyError

log = logging.getLogger("saliency")

Box = tuple[float, float, float, float]  # x, y, w, h in photo pixels


@dataclass
class GroundTruth:
    """The boxes of a COCO-format file, by image file name and class name."""

    path: Path
    digest: str  # of the file's bytes
    images: dict[str, dict[str, list[Box]]] = field(default_factory=dict)  # file_name -> name -> boxes
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # file_name -> (width, height), if given
    names: list[str] = field(default_factory=list)  # category names, in file order

    def for_input(self, path: str) -> tuple[dict[str, list[Box]], tuple[int, int] | None] | None:
        """The boxes (by lower-cased class name) and size of the image whose
        file_name the path ends with (the longest such name); None if none."""
        parts = PurePath(path).parts
        best = None
        for name in self.images:
            own = PurePath(name).parts
            if own and parts[-len(own):] == own and (best is None or len(own) > len(PurePath(best).parts)):
                best = name
        return None if best is None else (self.images[best], self.sizes.get(best))

    def warn_unmatched(self, labels: list[str] | None) -> None:
        """One warning listing the categories that name no class of the model."""
        known = {label.lower() for label in labels or []}
        missing = [n for n in self.names if n.lower() not in known]
        if missing:
            log.warning("%s: %d categor%s no class of the model (categories match labels by name, ignoring "
                        "case): %s", self.path, len(missing), "y matches" if len(missing) == 1 else "ies match",
                        ", ".join(missing))


def load_boxes(path: Path) -> GroundTruth:
    """Read and check a COCO-format boxes file."""
    try:
        raw = Path(path).read_bytes()
        data = json.loads(raw)
    except OSError as exc:
        raise SaliencyError(f"--boxes: cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SaliencyError(f"--boxes {str(path)!r} is not valid JSON: {exc}") from None
    where = f"--boxes {path}"
    if not isinstance(data, dict):
        raise SaliencyError(f"{where}: expected a COCO object with images, annotations and categories")
    images = {_field(i, "id", where, "images"): i for i in _list(data, "images", where)}
    categories = {_field(c, "id", where, "categories"): str(_field(c, "name", where, "categories"))
                  for c in _list(data, "categories", where)}
    truth = GroundTruth(Path(path), hashlib.sha256(raw).hexdigest()[:16], names=list(categories.values()))
    for image in images.values():
        name = str(_field(image, "file_name", where, "images"))
        truth.images.setdefault(name, {})
        if isinstance(image.get("width"), int) and isinstance(image.get("height"), int):
            truth.sizes[name] = (image["width"], image["height"])
    for ann in _list(data, "annotations", where):
        image, category = images.get(ann.get("image_id")), categories.get(ann.get("category_id"))
        if image is None or category is None:
            raise SaliencyError(f"{where}: annotation {ann.get('id')} names an unknown image_id or category_id")
        truth.images[str(image["file_name"])].setdefault(category.lower(), []).append(_bbox(ann, where))
    return truth


def _list(data: dict, key: str, where: str) -> list[dict]:
    items = data.get(key)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise SaliencyError(f"{where}: '{key}' must be a list of objects")
    return items


def _field(item: dict, key: str, where: str, section: str) -> Any:
    if key not in item:
        raise SaliencyError(f"{where}: an entry of '{section}' has no '{key}'")
    return item[key]


def _bbox(ann: dict, where: str) -> Box:
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
            and box[2] >= 0 and box[3] >= 0):
        raise SaliencyError(f"{where}: annotation {ann.get('id')}: bbox must be [x, y, width, height], "
                            f"width and height >= 0; got {box!r}")
    return tuple(float(v) for v in box)  # type: ignore[return-value]


def apart_reason(truth: GroundTruth, found: tuple | None, size: tuple[int, int], boxes: list,
                 what: str) -> str | None:
    """Why an image's map is counted apart in the pointing games (None: it is not)."""
    if found is None:
        return f"the image is not in {truth.path.name}"
    if found[1] is not None and tuple(found[1]) != tuple(size):
        return f"{truth.path.name} gives this image as {found[1][0]}x{found[1][1]}, the photo is {size[0]}x{size[1]}"
    return None if boxes else f"no box {what} for this image"


def on_photo(values: np.ndarray, size: tuple[int, int], region: tuple[float, ...]) -> tuple[np.ndarray, int, int]:
    """The map resized bilinearly onto the region of the photo (w, h) that the
    model saw, as the overlay draws it: (resized, left, top)."""
    width, height = size
    left, top = max(0, int(round(region[0]))), max(0, int(round(region[1])))
    right, bottom = min(width, int(round(region[2]))), min(height, int(round(region[3])))
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
    return np.asarray(image.resize((right - left, bottom - top), Image.BILINEAR), dtype=np.float64), left, top


def point_and_energy(values: np.ndarray, size: tuple[int, int], region: tuple[float, ...], boxes: list[Box],
                     tolerance: float) -> tuple[float, float | None]:
    """(hit: 1.0 or 0.0, energy share or None when the map has no positive part)."""
    resized, left, top = on_photo(values, size, region)
    row, col = np.unravel_index(int(np.argmax(resized)), resized.shape)  # the first maximum, row-major
    px, py = left + col + 0.5, top + row + 0.5
    hit = any(np.hypot(max(x - px, 0.0, px - x - w), max(y - py, 0.0, py - y - h)) <= tolerance
              for x, y, w, h in boxes)
    cx = left + np.arange(resized.shape[1]) + 0.5
    cy = top + np.arange(resized.shape[0]) + 0.5
    inside = np.zeros(resized.shape, dtype=bool)
    for x, y, w, h in boxes:
        inside |= ((cy >= y) & (cy <= y + h))[:, None] & ((cx >= x) & (cx <= x + w))[None, :]
    positive = np.clip(resized, 0.0, None)
    total = float(positive.sum())
    return float(hit), (float(positive[inside].sum()) / total if total > 0 else None)


def store_pointing(result: Any, values: np.ndarray, decoded: dict, boxes: list[Box], tolerance: float) -> None:
    """Both pointing games of one map into `result` (its `metrics` and `apart`)."""
    hit, energy = point_and_energy(values, tuple(decoded["size"]), decoded["box"], boxes, tolerance)
    result.metrics["pointing"] = hit
    if energy is None:
        result.apart["energy-pointing"] = "the map has no positive values"
    else:
        result.metrics["energy-pointing"] = energy


def best_match(box: list[float], candidates: list[Box], threshold: float = 0.5) -> Box | None:
    """The candidate (x, y, w, h) with the highest IoU with `box` (x0, y0, x1,
    y1), if that IoU is at least `threshold` (the first of equals)."""
    best, best_iou = None, threshold
    for cand in candidates:
        x0, y0, x1, y1 = cand[0], cand[1], cand[0] + cand[2], cand[1] + cand[3]
        inter = max(0.0, min(box[2], x1) - max(box[0], x0)) * max(0.0, min(box[3], y1) - max(box[1], y0))
        union = (box[2] - box[0]) * (box[3] - box[1]) + cand[2] * cand[3] - inter
        iou = inter / union if union > 0 else 0.0
        if iou >= best_iou and (best is None or iou > best_iou):
            best, best_iou = cand, iou
    return best
