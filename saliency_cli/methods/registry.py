"""The method registry: the only list of method names.

A method is one function `compute(model, images, targets, params) ->
Attribution` in its own file, registered with `@register(...)` together with
its parameter dataclass. The registry gives every method the same contract:
parameter validation (shared with the config), the model guard, target
handling and the channel reduction of pixel-space maps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..config import from_mapping
from ..errors import SaliencyError, did_you_mean
from ..hooks import model_guard

Reduce = Literal["max-abs", "sum-abs", "sum", "none"]


@dataclass
class PixelParams:
    """Parameters every pixel-space method has: how the per-channel
    attribution [B,3,H,W] becomes a map [B,H,W]."""

    reduce: Reduce = "max-abs"


@dataclass
class Attribution:
    """What a method returns.

    maps: [B,C,H,W] per-channel (pixel-space methods, before reduction) or [B,H,W]
    logits: [B,K] model outputs for the unperturbed images (detached)
    targets: [B] the class explained for each image
    """

    maps: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


Compute = Callable[[nn.Module, torch.Tensor, "torch.Tensor | None", Any], Attribution]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line for `saliency methods`
    paper: str
    params: type  # dataclass of parameters with their defaults
    compute: Compute
    pixel_space: bool  # per-channel input-space maps: reducible, usable as a SmoothGrad base
    style: str = "positive"  # display scaling of non-pixel-space maps (see render.to_unit)
    task: str = "classification"  # or "detection": compute(detector, image, target_class, params)

    def make_params(self, values: Mapping[str, Any] | None = None, *, where: str | None = None) -> Any:
        """Validate parameter values (from the API or the config)."""
        return from_mapping(self.params, dict(values or {}), where or self.name)

    def defaults(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params())

    def display(self, params: Any) -> tuple[str, float]:
        """(style, percentile) for the heatmap PNG. Pixel-space maps clip at
        the 99th percentile, as the SmoothGrad paper shows them; signed ones
        (reduce: sum) use the diverging colormap."""
        if self.pixel_space:
            return ("signed" if params.reduce == "sum" else "positive"), 99.0
        return self.style, 100.0

    def run(self, model: nn.Module, images: torch.Tensor, targets: Any, params: Any) -> Attribution:
        """Guarded call with targets checked and pixel-space maps reduced."""
        if self.task != "classification":
            raise SaliencyError(f"{self.name} explains object detectors: use explain_detections()")
        images = _check_images(images)
        targets = _check_targets(targets, images)
        with model_guard(model):
            result = self.compute(model, images, targets, params)
        if self.pixel_space:
            result.maps = reduce_channels(result.maps, params.reduce)
        result.maps = result.maps.float()  # float32 whatever the input's (or autocast's) dtype
        return result


_REGISTRY: dict[str, Method] = {}


def register(name: str, *, summary: str, paper: str, params: type, pixel_space: bool = True,
             style: str = "positive", task: str = "classification"):
    """Decorator registering `compute` under `name`; a duplicate name is a bug and raises."""

    def decorate(compute: Compute) -> Compute:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        _REGISTRY[name] = Method(name, summary, paper, params, compute, pixel_space, style, task)
        return compute

    return decorate


def get(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SaliencyError(did_you_mean(name, _REGISTRY, what="method")) from None


def names(task: str | None = None) -> list[str]:
    return [name for name, m in _REGISTRY.items() if task is None or m.task == task]


# ------------------------------------------------------------------ shared pieces


def reduce_channels(attribution: torch.Tensor, how: Reduce) -> torch.Tensor:
    """[B,C,H,W] -> [B,H,W]. max-abs is Simonyan et al.'s convention."""
    if how == "none":
        return attribution
    if how == "max-abs":
        return attribution.abs().amax(dim=1)
    if how == "sum-abs":
        return attribution.abs().sum(dim=1)
    if how == "sum":
        return attribution.sum(dim=1)
    raise SaliencyError(f"unknown reduce {how!r}")  # params validation makes this unreachable


def as_logits(output: Any, batch: int) -> torch.Tensor:
    """The model's class scores [B,K]; a clear error for anything else."""
    if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[0] == batch:
        return output
    if hasattr(output, "logits") and isinstance(output.logits, torch.Tensor):  # e.g. HF-style outputs
        return as_logits(output.logits, batch)
    got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    raise SaliencyError(
        f"the model must return class scores of shape [batch, classes] = [{batch}, K]; got {got}"
    )


def select_targets(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """The given targets, or the top-1 class per image; checked against K."""
    if targets is None:
        return logits.detach().argmax(dim=1)
    targets = targets.to(logits.device)
    num_classes = logits.shape[1]
    if targets.numel() and not bool(((targets >= 0) & (targets < num_classes)).all()):  # one sync
        raise SaliencyError(
            f"target class {targets.tolist()} out of range for a model with {num_classes} outputs"
        )
    return targets


def class_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each image's target logit. Images do not
    interact in eval mode, so its gradient holds every image's own gradient."""
    return logits.gather(1, targets[:, None]).sum()


def _check_images(images: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise SaliencyError(f"images must be a float tensor [B,C,H,W]; got {got}")
    if not images.is_floating_point():
        raise SaliencyError(f"images must be floating point; got {images.dtype}")
    return images.detach()


def _check_targets(targets: Any, images: torch.Tensor) -> torch.Tensor | None:
    if targets is None:
        return None
    batch = images.shape[0]
    if isinstance(targets, int):
        return torch.full((batch,), targets, dtype=torch.long, device=images.device)
    targets = torch.as_tensor(targets, dtype=torch.long, device=images.device).reshape(-1)
    if targets.numel() == 1 and batch > 1:
        targets = targets.expand(batch)
    if targets.numel() != batch:
        raise SaliencyError(f"targets: expected {batch} class ids (one per image), got {targets.numel()}")
    return targets
