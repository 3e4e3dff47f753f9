"""gradient and gradient-x-input against closed forms and captum."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import saliency_cli as sal
from saliency_cli.errors import SaliencyError

from .reference import guided_backprop


class Linear(nn.Module):
    def __init__(self, classes=4, shape=(3, 5, 6)):
        super().__init__()
        torch.manual_seed(1)
        self.fc = nn.Linear(int(torch.tensor(shape).prod()), classes)
        self.shape = shape

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_gradient_of_a_linear_model_is_the_weight_row():
    model = Linear()
    x = torch.randn(3, 3, 5, 6)
    targets = torch.tensor([2, 0, 3])
    got = sal.attribute(model, x, "gradient", targets=targets, reduce="none")
    want = model.fc.weight[targets].detach().view(3, 3, 5, 6)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(sal.attribute(model, x, "gradient", targets=targets), want.abs().amax(1))
    torch.testing.assert_close(sal.attribute(model, x, "gradient", targets=targets, reduce="sum-abs"),
                               want.abs().sum(1))


def test_gradient_x_input_is_x_times_the_weight_row():
    model = Linear()
    x = torch.randn(2, 3, 5, 6)
    targets = torch.tensor([1, 1])
    w = model.fc.weight[targets].detach().view(2, 3, 5, 6)
    torch.testing.assert_close(sal.attribute(model, x, "gradient-x-input", targets=targets), (x * w).sum(1))
    torch.testing.assert_close(sal.attribute(model, x, "gradient-x-input", targets=1, reduce="none"), x * w)


def test_default_target_is_the_top_class():
    model = Linear()
    x = torch.randn(4, 3, 5, 6)
    top = model(x).argmax(1)
    torch.testing.assert_close(sal.attribute(model, x, "gradient"),
                               sal.attribute(model, x, "gradient", targets=top))


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def test_gradient_and_x_input_equal_captum(resnet18):
    from captum.attr import InputXGradient, Saliency

    x = torch.randn(2, 3, 64, 64)
    t = torch.tensor([5, 9])
    torch.testing.assert_close(sal.attribute(resnet18, x, "gradient", targets=t),
                               Saliency(resnet18).attribute(x, target=t, abs=True).amax(1))
    torch.testing.assert_close(sal.attribute(resnet18, x, "gradient-x-input", targets=t, reduce="none"),
                               InputXGradient(resnet18).attribute(x, target=t))


def test_guided_gradient_x_input_is_guided_backprop_times_input(resnet18):
    x = torch.randn(2, 3, 64, 64)
    t = torch.tensor([1, 2])
    got = sal.attribute(resnet18, x, "gradient-x-input", targets=t, gradient="guided", reduce="none")
    torch.testing.assert_close(got, guided_backprop(resnet18, x, t) * x)


def test_bad_arguments_are_clear():
    model = Linear()
    with pytest.raises(SaliencyError, match=r"images must be a float tensor \[B,C,H,W\]"):
        sal.attribute(model, torch.randn(3, 5, 6))
    with pytest.raises(SaliencyError, match=r"^target class 7 out of range for a model with 4 outputs "
                                            r"\(classes 0 to 3\)$"):
        sal.attribute(model, torch.randn(1, 3, 5, 6), targets=7)
    with pytest.raises(SaliencyError, match="expected 2 class ids"):
        sal.attribute(model, torch.randn(2, 3, 5, 6), targets=[1, 2, 3])
    with pytest.raises(SaliencyError, match="unknown key 'gradient.n'"):
        sal.attribute(model, torch.randn(1, 3, 5, 6), "gradient", n=3)
    with pytest.raises(SaliencyError, match="must return class scores"):
        sal.attribute(nn.Conv2d(3, 2, 1), torch.randn(1, 3, 5, 6))
