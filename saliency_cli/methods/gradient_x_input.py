"""Gradient x input (Shrikumar et al. 2016): x * d y_c / d x, signed.

`gradient: guided` multiplies guided backpropagation instead of the plain
gradient by the input ("Grad x Image" as the method overview describes it)."""

from dataclasses import dataclass
from typing import Literal

from .backprop import input_gradient
from .registry import PixelParams, Reduce, register


@dataclass
class GradientXInputParams(PixelParams):
    reduce: Reduce = "sum"  # signed: the sign says whether a pixel raised or lowered the score
    gradient: Literal["vanilla", "guided"] = "vanilla"


@register(
    "gradient-x-input",
    summary="Input times gradient (signed); gradient: guided uses guided backprop",
    paper="Shrikumar et al. 2016, arXiv:1605.01713",
    params=GradientXInputParams,
)
def gradient_x_input(model, images, targets, params):
    rule = "guided" if params.gradient == "guided" else None
    result = input_gradient(model, images, targets, rule=rule, method="gradient-x-input")
    result.maps = result.maps * images
    return result
