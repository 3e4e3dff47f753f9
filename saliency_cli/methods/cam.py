"""Class Activation Mapping (Zhou et al. 2016, "Learning Deep Features for
Discriminative Localization"): for a network ending in global average
pooling and a linear layer, M_c = sum_k w_k^c A_k on the last feature map A,
bilinearly upsampled to the input size. Raw: no ReLU, no bias, no scaling.

The head is found from the forward pass itself (no extra pass): the input of
the last global average pooling is A, and the weights are those of the
linear layer (or 1x1 convolution) that turns the pooled vector into the
logits. A 1x1 convolution before the pooling (conv -> GAP -> logits) works
too, and so does a head pooling an NHWC map (`x.mean((1, 2))`: timm's
Swin). Anything else between the pooling and the logits (an MLP, a
LayerNorm) makes CAM undefined: `has_cam_head`, the method's declared need, says so
before a run starts (`-m all` skips CAM, naming why), and the error says to
use grad-cam.

Finding the head watches every call of the forward pass, which costs time
(benchmarks/run.py measured 1.15x a forward on EfficientNet-Lite0), so it
is done once per model and input shape: the plan remembers which module
outputs A and the head's weights. Later calls only hook that module, and
check the plan against the logits (W mean(A) + b must give them) before
trusting it; a failed check falls back to finding the head again.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import NotApplicable
from ..hooks import capture_outputs
from .layers import upsample
from .pooling import PoolSpy
from .registry import Attribution, as_logits, register, select_targets


@dataclass
class CamParams:
    upsample: bool = True  # false: the map at the feature map's resolution


class _LastCall:
    """The most recent call of any module of a kind: (module, input, output),
    with the tensors' versions, since an in-place operation after the call
    (an in-place ReLU after a 1x1 conv) would change what was recorded."""

    def __init__(self) -> None:
        self.module: nn.Module | None = None
        self.input: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self.versions: tuple[int, int] = (0, 0)

    def hook(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        if isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
            self.module, self.input, self.output = module, inputs[0], output
            self.versions = (inputs[0]._version, output._version)

    def unchanged(self) -> bool:
        return self.module is not None and (self.input._version, self.output._version) == self.versions


@dataclass
class CamHead:
    features: torch.Tensor  # A [B,C,h,w]
    weight: torch.Tensor  # W [K,C]
    bias: torch.Tensor | None  # the head's bias, for checking a plan


@dataclass
class _Plan:
    """Where A and W come from, for one model and input shape."""

    module: nn.Module  # its last call outputs A
    calls: int
    weight: torch.Tensor
    bias: torch.Tensor | None
    nhwc: bool = False  # the module outputs A as [B,h,w,C] (timm's Swin)

    def features(self, output: Any) -> Any:
        return output.permute(0, 3, 1, 2) if self.nhwc and isinstance(output, torch.Tensor) else output

    def explains(self, features: Any, logits: torch.Tensor) -> bool:
        """W mean(A) + b reproduces the logits: the plan still holds."""
        if not isinstance(features, torch.Tensor) or features.dim() != 4 or features.shape[1] != self.weight.shape[1]:
            return False
        expected = features.float().mean(dim=(2, 3)) @ self.weight.T.float()
        if self.bias is not None:
            expected = expected + self.bias.float()
        scale = float(logits.abs().max()) + 1e-6
        tolerance = 1e-3 if logits.dtype == torch.float32 else 3e-2  # autocast: 8-bit mantissas
        return torch.allclose(expected, logits.float(), rtol=tolerance, atol=tolerance * scale)


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextmanager
def watch_head(model: nn.Module) -> Iterator[Any]:
    """Hooks on every module plus a pooling spy for the duration of one
    forward; `find(logits)` then identifies the CAM head and plans later calls."""
    linear, conv = _LastCall(), _LastCall()
    outputs: dict[int, tuple[nn.Module, Any, int]] = {}  # the last output of every module
    calls: dict[int, int] = {}

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        version = output._version if isinstance(output, torch.Tensor) else 0
        outputs[id(module)] = (module, output, version)

    handles = []
    for m in model.modules():
        if m is not model:
            handles.append(m.register_forward_hook(record))
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear.hook))
        elif isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1:
            handles.append(m.register_forward_hook(conv.hook))
    spy = PoolSpy()

    def find(logits: torch.Tensor) -> CamHead:
        head = _find(spy, linear, conv, logits)
        nhwc = spy.avg_nhwc and head.features is spy.avg_input
        given = spy.avg_given if nhwc else head.features
        for module, output, version in outputs.values():
            if output is given and output._version == version:
                _PLANS[model] = _Plan(module, calls[id(module)], head.weight, head.bias, nhwc)
                break
        return head

    try:
        with spy:
            yield find
    finally:
        for h in handles:
            h.remove()


def _same(a: Any, b: Any) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.numel() == b.numel()
            and torch.allclose(a.reshape(b.shape), b, rtol=1e-4, atol=1e-5))


def _find(spy: PoolSpy, linear: _LastCall, conv: _LastCall, logits: torch.Tensor) -> CamHead:
    if spy.avg_input is None:
        raise NotApplicable("cam needs a global average pooling followed by a linear layer, and this "
                            "model pools no feature map globally; use grad-cam, which works with any head")
    features, pooled = spy.avg_input, spy.avg_output.flatten(1)
    if linear.unchanged() and _same(linear.output, logits) and _same(linear.input, pooled):
        return CamHead(features, linear.module.weight, linear.module.bias)  # GAP -> linear
    if conv.unchanged():
        weight, bias = conv.module.weight[:, :, 0, 0], conv.module.bias
        if _same(conv.output, logits) and _same(conv.input, pooled):
            return CamHead(features, weight, bias)  # GAP -> 1x1 conv
        if _same(pooled, logits) and _same(conv.output, features):
            return CamHead(conv.input, weight, bias)  # 1x1 conv -> GAP
    raise NotApplicable("cam needs the logits to be a linear function of the globally average-pooled "
                        "last feature map (GAP + linear, or a 1x1-conv head); this model has other layers "
                        "between the pooling and the logits. Use grad-cam, which works with any head")


def _planned_forward(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, CamHead] | None:
    """The forward pass with only the planned module hooked, if a plan holds."""
    plan = _PLANS.get(model)
    if plan is None:
        return None
    with torch.no_grad(), capture_outputs(plan.module) as outputs:
        logits = as_logits(model(images), images.shape[0])
    features = plan.features(outputs[-1]) if len(outputs) == plan.calls else None
    if not plan.explains(features, logits):
        del _PLANS[model]
        return None
    return logits, CamHead(features, plan.weight, plan.bias)


def has_cam_head(model: nn.Module, images: torch.Tensor, params: Any) -> None:
    """CAM's need: a GAP + linear (or 1x1-conv) head, found on a probe image."""
    with torch.no_grad(), watch_head(model) as find:
        logits = as_logits(model(images), images.shape[0])
    find(logits)


@register(
    "cam",
    summary="Class activation map: the classifier's weights applied to the last feature map",
    paper="Zhou et al. 2016, arXiv:1512.04150",
    params=CamParams,
    pixel_space=False,
    style="minmax",
    needs=(has_cam_head,),
)
def cam(model, images, targets, params):
    planned = _planned_forward(model, images)
    if planned is None:
        with torch.no_grad(), watch_head(model) as find:
            logits = as_logits(model(images), images.shape[0])
        head = find(logits)
    else:
        logits, head = planned
    targets = select_targets(logits, targets)
    maps = torch.einsum("bk,bkhw->bhw", head.weight[targets].to(head.features.dtype), head.features)
    if params.upsample:
        maps = upsample(maps, tuple(images.shape[-2:]))
    return Attribution(maps, logits, targets)
