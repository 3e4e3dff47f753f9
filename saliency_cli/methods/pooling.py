"""Global pooling, however it is written: `nn.AdaptiveAvgPool2d`,
`F.adaptive_avg_pool2d`, `avg_pool2d` over the whole map, `x.mean((2, 3))`,
max-pooling alike, and NHWC maps pooled with `x.mean((1, 2))` (timm's Swin
and other NHWC heads). The probe (layers.py) uses it to find the map a
head pools, CAM (cam.py) to find the head itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _is_one(size: Any) -> bool:
    return size == 1 or (isinstance(size, (tuple, list)) and all(s == 1 for s in size))


def _dims(dim: Any) -> set[int]:
    return {d % 4 for d in ({dim} if isinstance(dim, int) else set(dim or ()))}


def global_pool_kind(func: Any, args: tuple, kwargs: dict) -> str | None:
    """'avg' or 'max' when this call pools a [B,C,H,W] map over all of H,W;
    'avg-nhwc' or 'max-nhwc' for a [B,H,W,C] map."""
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
    elif func in (torch.mean, torch.Tensor.mean, torch.amax, torch.Tensor.amax):
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        kind = "avg" if func in (torch.mean, torch.Tensor.mean) else "max"
        if dim is not None and _dims(dim) == {2, 3}:
            return kind
        if dim is not None and _dims(dim) == {1, 2}:
            return f"{kind}-nhwc"
    return None


class PoolSpy(TorchFunctionMode):
    """Remembers the last global average pooling (its input as [B,C,H,W],
    the input as given, and the output) and calls `on_pool` for every global
    pooling."""

    def __init__(self, on_pool=None):
        super().__init__()
        self.on_pool = on_pool
        self.avg_input: torch.Tensor | None = None  # [B,C,H,W] (a permuted view of an NHWC input)
        self.avg_given: torch.Tensor | None = None  # the input as the model passed it
        self.avg_nhwc = False
        self.avg_output: torch.Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        kind = global_pool_kind(func, args, kwargs)
        if kind is not None:
            if kind.startswith("avg"):
                self.avg_nhwc = kind.endswith("nhwc")
                self.avg_given, self.avg_output = args[0], out
                self.avg_input = args[0].permute(0, 3, 1, 2) if self.avg_nhwc else args[0]
            if self.on_pool is not None:
                self.on_pool()
        return out
