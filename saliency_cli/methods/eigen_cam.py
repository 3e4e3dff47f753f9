"""Eigen-CAM (Muhammad & Yeasin 2020): the layer's feature map projected on
its first principal component. Class-agnostic, one forward, no gradient.

For one image, with A the layer output as an [h*w, K] matrix (a row per
position) centred per channel (A - mean over positions, as pytorch-grad-cam
does; the paper's matrix is uncentred), and V_1 its first right singular
vector:

    M = A_centred V_1, reshaped to [h,w], bilinearly upsampled to the input size.

Sign rule: a singular vector's sign is arbitrary (numpy's and torch's SVDs
may return either), so V_1 is taken with sum_k V_1k >= 0. Equivalently, M
correlates non-negatively with the channel mean of the centred map: the
positions where the features are strongest overall come out positive.
pytorch-grad-cam applies no sign rule (its maps flip with the SVD's choice)
and clips negatives; this map is raw (signed, no ReLU). The first singular
pair comes from the smaller Gram matrix (see `principal_projection`), for
the whole batch at once on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layer_pass import CamLayerParams, finish, layer_pass
from .registry import Attribution, register


@dataclass
class EigenCamParams(CamLayerParams):
    pass


def principal_projection(features: torch.Tensor) -> torch.Tensor:
    """[B,K,h,w] -> [B,h,w]: the centred map on its first principal component, sign fixed.

    With C the centred [P = h*w, K] matrix of an image and C = U S V^T its
    SVD, the map is C V_1 = S_1 U_1. Only that first singular pair is needed,
    so it comes from the top eigenvector of the smaller Gram matrix, C C^T
    [P,P] (then M = sqrt(lambda_1) U_1) or C^T C [K,K] (then V_1 and M = C V_1),
    by a batched `eigh` in float64: at a last feature map (P = 49, K = 1280)
    that is a 49 x 49 problem instead of an SVD of 49 x 1280.
    """
    batch, _, height, width = features.shape
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    rows = features.to(dtype).flatten(2).transpose(1, 2)  # [B, P, K]
    centred = rows - rows.mean(dim=1, keepdim=True)
    positions, channels = centred.shape[1:]
    if positions <= channels:
        values, vectors = torch.linalg.eigh((centred @ centred.transpose(1, 2)).double())
        u1 = vectors[:, :, -1].to(dtype)  # eigh sorts ascending: the last is the largest
        maps = u1 * values[:, -1:].clamp(min=0).sqrt().to(dtype)
        v1_sum = (centred.sum(dim=2) * u1).sum(dim=1)  # sum_k V_1k, times S_1 >= 0
    else:
        _, vectors = torch.linalg.eigh((centred.transpose(1, 2) @ centred).double())
        v1 = vectors[:, :, -1].to(dtype)
        maps = (centred @ v1[:, :, None])[:, :, 0]
        v1_sum = v1.sum(dim=1)
    maps = torch.where(v1_sum[:, None] < 0, -maps, maps)
    return maps.view(batch, height, width)


@register(
    "eigen-cam",
    summary="The layer's feature map on its first principal component (class-agnostic, no gradient)",
    paper="Muhammad & Yeasin 2020, arXiv:2008.00299",
    params=EigenCamParams,
    pixel_space=False,
    style="minmax",  # signed projection with no natural zero for display
)
def eigen_cam(model, images, targets, params):
    found = layer_pass(model, images, targets, params.layer, "eigen-cam", gradient=False)
    maps = principal_projection(found.features)
    return Attribution(finish(maps, images, params), found.logits, found.targets)
