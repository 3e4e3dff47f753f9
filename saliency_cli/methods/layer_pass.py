"""The pass the newer CAM-family methods share (Grad-CAM++, LayerCAM,
Score-CAM, Eigen-CAM): one forward with the layer's output captured, and for
the gradient-weighted ones the gradient of the class logit with respect to
that output, both turned into feature maps [B,C,h,w] by `Layer.to_grid`.

The layer is found exactly as Grad-CAM finds it (`resolve_layer`), so the
default layer, reused modules and whatever layouts `to_grid` understands
behave the same for every method of the family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .grad_cam import layer_gradient
from .layers import last_output, layer_output, resolve_layer, upsample
from .registry import LayerParams, as_logits, class_score, select_targets


@dataclass
class CamLayerParams(LayerParams):
    # layer: dotted module name; null: the last feature map before global pooling (as grad-cam)
    upsample: bool = True  # false: the map at the layer's resolution


@dataclass
class LayerPass:
    features: torch.Tensor  # A [B,C,h,w], detached
    grads: torch.Tensor | None  # dy_c/dA [B,C,h,w], when asked for
    logits: torch.Tensor  # [B,K], detached
    targets: torch.Tensor  # [B]


def layer_pass(model, images: torch.Tensor, targets: torch.Tensor | None, layer_name: str | None,
               method: str, *, gradient: bool = True) -> LayerPass:
    """Forward once; A and (with `gradient`) dy_c/dA as feature maps.

    The forward runs with gradients enabled even when none is taken: the
    capture then hands a copy of the output to the rest of the model, so an
    in-place operation after the layer cannot change the captured A. The
    backward, when asked for, stops at the layer (never reaches the input).
    """
    layer = resolve_layer(model, images, layer_name, method)
    with torch.enable_grad(), layer_output(layer) as outputs:
        logits = as_logits(model(images), images.shape[0])
    features = last_output(outputs, layer, method)
    targets = select_targets(logits, targets)
    grads = None
    if gradient:  # the gradient with respect to the captured output first, then to_grid
        grads = layer.to_grid(layer_gradient(class_score(logits, targets), features, layer.name))
    return LayerPass(layer.to_grid(features.detach()), grads, logits.detach(), targets)


def finish(maps: torch.Tensor, images: torch.Tensor, params: CamLayerParams) -> torch.Tensor:
    """[B,h,w] -> [B,H,W] by bilinear upsampling, unless `upsample` is off."""
    return upsample(maps, tuple(images.shape[-2:])) if params.upsample else maps
