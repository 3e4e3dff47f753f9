"""What a layer's output is as a feature map: its layout, read from shapes.

The CAM family works on maps [B,C,h,w]. Layers give them in three layouts:

- `nchw` [B,C,h,w]: convolutional networks (and the PyTorch default);
- `nhwc` [B,h,w,C]: Swin stages, ConvNeXt-style blocks, timm's NHWC outputs;
- `tokens` [B,N,C]: vision transformers, N = prefix + h*w, where the prefix
  tokens come first (torchvision ViT: the class token; timm:
  `num_prefix_tokens`, which counts class, distillation and register tokens)
  and the h*w patch tokens follow in row-major order.

Layouts are read from one probe pass (layers.py) at the input size the run
uses, never assumed: a 4-D output is NHWC when its dims 1-2 are a grid of
the input's proportions and dims 2-3 are not; a token layer's grid is that
of the last map before it with h*w <= N (the patch embedding's output) and
its prefix is the remainder, so any input size the model accepts works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..hooks import model_guard

Layout = Literal["nchw", "nhwc", "tokens"]
MAX_PREFIX = 32  # class + distillation + up to 16 register tokens fit easily


@dataclass(frozen=True)
class MapKind:
    layout: Layout
    channels: int
    grid: tuple[int, int]  # (h, w)
    prefix: int = 0  # tokens only: class, distillation and register tokens before the patches

    def to_grid(self, output: torch.Tensor) -> torch.Tensor:
        """[B,C,h,w] from this layout (a view where possible)."""
        if self.layout == "nhwc":
            return output.permute(0, 3, 1, 2)
        if self.layout == "tokens":
            h, w = self.grid
            patches = output[:, self.prefix:]
            return patches.reshape(output.shape[0], h, w, output.shape[-1]).permute(0, 3, 1, 2)
        return output

    def describe(self) -> str:
        h, w = self.grid
        if self.layout == "tokens":
            extra = f" (+{self.prefix} prefix)" if self.prefix else ""
            return f"{self.channels} x {h}x{w} tokens{extra}"
        return f"{self.channels}x{h}x{w}" + (" (NHWC)" if self.layout == "nhwc" else "")


def _grid_like_input(h: int, w: int, size: tuple[int, int]) -> bool:
    """(h, w) could be the input (H, W) divided by one stride s, within the
    rounding of padded and unpadded layers: |h*W - w*H| <= H + W."""
    height, width = size
    return 1 <= h <= height and 1 <= w <= width and abs(h * width - w * height) <= height + width


def map_kind(shape: Sequence[int], size: tuple[int, int]) -> MapKind:
    """The layout of a 4-D output: NCHW unless only dims 1-2 look like a grid."""
    _, a, b, c = shape
    if _grid_like_input(a, b, size) and not _grid_like_input(b, c, size):
        return MapKind("nhwc", c, (a, b))
    return MapKind("nchw", a, (b, c))


class Layouts:
    """Assigns a MapKind to each output shape of one forward pass, in call
    order: 4-D maps directly, [1,N,C] tokens from the grids seen before them."""

    def __init__(self, size: tuple[int, int]):
        self.size = size
        self.grids: list[tuple[int, int]] = []  # of the 4-D maps so far, in order
        self.tokens: dict[int, tuple[tuple[int, int], int] | None] = {}  # N -> (grid, prefix)

    def kind(self, shape: tuple[int, ...] | None) -> MapKind | None:
        if shape is None or not shape or shape[0] != 1:  # the probe runs one image: dim 0 is the batch
            return None
        if len(shape) == 4:
            kind = map_kind(shape, self.size)
            self.grids.append(kind.grid)
            return kind
        if len(shape) == 3:
            found = self._token_grid(shape[1])
            return None if found is None else MapKind("tokens", shape[2], found[0], found[1])
        return None

    def _token_grid(self, n: int) -> tuple[tuple[int, int], int] | None:
        if n not in self.tokens:
            self.tokens[n] = next(((g, n - g[0] * g[1]) for g in reversed(self.grids)
                                   if 0 <= n - g[0] * g[1] <= MAX_PREFIX and g[0] * g[1] > 1), None)
        return self.tokens[n]

    def token_counts(self) -> set[int]:
        return {n for n, found in self.tokens.items() if found is not None}


# ------------------------------------------------------------------ the default token layer


def token_default(model: nn.Module, image: torch.Tensor, layers: dict[str, MapKind]) -> str | None:
    """The last of `layers` (token layers, in call order) whose patch tokens
    reach the classifier's input, from one forward and backward pass of one
    image. Through a class-token head the last block's patch tokens never do.

    The score is a fixed random projection of the input of the module that
    outputs the logits (its last Linear), not a logit: a randomly initialised
    torchvision ViT has an all-zero head, which no patch token would reach.
    """
    outputs: dict[str, torch.Tensor] = {}
    calls: list[tuple[Any, Any]] = []  # (output, first input) of every call with a 2-D output

    def keep(name: str):
        def hook(_module: nn.Module, inputs: tuple, output: Any) -> None:
            if name in layers:
                outputs[name] = output  # its last call
            if isinstance(output, torch.Tensor) and output.dim() == 2 and inputs:
                calls.append((output, inputs[0]))

        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in model.named_modules() if name]
    try:
        with model_guard(model), torch.enable_grad():
            out = model(image.detach().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
    logits = getattr(out, "logits", out)
    feature = next((x for y, x in calls if y is logits and isinstance(x, torch.Tensor)), logits)
    if not isinstance(feature, torch.Tensor) or not feature.requires_grad:
        return None
    direction = torch.randn(feature.shape, generator=torch.Generator().manual_seed(0)).to(feature)
    names = [n for n in layers if n in outputs and outputs[n].requires_grad]
    grads = torch.autograd.grad((feature * direction).sum(), [outputs[n] for n in names], allow_unused=True)
    carrying = [n for n, g in zip(names, grads) if g is not None and bool(g[:, layers[n].prefix:].abs().amax() > 0)]
    return carrying[-1] if carrying else None
