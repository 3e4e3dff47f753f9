"""Guided Grad-CAM (Selvaraju et al. 2017): guided backpropagation times the
upsampled Grad-CAM map, per channel, then reduced.

One forward pass serves both: the activation rule is switched between the
two backward passes, plain for the gradient to the layer (Grad-CAM uses the
true gradient) and guided for the gradient to the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hooks import activation_rules
from .grad_cam import grad_cam_map, layer_gradient
from .layers import last_output, layer_output, resolve_layer, upsample
from .registry import Attribution, LayerParams, PixelParams, as_logits, class_score, register, select_targets


@dataclass
class GuidedGradCamParams(LayerParams, PixelParams):
    """reduce, then layer (as grad-cam's)."""


@register(
    "guided-grad-cam",
    summary="Guided backprop times the upsampled Grad-CAM map: fine detail, class-discriminative",
    paper="Selvaraju et al. 2017, arXiv:1610.02391",
    params=GuidedGradCamParams,
)
def guided_grad_cam(model, images, targets, params):
    layer = resolve_layer(model, images, params.layer, "guided-grad-cam")
    x = images.detach().requires_grad_(True)
    with torch.enable_grad(), layer_output(layer) as outputs, \
            activation_rules("plain", "guided-grad-cam") as rules:
        logits = as_logits(model(x), x.shape[0])
    features = last_output(outputs, layer, "guided-grad-cam")
    targets = select_targets(logits, targets)
    score = class_score(logits, targets)
    grads = layer_gradient(score, features, layer.name, retain_graph=True)
    rules.rule = "guided"
    (guided,) = torch.autograd.grad(score, x)
    cam = upsample(grad_cam_map(layer.to_grid(features.detach()), layer.to_grid(grads)), tuple(images.shape[-2:]))
    return Attribution(guided * cam[:, None], logits.detach(), targets)
