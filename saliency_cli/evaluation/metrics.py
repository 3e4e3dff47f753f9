"""The metrics `saliency evaluate` computes, their options, and what each
result depends on (so a rerun recomputes only what changed).

Names (the values of --metric, the keys of the records and the summary):

    deletion, insertion      RISE (Petsiuk et al. 2018): AUC of the class score
                             while the top pixels are deleted / inserted
    average-drop, increase   Grad-CAM++ (Chattopadhyay et al. 2018): the
                             score on the photo weighted by the map
    pointing, energy-pointing  Zhang et al. 2016 / Wang et al. 2020, against
                             COCO-format boxes (--boxes)
    sanity                   Adebayo et al. 2018: rank correlation of the map
                             with the map of a cascadingly randomised model
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import SaliencyError, did_you_mean

METRICS = ("deletion", "insertion", "average-drop", "increase", "pointing", "energy-pointing", "sanity")
CURVES = ("deletion", "insertion")  # metrics whose curves are written as .npy
NEEDS_BOXES = ("pointing", "energy-pointing")
LOWER_IS_BETTER = frozenset({"deletion", "average-drop", "sanity"})
# metrics whose per-map value is a hit or a miss: their intervals are Wilson score intervals
BINARY = {"pointing": 1.0, "increase": 100.0}
TASK_METRICS = {
    "classification": METRICS,
    "detection": ("deletion", "insertion", "pointing", "energy-pointing"),
}
# a version per definition: changing one recomputes that metric in existing folders
_VERSIONS = {"deletion": 1, "insertion": 1, "average-drop": 1, "increase": 1, "pointing": 1,
             "energy-pointing": 1, "sanity": 1}

Substrate = Literal["zero", "black", "noise", "blur"]
Score = Literal["probability", "logit"]
SUBSTRATES = ("zero", "black", "noise", "blur")
SCORES = ("probability", "logit")
DEFAULT_STEPS = 224  # RISE's 224 pixels per step at 224x224; see the README


@dataclass(frozen=True)
class Options:
    """How the metrics are computed (the command line of `saliency evaluate`)."""

    metrics: tuple[str, ...]
    steps: int = DEFAULT_STEPS
    deletion_substrate: Substrate = "zero"
    insertion_substrate: Substrate = "blur"
    score: Score = "probability"
    tolerance: float = 15.0  # pointing game, photo pixels (TorchRay's benchmark)
    sanity_steps: int = 10  # randomisation checkpoints recorded (every layer when the model has fewer)
    seed: int = 0  # the noise substrate and the re-initialised weights
    boxes: Path | None = None
    boxes_digest: str | None = field(default=None, compare=False)

    def check(self) -> None:
        if self.steps < 1:
            raise SaliencyError(f"--steps must be >= 1, got {self.steps}")
        if self.tolerance < 0:
            raise SaliencyError(f"--tolerance must be >= 0, got {self.tolerance}")
        if self.sanity_steps < 1:
            raise SaliencyError(f"--sanity-steps must be >= 1, got {self.sanity_steps}")
        for name, value, valid in (("--deletion-substrate", self.deletion_substrate, SUBSTRATES),
                                   ("--insertion-substrate", self.insertion_substrate, SUBSTRATES),
                                   ("--score", self.score, SCORES)):
            if value not in valid:
                raise SaliencyError(f"{name}: {did_you_mean(value, valid, what='choice')}")
        needs = [m for m in self.metrics if m in NEEDS_BOXES]
        if needs and self.boxes is None:
            raise SaliencyError(f"--metric {needs[0]} needs ground-truth boxes: --boxes COCO.json")

    def digest(self, metric: str) -> str:
        """What one metric's value depends on, besides the map itself."""
        parts: dict[str, object] = {"metric": metric, "version": _VERSIONS[metric]}
        if metric in CURVES:
            substrate = self.deletion_substrate if metric == "deletion" else self.insertion_substrate
            parts.update(steps=self.steps, substrate=substrate, score=self.score)
            if substrate == "noise":
                parts["seed"] = self.seed
        elif metric in NEEDS_BOXES:
            parts.update(tolerance=self.tolerance, boxes=self.boxes_digest)
        elif metric == "sanity":
            parts.update(steps=self.sanity_steps, seed=self.seed)
        text = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def bounds(metric: str, options: Options) -> tuple[float, float] | None:
    """The values a metric can take (None: unbounded, as AUCs of logits)."""
    if metric in CURVES:
        return (0.0, 1.0) if options.score == "probability" else None
    return {"average-drop": (0.0, 100.0), "energy-pointing": (0.0, 1.0), "sanity": (-1.0, 1.0)}.get(metric)


def parse_metrics(names: list[str] | None, boxes: bool) -> tuple[str, ...]:
    """--metric values (repeatable; `all` for every one), checked. Default:
    deletion, insertion, average-drop and increase, plus the pointing games
    when boxes are given (sanity, which recomputes the maps, only on request)."""
    if not names:
        chosen = ["deletion", "insertion", "average-drop", "increase"]
        return tuple(chosen + (list(NEEDS_BOXES) if boxes else []))
    chosen = []
    for name in names:
        if name == "all":
            chosen += [m for m in METRICS if boxes or m not in NEEDS_BOXES]
        elif name in METRICS:
            chosen.append(name)
        else:
            raise SaliencyError(f"--metric: {did_you_mean(name, [*METRICS, 'all'], what='metric')}")
    return tuple(dict.fromkeys(chosen))


def parse_gates(items: list[str] | None, option: str) -> dict[str, float]:
    """--fail-under / --fail-over METRIC=VALUE (repeatable)."""
    gates = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in METRICS:
            raise SaliencyError(f"{option} expects METRIC=VALUE with a metric of {', '.join(METRICS)}; "
                                f"got {item!r}")
        try:
            gates[name] = float(value)
        except ValueError:
            raise SaliencyError(f"{option} {item!r}: {value!r} is not a number") from None
    return gates
