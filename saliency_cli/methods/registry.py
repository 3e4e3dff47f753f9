"""The method registry: the only list of method names.

A method is one function in its own file, registered with its parameter
dataclass. There are two contracts, told apart by the registered type:

- `ClassificationMethod`: `compute(model, images [B,3,H,W], targets [B] | None,
  params) -> Attribution`, for a batch of preprocessed images;
- `DetectionMethod`: `compute(detector, image [3,H,W], target_class | None,
  params, progress) -> DetectionExplanation`, for one photo in [0,1].

Each declares what the run loop needs from it, so the loop never reads a
method's parameters: `units(params)` (the progress units one image costs:
D-RISE counts masks), `layer(params)` (the model layer that must exist),
`display(params)` (how its PNG is scaled), and what a model must have for
it to apply: `needs`, checks run on a probe image that raise NotApplicable
(CAM: a GAP + linear head; attention rollout: global self-attention), plus
a feature map for every method with a layer (LayerParams). `check_applies`
runs them once per run, before any image is read. The registry gives every method
the same guarantees: parameters validated once where they are built, the
model guard, target checks and the channel reduction of pixel-space maps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..detection import DetectionExplanation, Detector
from ..errors import SaliencyError, did_you_mean
from ..hooks import model_guard
from ..schema import from_mapping
from .layers import resolve_layer

Reduce = Literal["max-abs", "sum-abs", "sum", "none"]
Progress = Callable[[int], None]


@dataclass
class PixelParams:
    """Parameters every pixel-space method has: how the per-channel
    attribution [B,3,H,W] becomes a map [B,H,W]."""

    reduce: Reduce = "max-abs"


@dataclass
class LayerParams:
    """Parameters of methods that explain one layer of the model."""

    layer: str | None = None  # dotted module name; null: the method's default layer


@dataclass
class Attribution:
    """What a classification method returns.

    maps: [B,C,H,W] per-channel (pixel-space methods, before reduction) or [B,H,W]
    logits: [B,K] model outputs for the unperturbed images (detached)
    targets: [B] the class explained for each image
    """

    maps: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


Compute = Callable[[nn.Module, torch.Tensor, "torch.Tensor | None", Any], Attribution]
# What a method needs of a model: need(model, probe images [1,3,H,W], params) raises
# NotApplicable (errors.py) saying what the model lacks, or returns None.
Need = Callable[[nn.Module, torch.Tensor, Any], None]
DetectCompute = Callable[[Detector, torch.Tensor, "int | None", Any, "Progress | None"], DetectionExplanation]


@dataclass(frozen=True, kw_only=True)
class Method:
    """What every method declares."""

    name: str
    summary: str  # one line for `saliency methods`
    paper: str
    params: type  # dataclass of parameters with their defaults
    task: str  # the task whose loop runs it
    pixel_space: bool = False  # per-channel input-space maps: reducible, usable as a SmoothGrad base
    style: str = "positive"  # display scaling of non-pixel-space maps (see render.to_unit)
    needs: tuple[Need, ...] = ()  # what a model must have (a layer method's feature map is implied)

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

    @property
    def takes_layer(self) -> bool:
        """Its parameters name a layer of the model (see LayerParams)."""
        return issubclass(self.params, LayerParams)

    def layer(self, params: Any) -> str | None:
        """The layer the model must have for these parameters (None: the default)."""
        return params.layer if isinstance(params, LayerParams) else None

    def units(self, params: Any) -> int:
        """Progress units of one image (what a progress bar counts)."""
        return 1

    def check_applies(self, model: Any, images: torch.Tensor, params: Any) -> None:
        """Raise NotApplicable when this method cannot explain `model` (no
        feature map for a layer method, or an unmet need), from a probe of
        `images` (one image at the run's input size). A config error, such as
        a misspelt layer, raises SaliencyError whatever the method."""
        if not isinstance(model, nn.Module):
            return
        with model_guard(model):
            if self.takes_layer:
                resolve_layer(model, images, self.layer(params), self.name)
            for need in self.needs:
                need(model, images, params)


@dataclass(frozen=True, kw_only=True)
class ClassificationMethod(Method):
    compute: Compute
    task: str = "classification"

    def run(self, model: nn.Module, images: torch.Tensor, targets: Any, params: Any) -> Attribution:
        """Guarded call with targets checked and pixel-space maps reduced."""
        images = _check_images(images)
        targets = _check_targets(targets, images)
        with model_guard(model):
            result = self.compute(model, images, targets, params)
        if self.pixel_space:
            result.maps = reduce_channels(result.maps, params.reduce)
        result.maps = result.maps.float()  # float32 whatever the input's (or autocast's) dtype
        return result


@dataclass(frozen=True, kw_only=True)
class DetectionMethod(Method):
    compute: DetectCompute
    count: Callable[[Any], int] | None = None  # progress units of one image, from the params
    task: str = "detection"

    def units(self, params: Any) -> int:
        return 1 if self.count is None else self.count(params)

    def run(self, detector: Detector, image: torch.Tensor, target_class: int | None, params: Any,
            progress: Progress | None = None) -> DetectionExplanation:
        """Explain the detections of one image [3,H,W] in [0,1]. The model
        guard is the caller's (it owns the model behind `detector`)."""
        return self.compute(detector, image, target_class, params, progress)


_REGISTRY: dict[str, Method] = {}


def add(method: Method) -> Method:
    """Register a method object; a duplicate name is a bug and raises."""
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method
    return method


def remove(name: str) -> None:
    """Unregister a method (for methods registered at run time, e.g. in tests)."""
    _REGISTRY.pop(name, None)


def register(name: str, *, summary: str, paper: str, params: type, pixel_space: bool = True,
             style: str = "positive", task: str = "classification", needs: tuple[Need, ...] = ()):
    """Decorator registering a classification `compute(model, images, targets, params)`."""

    def decorate(compute: Compute) -> Compute:
        add(ClassificationMethod(name=name, summary=summary, paper=paper, params=params, compute=compute,
                                 pixel_space=pixel_space, style=style, task=task, needs=needs))
        return compute

    return decorate


def register_detection(name: str, *, summary: str, paper: str, params: type, style: str = "positive",
                       units: Callable[[Any], int] | None = None, task: str = "detection"):
    """Decorator registering a detection `compute(detector, image, target_class, params, progress)`."""

    def decorate(compute: DetectCompute) -> DetectCompute:
        add(DetectionMethod(name=name, summary=summary, paper=paper, params=params, compute=compute,
                            style=style, count=units, task=task))
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
        beyond = sorted({t for t in targets.tolist() if not 0 <= t < num_classes})
        raise SaliencyError(f"target class {', '.join(map(str, beyond))} out of range for a model with "
                            f"{num_classes} outputs (classes 0 to {num_classes - 1})")
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
