"""Layers for the CAM family: which module to explain, and its output as a
feature map.

A probe is one forward pass of one image with a hook on every module and a
PoolSpy (pooling.py) watching for global pooling. From it:

- the layout of each module's output (feature_maps.py): a map [B,C,h,w], an
  NHWC map [B,h,w,C] (Swin), or tokens [B,N,C] on a patch grid (ViT);
- the default layer: the last module whose output is a feature map before
  the last global pooling (the map the head pools). When that is a token
  layer, the default is the last token layer of the same width whose patch
  tokens get a gradient from the class score (found with one backward
  pass): through a class-token head the patch tokens of the last block's
  output get none, so a ViT's default is the input of its last attention,
  the last block's first LayerNorm (torchvision `encoder_layer_11.ln_1`,
  timm `blocks.11.norm1`); an average-pooled ViT's is its last block;
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

from ..errors import NotApplicable, SaliencyError, did_you_mean
from ..hooks import capture_outputs, model_guard
from .feature_maps import Layouts, MapKind, token_default
from .pooling import PoolSpy

log = logging.getLogger("saliency")


# pooling modules resample the feature map; the default explains the map itself (VGG: `features`)
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)
# identities in eval mode: the default names the module that computes the map
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
NO_MAP = ("no module of this model outputs a feature map [B,C,H,W], an NHWC map [B,H,W,C] or patch tokens "
          "[B,N,C]; name a layer with the method's `layer` parameter")
NO_GRADIENT = ("the patch tokens of no token layer reach the classifier's input; name a layer with the method's "
               "`layer` parameter")


@dataclass
class LayerCall:
    name: str
    module: nn.Module
    shape: tuple[int, ...] | None  # output shape, None when the output is not a tensor
    kind: MapKind | None = None  # the output as a feature map, None when it is not one


@dataclass
class Probe:
    calls: list[LayerCall] = field(default_factory=list)  # in the order the calls finished
    pooled_after: int | None = None  # number of calls finished before the last global pooling
    noted: set[str] = field(default_factory=set)  # reused layers already reported
    token_counts: set[int] = field(default_factory=set)  # N of the token layers
    default: str | None = None
    no_default: str = NO_MAP  # why there is no default

    def count(self, name: str) -> int:
        return sum(1 for c in self.calls if c.name == name)

    def last(self, name: str) -> LayerCall | None:
        return next((c for c in reversed(self.calls) if c.name == name), None)

    def feature_maps(self) -> list[LayerCall]:
        """Calls with a feature-map output, one per module (its last call), in
        order; attention internals [B,heads,N,.] are left out."""
        last = {c.name: i for i, c in enumerate(self.calls) if c.kind is not None
                and not (c.kind.layout != "tokens" and c.shape[2] in self.token_counts)}
        return [self.calls[i] for i in sorted(last.values())]

    def token_kind(self, n: int) -> MapKind | None:
        """The layout (grid, prefix) of the model's token layers of n tokens."""
        return next((c.kind for c in self.calls if c.kind is not None and c.kind.layout == "tokens"
                     and c.shape[1] == n), None)

    def default_layer(self) -> str:
        if self.default is None:
            raise NotApplicable(self.no_default)
        return self.default

    def candidates(self) -> list[LayerCall]:
        """Calls before the last global pooling that a default may name."""
        end = len(self.calls) if self.pooled_after is None else self.pooled_after
        maps = {id(c) for c in self.feature_maps()}
        return [c for c in self.calls[:end] if id(c) in maps and not isinstance(c.module, (*_POOLS, *_PASS_THROUGH))
                and "DropPath" not in type(c.module).__name__]


# ------------------------------------------------------------------ probe


_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def probe(model: nn.Module, images: torch.Tensor) -> Probe:
    """One forward of one image, recording every module call (cached)."""
    key = (tuple(images.shape[1:]), images.dtype, images.device)
    cached = _PROBES.get(model, {}).get(key)
    if cached is not None and all(_still_there(model, c) for c in cached.calls[-1:]):
        return cached
    result = _record(model, images[:1])
    layouts = Layouts(tuple(images.shape[-2:]))
    for call in result.calls:
        call.kind = layouts.kind(call.shape)
    result.token_counts = layouts.token_counts()
    candidates = result.candidates()
    if candidates and candidates[-1].kind.layout != "tokens":
        result.default = candidates[-1].name
    elif candidates:  # a transformer: the last token layer of that width whose patch tokens matter
        width = candidates[-1].kind.channels
        tokens = {c.name: c.kind for c in candidates if c.kind.layout == "tokens" and c.kind.channels == width}
        result.default = token_default(model, images[:1], tokens)
        result.no_default = NO_GRADIENT
    _PROBES.setdefault(model, {})[key] = result
    return result


def _record(model: nn.Module, image: torch.Tensor) -> Probe:
    result = Probe()

    def recorder(name: str):
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            result.calls.append(LayerCall(name, module, shape))

        return hook

    def on_pool() -> None:
        result.pooled_after = len(result.calls)

    handles = [m.register_forward_hook(recorder(name)) for name, m in model.named_modules() if name]
    try:
        with torch.no_grad(), PoolSpy(on_pool):
            model(image)
    finally:
        for h in handles:
            h.remove()
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
    kind: MapKind | None = None  # its output's layout; None: already [B,C,h,w]

    def to_grid(self, output: torch.Tensor) -> torch.Tensor:
        """The layer's output (or its gradient) as a feature map [B,C,h,w]:
        what every CAM-family method works on. NHWC maps are permuted; token
        layers lose their prefix tokens (class, distillation, registers) and
        the patch tokens are laid out on their grid. Take gradients with
        respect to the captured output first, then call this on both."""
        return output if self.kind is None else self.kind.to_grid(output)


def resolve_layer(model: nn.Module, images: torch.Tensor, name: str | None, method: str) -> Layer:
    """The module to explain: `name`, or the default from the probe."""
    found = probe(model, images)
    if name is None:
        try:
            name = found.default_layer()
        except NotApplicable as exc:
            raise NotApplicable(f"{method}: {exc}") from None
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
    if call.kind is None:
        raise SaliencyError(f"{method}: layer {name!r} outputs {list(call.shape or [])}, not a 4-D feature map "
                            "[B,C,H,W], an NHWC map or patch tokens [B,N,C]; `saliency layers` lists the candidates")
    if call.kind.grid == (1, 1) and f"1x1 {name}" not in found.noted:
        found.noted.add(f"1x1 {name}")
        log.warning("%s: layer %r outputs a 1x1 map (a global pooling?), so the map is constant over the image; "
                    "choose a layer before the pooling (`saliency layers` lists them)", method, name)
    calls = found.count(name)
    if calls > 1 and name not in found.noted:  # once per model and input shape
        found.noted.add(name)
        log.info("%s: layer %r runs %d times per forward pass; explaining its last call (output %s)",
                 method, name, calls, call.kind.describe())
    return Layer(name, module, calls, None if call.kind.layout == "nchw" else call.kind)


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
    output: str = ""  # the output as a feature map: "768x7x7", "768x7x7 (NHWC)", "768 x 14x14 tokens (+1 prefix)"


def list_layers(model: nn.Module, images: torch.Tensor) -> list[LayerRow]:
    """Candidate layers for grad-cam: every module whose output is a feature
    map (NCHW, NHWC or patch tokens), in the order they run, the default marked."""
    with model_guard(model):
        found = probe(model, images)
    return [LayerRow(c.name, type(c.module).__name__, c.shape, found.count(c.name), c.name == found.default,
                     c.kind.describe()) for c in found.feature_maps()]
