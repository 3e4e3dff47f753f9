"""Grad-CAM (Selvaraju et al. 2017): alpha_k = mean_ij d y_c / d A_k,
M = ReLU(sum_k alpha_k A_k), bilinearly upsampled to the input size.

Only the gradient to the layer is computed: the input needs no gradient and
the parameters are frozen during the call, so the backward pass stops at the
layer (cheaper than a forward + backward to the input).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import SaliencyError
from .layers import last_output, layer_output, resolve_layer, upsample
from .registry import Attribution, LayerParams, as_logits, class_score, register, select_targets


@dataclass
class GradCamParams(LayerParams):
    # layer: dotted module name; null: the last feature map before global pooling
    upsample: bool = True  # false: the map at the layer's resolution


def grad_cam_map(features: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k alpha_k A_k) with alpha_k the spatial mean of dy/dA_k."""
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    return F.relu((alpha * features).sum(dim=1))


def layer_gradient(score: torch.Tensor, features: torch.Tensor, name: str, **kwargs) -> torch.Tensor:
    (grads,) = torch.autograd.grad(score, features, allow_unused=True, **kwargs)
    if grads is None:
        raise SaliencyError(f"the class score does not depend on layer {name!r}; choose another layer")
    return grads


@register(
    "grad-cam",
    summary="Gradient-weighted class activation map of a layer (default: the last feature map)",
    paper="Selvaraju et al. 2017, arXiv:1610.02391",
    params=GradCamParams,
    pixel_space=False,
)
def grad_cam(model, images, targets, params):
    layer = resolve_layer(model, images, params.layer, "grad-cam")
    with torch.enable_grad(), layer_output(layer) as outputs:
        logits = as_logits(model(images), images.shape[0])
    features = last_output(outputs, layer, "grad-cam")
    targets = select_targets(logits, targets)
    grads = layer_gradient(class_score(logits, targets), features, layer.name)
    maps = grad_cam_map(layer.to_grid(features.detach()), layer.to_grid(grads))
    if params.upsample:
        maps = upsample(maps, tuple(images.shape[-2:]))
    return Attribution(maps, logits.detach(), targets)
