"""Vanilla gradient (Simonyan, Vedaldi & Zisserman 2014, "Deep Inside
Convolutional Networks"): M = |d y_c / d x|, max over colour channels."""

from dataclasses import dataclass

from .backprop import input_gradient
from .registry import PixelParams, register


@dataclass
class GradientParams(PixelParams):
    pass


@register(
    "gradient",
    summary="Vanilla gradient of the class logit with respect to the input pixels",
    paper="Simonyan et al. 2014, arXiv:1312.6034",
    params=GradientParams,
)
def gradient(model, images, targets, params):
    return input_gradient(model, images, targets)
