"""Guided backpropagation (Springenberg et al. 2015, "Striving for
Simplicity"): through every ReLU-family activation the backward pass keeps
only positive gradients where the forward input was positive,
dx = relu(dy) * [x > 0] (and [x < 6] for ReLU6-style clamps)."""

from dataclasses import dataclass

from .backprop import input_gradient
from .registry import PixelParams, register


@dataclass
class GuidedBackpropParams(PixelParams):
    pass


@register(
    "guided-backprop",
    summary="Gradient with negative signals stopped at every ReLU, forward and backward",
    paper="Springenberg et al. 2015, arXiv:1412.6806",
    params=GuidedBackpropParams,
)
def guided_backprop(model, images, targets, params):
    return input_gradient(model, images, targets, rule="guided", method="guided-backprop")
