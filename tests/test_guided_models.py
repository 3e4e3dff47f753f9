"""Guided backprop and DeconvNet on real architectures: every ReLU-family
call must be reached (modules, reused modules, in-place, functional, ReLU6)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import saliency_cli as sal

from .helpers import cosine
from .reference import gradient, guided_backprop


def build(name: str):
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval()


def test_resnet18_equals_captum():
    from captum.attr import Deconvolution, GuidedBackprop

    model = build("resnet18")
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([3, 7])
    torch.testing.assert_close(sal.attribute(model, x, "guided-backprop", targets=t, reduce="none"),
                               GuidedBackprop(model).attribute(x, target=t))
    torch.testing.assert_close(sal.attribute(model, x, "deconvnet", targets=t, reduce="none"),
                               Deconvolution(model).attribute(x, target=t))


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "mobilenet_v2"])
def test_torchvision_models_equal_the_independent_reference(name):
    # densenet121 ends in a functional F.relu; mobilenet_v2 uses in-place ReLU6 modules
    model = build(name)
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([11, 500])
    ours = sal.attribute(model, x, "guided-backprop", targets=t, reduce="none")
    ref = guided_backprop(model, x, t)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    assert cosine(ours, gradient(model, x, t)) < 0.99


def test_densenet_check_is_sensitive_to_the_functional_relu():
    """A modules-only implementation (captum's GuidedBackprop patches nn.ReLU
    modules) differs on densenet121, whose last ReLU is F.relu: so the
    equality with the reference above really checks that call."""
    from captum.attr import GuidedBackprop

    model = build("densenet121")
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([0])
    ours = sal.attribute(model, x, "guided-backprop", targets=t, reduce="none")
    modules_only = GuidedBackprop(model).attribute(x, target=t)
    assert not torch.allclose(ours, modules_only, rtol=1e-3, atol=1e-6)


def test_efficientnet_lite0_reused_relu6(lite0, chelsea_input):
    """EfficientNet-Lite calls one ReLU6 module for stem and head."""
    x = chelsea_input
    t = lite0(x).argmax(1)
    ours = sal.attribute(lite0, x, "guided-backprop", targets=t, reduce="none")
    ref = guided_backprop(lite0, x, t)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    plain = gradient(lite0, x, t)
    assert cosine(ours, plain) < 0.9
    assert torch.equal(sal.attribute(lite0, x, "gradient", targets=t, reduce="none"), plain)


def test_deconvnet_differs_from_guided_and_gradient():
    model = build("resnet18")
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([4])
    deconv = sal.attribute(model, x, "deconvnet", targets=t, reduce="none")
    assert cosine(deconv, sal.attribute(model, x, "guided-backprop", targets=t, reduce="none")) < 0.99
    assert cosine(deconv, gradient(model, x, t)) < 0.99
