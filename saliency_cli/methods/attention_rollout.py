"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in
Transformers"): how much each input patch flows into the class token through
the attention of every layer, residual connections included.

Per layer l, the attention probabilities A_l [heads,N,N] are fused over the
heads (`head_fusion`: mean, max or min); as in the reference code
(jacobgil/vit-explain) the lowest `discard_ratio` share of the fused
matrix's entries is set to zero, except the class token's attention to
itself; then the residual is added and the rows are re-normalised:
W_l = (fused + I) / 2, rows divided by their sums. The rollout is the
product R = W_L ... W_1, and the map is the class token's row of R over the
patch tokens, laid out on the patch grid and bilinearly upsampled. Models
without a class token (average-pooled, perhaps with register tokens) get
the mean of R's rows instead: the attention each patch receives from all
tokens. The map is the same for every class.

Where this differs from vit-explain: the rows are re-normalised (its
`a / a.sum(dim=-1)` broadcasts the row sums over the columns), every image
of a batch is handled (it discards entries of the first image only), every
prefix token is dropped from the map (it drops the first), and the map is
raw, not divided by its maximum (the PNG is scaled to the maximum anyway).

The attention probabilities are read for the call only (attention.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..errors import NotApplicable, SaliencyError
from .attention import attention_probabilities, has_attention_modules
from .feature_maps import MapKind
from .layers import probe, upsample
from .registry import Attribution, as_logits, register, select_targets


@dataclass
class AttentionRolloutParams:
    head_fusion: Literal["mean", "max", "min"] = "mean"  # how the heads of a layer are combined
    discard_ratio: float = 0.9  # share of each fused attention matrix's lowest entries set to zero
    upsample: bool = True  # false: the map on the patch grid

    def check(self) -> None:
        if not 0 <= self.discard_ratio < 1:
            raise SaliencyError(f"attention-rollout: discard_ratio must be in [0, 1), got {self.discard_ratio}")


def rollout(attentions: list[torch.Tensor], head_fusion: str, discard_ratio: float, keep_first: bool) -> torch.Tensor:
    """R = W_L ... W_1 [B,N,N] from the layers' probabilities [B,heads,N,N]."""
    batch, _, n, _ = attentions[0].shape
    eye = torch.eye(n, device=attentions[0].device)
    result = eye.expand(batch, n, n)
    for attention in attentions:
        attention = attention.float()
        fused = {"mean": attention.mean, "max": attention.amax, "min": attention.amin}[head_fusion](dim=1)
        fused = discard(fused, discard_ratio, keep_first)
        weights = (fused + eye) / 2
        result = (weights / weights.sum(dim=-1, keepdim=True)) @ result
    return result


def discard(fused: torch.Tensor, ratio: float, keep_first: bool) -> torch.Tensor:
    """Zero the lowest `ratio` share of each image's entries (ties: any of
    them), except entry (0, 0), the class token's attention to itself."""
    flat = fused.reshape(fused.shape[0], -1)
    count = int(flat.shape[1] * ratio)
    if count == 0:
        return fused
    drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(count, dim=1, largest=False).indices, True)
    if keep_first:
        drop[:, 0] = False
    return flat.masked_fill(drop, 0.0).view_as(fused)


def rollout_map(result: torch.Tensor, kind: MapKind, class_token: bool) -> torch.Tensor:
    """[B,h,w]: the class token's row over the patches, or the mean row."""
    rows = result[:, 0] if class_token else result.mean(dim=1)
    return rows[:, kind.prefix:].reshape(result.shape[0], *kind.grid)


def _token_layout(model: nn.Module, images: torch.Tensor, attentions: list[torch.Tensor]) -> MapKind:
    """The patch grid of the tokens every attention layer attends over;
    NotApplicable where rollout is undefined."""
    if not attentions:
        why = ("its attention modules computed no attention probabilities" if has_attention_modules(model)
               else "this model has none")
        raise NotApplicable("attention-rollout needs self-attention layers (torchvision nn.MultiheadAttention, "
                            f"timm attention modules); {why}")
    batch = images.shape[0]
    shapes = {tuple(a.shape[-2:]) for a in attentions}
    if any(a.shape[0] != batch for a in attentions):
        raise NotApplicable("attention-rollout needs attention over all the tokens of an image; this model attends "
                            "within windows (Swin-style), where the rollout of attention is not defined")
    n = attentions[0].shape[-1]
    kind = probe(model, images[:1]).token_kind(n) if shapes == {(n, n)} else None
    if kind is None:
        raise NotApplicable(f"attention-rollout needs every attention layer to attend over the same tokens, a patch "
                            f"grid plus prefix tokens; this model's attention matrices are {sorted(shapes)}")
    return kind


def has_global_attention(model: nn.Module, images: torch.Tensor, params: Any) -> None:
    """attention-rollout's need, checked on a probe image."""
    with torch.no_grad(), attention_probabilities(model) as attentions:
        model(images)
    _token_layout(model, images, attentions)


@register(
    "attention-rollout",
    summary="Attention flow from the patches to the class token through every layer (transformers; class-agnostic)",
    paper="Abnar & Zuidema 2020, arXiv:2005.00928",
    params=AttentionRolloutParams,
    pixel_space=False,
    needs=(has_global_attention,),
)
def attention_rollout(model, images, targets, params):
    with torch.no_grad(), attention_probabilities(model) as attentions:
        logits = as_logits(model(images), images.shape[0])
    targets = select_targets(logits, targets)
    kind = _token_layout(model, images, attentions)
    class_token = bool(getattr(model, "has_class_token", kind.prefix > 0))  # timm says; torchvision ViT has one
    result = rollout(attentions, params.head_fusion, params.discard_ratio, keep_first=class_token)
    maps = rollout_map(result, kind, class_token)
    if params.upsample:
        maps = upsample(maps, tuple(images.shape[-2:]))
    return Attribution(maps, logits, targets)
