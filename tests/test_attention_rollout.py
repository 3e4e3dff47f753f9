"""Attention rollout against an independent implementation of the formula
(Abnar & Zuidema 2020, with vit-explain's head fusion and discarding): the
attention probabilities computed by hand from the weights, the rollout in
numpy, image by image. And the model left exactly as given."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import saliency_cli as sal
from saliency_cli.errors import NotApplicable, SaliencyError

from .helpers import TinyCNN, assert_same_state, model_state, seeded

timm = pytest.importorskip("timm")

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": 8, "num_classes": 5}


def tv_vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=5)
    return model.eval()


def softmax_attention(q: torch.Tensor, k: torch.Tensor, heads: int) -> np.ndarray:
    """softmax(q k^T / sqrt(d)) per head, [B,heads,N,N], from [B,N,C] queries and keys."""
    b, n, c = q.shape
    q = q.reshape(b, n, heads, c // heads).transpose(1, 2)
    k = k.reshape(b, n, heads, c // heads).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-2, -1) / (c // heads) ** 0.5, dim=-1).double().numpy()


def tv_attentions(model, x) -> list[np.ndarray]:
    """torchvision ViT: each block's attention from its in_proj weights."""
    with torch.no_grad():
        tokens = model._process_input(x)
        tokens = torch.cat([model.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + model.encoder.pos_embedding
        found = []
        for block in model.encoder.layers:
            h = block.ln_1(tokens)
            attention = block.self_attention
            q, k, _ = F.linear(h, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
            found.append(softmax_attention(q, k, attention.num_heads))
            tokens = block(tokens)
    return found


def timm_attentions(model, x) -> list[np.ndarray]:
    """timm ViT: each block's attention from its qkv weights."""
    with torch.no_grad():
        tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        found = []
        for block in model.blocks:
            q, k, _ = block.attn.qkv(block.norm1(tokens)).chunk(3, dim=-1)
            found.append(softmax_attention(q, k, block.attn.num_heads))
            tokens = block(tokens)
    return found


def reference_rollout(attentions, fusion, ratio, prefix, class_token, grid):
    """The formula, one image at a time, in numpy."""
    maps = []
    for image in range(attentions[0].shape[0]):
        n = attentions[0].shape[-1]
        result = np.eye(n)
        for layer in attentions:
            fused = {"mean": np.mean, "max": np.max, "min": np.min}[fusion](layer[image], axis=0).copy()
            flat = fused.reshape(-1)  # a view: zeroing it zeroes `fused`
            lowest = np.argsort(flat, kind="stable")[: int(flat.size * ratio)]
            flat[[i for i in lowest if not (class_token and i == 0)]] = 0
            a = (fused + np.eye(n)) / 2
            a = a / a.sum(axis=1, keepdims=True)
            result = a @ result
        row = result[0] if class_token else result.mean(axis=0)
        maps.append(row[prefix:].reshape(grid))
    return torch.tensor(np.stack(maps), dtype=torch.float32)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("ratio", [0.0, 0.9])
def test_rollout_on_torchvision_vit_equals_the_formula(fusion, ratio):
    model = tv_vit()
    x = torch.randn(2, 3, 32, 32)
    got = sal.attribute(model, x, "attention-rollout", head_fusion=fusion, discard_ratio=ratio, upsample=False)
    want = reference_rollout(tv_attentions(model, x), fusion, ratio, prefix=1, class_token=True, grid=(4, 4))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    up = sal.attribute(model, x, "attention-rollout", head_fusion=fusion, discard_ratio=ratio)
    torch.testing.assert_close(up, F.interpolate(want[:, None], size=(32, 32), mode="bilinear",
                                                 align_corners=False)[:, 0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("name", "kwargs", "prefix", "class_token"), [
    ("deit_tiny_distilled_patch16_224", {}, 2, True),  # class and distillation tokens
    ("vit_tiny_patch16_224", {"reg_tokens": 4}, 5, True),  # class and 4 register tokens
    ("vit_tiny_patch16_224", {"reg_tokens": 4, "class_token": False, "global_pool": "avg"}, 4, False),
    ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}, 0, False),  # no prefix at all
])
def test_rollout_on_timm_vits_equals_the_formula(name, kwargs, prefix, class_token):
    torch.manual_seed(0)
    model = timm.create_model(name, **TINY, **kwargs).eval()
    assert model.num_prefix_tokens == prefix
    x = torch.randn(2, 3, 32, 32)
    got = sal.attribute(model, x, "attention-rollout", upsample=False)
    want = reference_rollout(timm_attentions(model, x), "mean", 0.9, prefix, class_token, grid=(4, 4))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    both = sal.attribute(model, x, "attention-rollout", head_fusion="max")
    singles = torch.cat([sal.attribute(model, x[i:i + 1], "attention-rollout", head_fusion="max") for i in range(2)])
    torch.testing.assert_close(both, singles, rtol=1e-5, atol=1e-7)


def test_the_model_is_left_exactly_as_given():
    torch.manual_seed(0)
    tv = tv_vit().train()
    fused = timm.create_model("vit_tiny_patch16_224", **TINY)
    unfused = timm.create_model("vit_tiny_patch16_224", **TINY)
    for module in unfused.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    for model in (tv, fused, unfused):
        flags = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
        before = model_state(model)
        sal.attribute(model, torch.randn(2, 3, 32, 32), "attention-rollout")
        assert_same_state(before, model_state(model))
        assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == flags
    assert {m.fused_attn for m in fused.modules() if hasattr(m, "fused_attn")} == {True}


def test_multihead_attention_answers_its_caller_as_asked():
    from saliency_cli.methods.attention import attention_probabilities

    torch.manual_seed(0)
    attention = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        plain = attention(x, x, x, need_weights=False)
        averaged = attention(x, x, x)
        with attention_probabilities(attention) as probs:
            inside_plain = attention(x, x, x, need_weights=False)
            inside_averaged = attention(x, x, x)
    assert inside_plain[1] is None and plain[1] is None
    torch.testing.assert_close(inside_plain[0], plain[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inside_averaged[1], averaged[1])
    assert len(probs) == 2 and probs[0].shape == (2, 2, 5, 5)
    torch.testing.assert_close(probs[1].mean(dim=1), averaged[1])


def test_models_without_global_attention_are_not_applicable():
    with pytest.raises(NotApplicable, match="this model has none"):
        sal.attribute(seeded(TinyCNN(), 0).eval(), torch.randn(1, 3, 12, 12), "attention-rollout")
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=32, window_size=4, embed_dim=16,
                             depths=(1, 1), num_heads=(1, 2)).eval()
    with pytest.raises(NotApplicable, match="within windows"):
        sal.attribute(swin, torch.randn(1, 3, 32, 32), "attention-rollout")


def test_discard_ratio_is_checked():
    with pytest.raises(SaliencyError, match="discard_ratio must be in"):
        sal.attribute(tv_vit(), torch.randn(1, 3, 32, 32), "attention-rollout", discard_ratio=1.0)
