"""Class Activation Mapping (Zhou et al. 2016, "Learning Deep Features for
Discriminative Localization"): for a network ending in global average
pooling and a linear layer, M_c = sum_k w_k^c A_k on the last feature map A,
bilinearly upsampled to the input size. Raw: no ReLU, no bias, no scaling.

The head is found from the forward pass itself (no extra pass): the input of
the last global average pooling is A, and the weights are those of the
linear layer (or 1x1 convolution) that turns the pooled vector into the
logits. A 1x1 convolution before the pooling (conv -> GAP -> logits) works
too. Anything else between the pooling and the logits (an MLP, a LayerNorm)
makes CAM undefined, and the error says to use grad-cam.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import SaliencyError
from .layers import PoolSpy, upsample
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
    module: str  # description for messages


@contextmanager
def watch_head(model: nn.Module) -> Iterator[Any]:
    """Hooks on linear layers and 1x1 convolutions plus a pooling spy for the
    duration of one forward; `find()` then identifies the CAM head."""
    linear, conv = _LastCall(), _LastCall()
    handles = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear.hook))
        elif isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1:
            handles.append(m.register_forward_hook(conv.hook))
    spy = PoolSpy()
    try:
        with spy:
            yield lambda logits: _find(spy, linear, conv, logits)
    finally:
        for h in handles:
            h.remove()


def _same(a: Any, b: Any) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.numel() == b.numel()
            and torch.allclose(a.reshape(b.shape), b, rtol=1e-4, atol=1e-5))


def _find(spy: PoolSpy, linear: _LastCall, conv: _LastCall, logits: torch.Tensor) -> CamHead:
    if spy.avg_input is None:
        raise SaliencyError("cam needs a global average pooling followed by a linear layer, and this "
                            "model pools no feature map globally; use grad-cam, which works with any head")
    features, pooled = spy.avg_input, spy.avg_output.flatten(1)
    if linear.unchanged() and _same(linear.output, logits) and _same(linear.input, pooled):
        return CamHead(features, linear.module.weight, "linear")  # GAP -> linear
    if conv.unchanged():
        weight = conv.module.weight[:, :, 0, 0]
        if _same(conv.output, logits) and _same(conv.input, pooled):
            return CamHead(features, weight, "1x1 conv")  # GAP -> 1x1 conv
        if _same(pooled, logits) and _same(conv.output, features):
            return CamHead(conv.input, weight, "1x1 conv")  # 1x1 conv -> GAP
    raise SaliencyError("cam needs the logits to be a linear function of the globally average-pooled "
                        "last feature map (GAP + linear, or a 1x1-conv head); this model has other layers "
                        "between the pooling and the logits. Use grad-cam, which works with any head")


@register(
    "cam",
    summary="Class activation map: the classifier's weights applied to the last feature map",
    paper="Zhou et al. 2016, arXiv:1512.04150",
    params=CamParams,
    pixel_space=False,
    style="minmax",
)
def cam(model, images, targets, params):
    with torch.no_grad(), watch_head(model) as find:
        logits = as_logits(model(images), images.shape[0])
    targets = select_targets(logits, targets)
    head = find(logits)
    maps = torch.einsum("bk,bkhw->bhw", head.weight[targets].to(head.features.dtype), head.features)
    if params.upsample:
        maps = upsample(maps, tuple(images.shape[-2:]))
    return Attribution(maps.float(), logits, targets)
