"""Layers for the CAM family: which module to explain, and the CAM head.

A probe is one forward pass of one image with a hook on every module and a
TorchFunctionMode watching for global pooling, however it is written
(`nn.AdaptiveAvgPool2d`, `F.adaptive_avg_pool2d`, `avg_pool2d` over the
whole map, `x.mean((2, 3))`, max-pooling alike). From it:

- the default Grad-CAM layer: the last module whose output is a 4-D feature
  map before the last global pooling (the feature map the head pools);
- how many times each module runs per forward, so a reused module (one
  activation object serving EfficientNet-Lite's stem and head) is explained
  at its last call, and the user is told.

Probes are cached per model and input shape; the cache holds no strong
reference to the model.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import SaliencyError, did_you_mean
from ..hooks import capture_outputs, model_guard

log = logging.getLogger("saliency")


# pooling modules resample the feature map; the default explains the map itself (VGG: `features`)
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)


@dataclass
class LayerCall:
    name: str
    module: nn.Module
    shape: tuple[int, ...] | None  # output shape, None when the output is not a tensor


@dataclass
class Probe:
    calls: list[LayerCall] = field(default_factory=list)  # in the order the calls finished
    pooled_after: int | None = None  # number of calls finished before the last global pooling
    noted: set[str] = field(default_factory=set)  # reused layers already reported

    def count(self, name: str) -> int:
        return sum(1 for c in self.calls if c.name == name)

    def last(self, name: str) -> LayerCall | None:
        return next((c for c in reversed(self.calls) if c.name == name), None)

    def feature_maps(self) -> list[LayerCall]:
        """Calls with a 4-D output, one per module (its last call), in order."""
        last = {c.name: i for i, c in enumerate(self.calls) if c.shape is not None and len(c.shape) == 4}
        return [self.calls[i] for i in sorted(last.values())]

    def default_layer(self) -> str:
        end = len(self.calls) if self.pooled_after is None else self.pooled_after
        for call in reversed(self.calls[:end]):
            if call.shape is not None and len(call.shape) == 4 and not isinstance(call.module, _POOLS):
                return call.name
        raise SaliencyError("no module of this model returns a 4-D feature map [B,C,H,W]; "
                            "name a layer with the method's `layer` parameter")


# ------------------------------------------------------------------ global pooling


def _is_one(size: Any) -> bool:
    return size == 1 or (isinstance(size, (tuple, list)) and all(s == 1 for s in size))


def _spatial_dims(dim: Any) -> bool:
    dims = {dim} if isinstance(dim, int) else set(dim or ())
    return {d % 4 for d in dims} == {2, 3}


def global_pool_kind(func: Any, args: tuple, kwargs: dict) -> str | None:
    """'avg' or 'max' when this call pools a [B,C,H,W] map over all of H,W."""
    if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() != 4:
        return None
    x = args[0]
    if func in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        size = args[1] if len(args) > 1 else kwargs.get("output_size")
        if _is_one(size):
            return "avg" if func is F.adaptive_avg_pool2d else "max"
    elif func in (F.avg_pool2d, F.max_pool2d):
        kernel = args[1] if len(args) > 1 else kwargs.get("kernel_size")
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        if kernel == tuple(x.shape[-2:]):
            return "avg" if func is F.avg_pool2d else "max"
    elif func in (torch.mean, torch.Tensor.mean):
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if dim is not None and _spatial_dims(dim):
            return "avg"
    elif func in (torch.amax, torch.Tensor.amax):
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if dim is not None and _spatial_dims(dim):
            return "max"
    return None


class PoolSpy(TorchFunctionMode):
    """Remembers the last global average pooling (its input and output) and
    calls `on_pool` for every global pooling."""

    def __init__(self, on_pool=None):
        super().__init__()
        self.on_pool = on_pool
        self.avg_input: torch.Tensor | None = None
        self.avg_output: torch.Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        kind = global_pool_kind(func, args, kwargs)
        if kind is not None:
            if kind == "avg":
                self.avg_input, self.avg_output = args[0], out
            if self.on_pool is not None:
                self.on_pool()
        return out


# ------------------------------------------------------------------ probe


_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def probe(model: nn.Module, images: torch.Tensor) -> Probe:
    """One forward of one image, recording every module call (cached)."""
    key = (tuple(images.shape[1:]), images.dtype, images.device)
    cached = _PROBES.get(model, {}).get(key)
    if cached is not None and all(_still_there(model, c) for c in cached.calls[-1:]):
        return cached
    result = Probe()
    named = [(name, m) for name, m in model.named_modules() if name]

    def recorder(name: str):
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            result.calls.append(LayerCall(name, module, shape))

        return hook

    def on_pool() -> None:
        result.pooled_after = len(result.calls)

    handles = [m.register_forward_hook(recorder(name)) for name, m in named]
    try:
        with torch.no_grad(), PoolSpy(on_pool):
            model(images[:1])
    finally:
        for h in handles:
            h.remove()
    _PROBES.setdefault(model, {})[key] = result
    return result


def _still_there(model: nn.Module, call: LayerCall) -> bool:
    try:
        return model.get_submodule(call.name) is call.module
    except AttributeError:
        return False


@dataclass
class Layer:
    name: str
    module: nn.Module
    calls: int  # times the module runs per forward; the last call is explained

    def to_grid(self, output: torch.Tensor) -> torch.Tensor:
        """The layer's output (or its gradient) as a feature map [B,C,h,w]:
        what every CAM-family method works on. Take gradients with respect
        to the captured output first, then call this on both."""
        return output


def resolve_layer(model: nn.Module, images: torch.Tensor, name: str | None, method: str) -> Layer:
    """The module to explain: `name`, or the default from the probe."""
    found = probe(model, images)
    if name is None:
        name = found.default_layer()
    try:
        module = model.get_submodule(name)
    except AttributeError:
        names = [c.name for c in found.feature_maps()] or [n for n, _ in model.named_modules() if n]
        message = did_you_mean(name, names, what="layer", list_valid=False)
        raise SaliencyError(f"{method}: {message}; `saliency layers` lists the "
                            "layers with their output shapes") from None
    call = found.last(name)
    if call is None:
        raise SaliencyError(f"{method}: layer {name!r} does not run in the model's forward pass")
    if call.shape is None or len(call.shape) != 4:
        raise SaliencyError(f"{method}: layer {name!r} outputs {list(call.shape or [])}, not a 4-D "
                            "feature map [B,C,H,W]; `saliency layers` lists the candidates")
    if call.shape[-2:] == (1, 1) and f"1x1 {name}" not in found.noted:
        found.noted.add(f"1x1 {name}")
        log.warning("%s: layer %r outputs a 1x1 map (a global pooling?), so the map is constant over the image; "
                    "choose a layer before the pooling (`saliency layers` lists them)", method, name)
    calls = found.count(name)
    if calls > 1 and name not in found.noted:  # once per model and input shape
        found.noted.add(name)
        log.info("%s: layer %r runs %d times per forward pass; explaining its last call (output %s)",
                 method, name, calls, "x".join(map(str, call.shape[1:])))
    return Layer(name, module, calls)


def check_layers(model: nn.Module, layers: dict[str, str | None]) -> None:
    """Each method's named layer (method -> name, None for the default)
    exists: a misspelt layer is a config error, said before any image is read."""
    for method, name in layers.items():
        if name is None:
            continue
        try:
            model.get_submodule(name)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            message = did_you_mean(name, names, what="layer", list_valid=False)
            raise SaliencyError(f"{method}: {message}; `saliency layers` lists the layers") from None


@contextmanager
def layer_output(layer: Layer) -> Iterator[list[Any]]:
    """Capture the layer's outputs; its last call's output requires grad."""
    with capture_outputs(layer.module, track_call=layer.calls - 1) as outputs:
        yield outputs


def last_output(outputs: list[Any], layer: Layer, method: str) -> torch.Tensor:
    if len(outputs) != layer.calls:
        raise SaliencyError(f"{method}: layer {layer.name!r} ran {len(outputs)} times, not "
                            f"{layer.calls} as in the first pass; name a layer that runs once")
    return outputs[-1]


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B,h,w] -> [B,H,W], bilinear (the papers' choice; never nearest)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


@dataclass
class LayerRow:
    name: str
    kind: str  # module class name
    shape: tuple[int, ...]  # output shape for one image
    calls: int
    default: bool


def list_layers(model: nn.Module, images: torch.Tensor) -> list[LayerRow]:
    """Candidate layers for grad-cam: every module with a 4-D output, in the
    order they run, the default marked."""
    with model_guard(model):
        found = probe(model, images)
    default = found.default_layer()
    return [LayerRow(c.name, type(c.module).__name__, c.shape, found.count(c.name), c.name == default)
            for c in found.feature_maps()]
