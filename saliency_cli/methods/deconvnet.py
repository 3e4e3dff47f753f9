"""DeconvNet (Zeiler & Fergus 2014, "Visualizing and Understanding
Convolutional Networks"), in its gradient form: the backward pass through
every ReLU-family activation is the ReLU of the incoming signal,
dx = relu(dy), whatever the sign of the forward input. Convolutions
backpropagate with transposed filters and max-pooling through its switches,
exactly as the reconstruction path of the paper."""

from dataclasses import dataclass

from .backprop import input_gradient
from .registry import PixelParams, register


@dataclass
class DeconvNetParams(PixelParams):
    pass


@register(
    "deconvnet",
    summary="Zeiler & Fergus reconstruction: backward ReLU applied to the signal, not the input",
    paper="Zeiler & Fergus 2014, arXiv:1311.2901",
    params=DeconvNetParams,
)
def deconvnet(model, images, targets, params):
    return input_gradient(model, images, targets, rule="deconvnet", method="deconvnet")
