"""Grad-CAM++ (Chattopadhay et al. 2018): pixel-wise weights for the
gradients, so that several instances of a class all count.

With g = dy_c/dA_k at (i, j) and S_k = sum_ab A_k(a, b) (equation 19 of the
paper, with the logit's own gradient in place of the derivatives of exp(y_c),
as pytorch-grad-cam and torch-cam do):

    alpha_k(i,j) = g^2 / (2 g^2 + S_k g^3)     (0 where g = 0 or the denominator is 0)
    w_k = sum_ij alpha_k(i,j) * ReLU(g)
    M = ReLU(sum_k w_k A_k), bilinearly upsampled to the input size.

No epsilon is added to the denominator (pytorch-grad-cam adds 1e-6). One
forward and one backward to the layer, as Grad-CAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layer_pass import CamLayerParams, finish, layer_pass
from .registry import Attribution, register


@dataclass
class GradCamPlusPlusParams(CamLayerParams):
    pass


def grad_cam_plus_plus_map(features: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """[B,C,h,w] feature map and gradient -> [B,h,w], in float32 at least (g^3 underflows in half precision)."""
    dtype = torch.promote_types(features.dtype, torch.float32)
    a, g = features.to(dtype), grads.to(dtype)
    g2 = g * g
    denominator = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g
    usable = (g != 0) & (denominator != 0)
    alpha = torch.where(usable, g2 / torch.where(usable, denominator, torch.ones_like(denominator)), 0.0)
    weights = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)
    return F.relu((weights * a).sum(dim=1))


@register(
    "grad-cam-plus-plus",
    summary="Grad-CAM with pixel-wise gradient weights (several instances of a class all count)",
    paper="Chattopadhay et al. 2018, arXiv:1710.11063",
    params=GradCamPlusPlusParams,
    pixel_space=False,
)
def grad_cam_plus_plus(model, images, targets, params):
    found = layer_pass(model, images, targets, params.layer, "grad-cam-plus-plus")
    maps = grad_cam_plus_plus_map(found.features, found.grads)
    return Attribution(finish(maps, images, params), found.logits, found.targets)
