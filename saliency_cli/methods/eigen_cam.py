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
and clips negatives; this map is raw (signed, no ReLU). The SVDs of a batch
run as one batched `torch.linalg.svd` on the device, in float32.
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
    """[B,K,h,w] -> [B,h,w]: the centred map on its first principal component, sign fixed."""
    batch, _, height, width = features.shape
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    rows = features.to(dtype).flatten(2).transpose(1, 2)  # [B, h*w, K]
    centred = rows - rows.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    v1 = vh[:, 0]  # [B, K]
    v1 = torch.where(v1.sum(dim=1, keepdim=True) < 0, -v1, v1)
    return (centred @ v1[:, :, None])[:, :, 0].view(batch, height, width)


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
