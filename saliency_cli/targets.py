"""Class names, the `--target` choice, and top-k predictions."""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import SaliencyError, did_you_mean

log = logging.getLogger("saliency")


def load_labels(spec: str | list[str] | None, *, num_classes: int | None = None,
                names: list[str] | None = None) -> list[str] | None:
    """`imagenet` / `coco` (built in), a text file with one name per line, a
    list, None, or `auto`: the model's own class names where it carries them
    (an Ultralytics checkpoint's), else ImageNet names for 1000 classes, COCO
    names for 91 (torchvision's detection numbering), none otherwise."""
    if spec == "auto" and names:
        return list(names)
    if spec == "auto":
        spec = {1000: "imagenet", 91: "coco"}.get(num_classes)  # type: ignore[arg-type]
    if spec is None:
        return None
    if isinstance(spec, list):
        return [str(s) for s in spec]
    if spec in ("imagenet", "coco"):  # torchvision's names, stored here: its models module takes 1.5 s to import
        from .label_names import COCO, IMAGENET

        return list(IMAGENET if spec == "imagenet" else COCO)
    path = Path(spec)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SaliencyError(f"labels: cannot read {spec!r}: {exc.strerror or exc}") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def check_labels(labels: list[str] | None, num_classes: int | None) -> None:
    """A list of names that does not match the model's outputs is most likely
    a list for another model (or one name short): say so before the run."""
    if labels is not None and num_classes is not None and len(labels) != num_classes:
        log.warning("labels: %d name(s) for a model with %d outputs; names go by class index, so check that the "
                    "list belongs to this model", len(labels), num_classes)


def label_of(labels: list[str] | None, index: int, *, explained: bool = False) -> str:
    """The name of class `index` ("class N" without labels). A class that a
    map explains must have its name when labels are given: a short list
    would otherwise label maps with the wrong class without a word."""
    if labels is not None and 0 <= index < len(labels):
        return labels[index]
    if labels is not None and explained:
        raise SaliencyError(f"labels: class {index} is explained but the list has only {len(labels)} name(s); give "
                            "one name per model output, in class order (or labels: null for class numbers)")
    return f"class {index}"


def parse_target(spec: int | str, labels: list[str] | None) -> int | None:
    """`predicted` -> None (each image's top-1), an index, or a class name."""
    if isinstance(spec, int):
        index = spec
    elif spec == "predicted":
        return None
    elif spec.strip().lstrip("-").isdigit():
        index = int(spec)
    else:
        if labels is None:
            raise SaliencyError(f"--target {spec!r}: class names need labels (config key 'labels')")
        lowered = [name.lower() for name in labels]
        if spec.lower() not in lowered:
            raise SaliencyError(f"--target: {did_you_mean(spec, labels, what='class name')}")
        index = lowered.index(spec.lower())
    if index < 0:
        raise SaliencyError(f"--target must be >= 0, got {index}")
    return index

