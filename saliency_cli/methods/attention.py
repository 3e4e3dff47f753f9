"""Attention probabilities softmax(QK^T / sqrt(d)), for the duration of one call.

Fused attention (`F.scaled_dot_product_attention`, the fast path of
`nn.MultiheadAttention`) never materialises them, so for one forward pass:

- `nn.MultiheadAttention` (torchvision's ViT): a forward pre-hook asks for
  `need_weights=True, average_attn_weights=False`; the forward hook takes the
  per-head weights [B,heads,N,N] and returns what the caller asked for (no
  weights when it asked for none, head-averaged ones when it asked for those);
- timm attention modules (any module with a `fused_attn` flag and an
  `attn_drop` submodule: ViT, DeiT, EVA, Swin's window attention): the flag
  is turned off, so the module computes the softmax itself, and a hook on
  `attn_drop` takes its input.

On exit every hook is removed and every flag restored, also when the forward
pass raises: the model is left exactly as given.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

# nn.MultiheadAttention.forward's parameters after (query, key, value)
_MHA_ARGS = ("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")


class _Weights:
    """Hooks that make one nn.MultiheadAttention return its per-head weights."""

    def __init__(self, probs: list[torch.Tensor]):
        self.probs = probs
        self.asked: list[tuple[bool, bool]] = []  # per call in flight: (need_weights, average_attn_weights)

    def before(self, _module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = {**dict(zip(_MHA_ARGS, args[3:])), **kwargs}
        self.asked.append((kwargs.get("need_weights", True), kwargs.get("average_attn_weights", True)))
        return args[:3], {**kwargs, "need_weights": True, "average_attn_weights": False}

    def after(self, _module: nn.Module, _args: tuple, _kwargs: dict, output: Any) -> Any:
        need, average = self.asked.pop()
        out, weights = output
        self.probs.append(weights)
        return out, (weights.mean(dim=1) if average else weights) if need else None


@contextmanager
def attention_probabilities(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside the block, every attention call of `model` appends its
    probabilities [B*,heads,N,N] to the yielded list (B* = B, or B times the
    number of windows for windowed attention), in call order."""
    probs: list[torch.Tensor] = []
    handles: list[Any] = []
    flags: list[tuple[nn.Module, Any]] = []
    try:
        for module in model.modules():
            if isinstance(module, nn.MultiheadAttention):
                weights = _Weights(probs)
                handles.append(module.register_forward_pre_hook(weights.before, with_kwargs=True))
                handles.append(module.register_forward_hook(weights.after, with_kwargs=True))
            elif hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module):
                flags.append((module, module.fused_attn))
                module.fused_attn = False
                handles.append(module.attn_drop.register_forward_hook(lambda _m, inputs, _out: probs.append(inputs[0])))
        yield probs
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags:
            module.fused_attn = flag


def has_attention_modules(model: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) or (hasattr(m, "fused_attn") and hasattr(m, "attn_drop"))
               for m in model.modules())
