"""CAM, Grad-CAM and Guided Grad-CAM: exact relations, captum, real models."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import saliency_cli as sal
from saliency_cli.errors import SaliencyError
from saliency_cli.hooks import UnguidedActivationWarning
from saliency_cli.methods.layers import probe

from .helpers import TinyCNN, seeded
from .reference import guided_backprop


def features_of(model: TinyCNN, x):
    return model.relu2(model.bn(model.conv2(model.relu1(model.conv1(x)))))


@pytest.fixture(scope="module")
def tiny():
    return seeded(TinyCNN(classes=5, width=8), 2).eval()


def test_cam_is_the_weighted_sum_of_the_last_feature_map(tiny):
    x = torch.randn(3, 3, 12, 12)
    t = torch.tensor([0, 4, 2])
    low = sal.attribute(tiny, x, "cam", targets=t, upsample=False)
    want = torch.einsum("bk,bkhw->bhw", tiny.fc.weight[t].detach(), features_of(tiny, x).detach())
    torch.testing.assert_close(low, want)
    up = sal.attribute(tiny, x, "cam", targets=t)
    torch.testing.assert_close(up, F.interpolate(want[:, None], size=(12, 12), mode="bilinear",
                                                 align_corners=False)[:, 0])
    assert low.min() < 0  # raw: no ReLU


def test_grad_cam_equals_relu_cam_over_hw_on_a_gap_linear_model(tiny):
    x = torch.randn(4, 3, 12, 12)
    t = torch.tensor([1, 2, 3, 4])
    grad_cam = sal.attribute(tiny, x, "grad-cam", targets=t, upsample=False)
    cam = sal.attribute(tiny, x, "cam", targets=t, upsample=False)
    h, w = cam.shape[-2:]
    torch.testing.assert_close(grad_cam, F.relu(cam) / (h * w), rtol=1e-5, atol=1e-7)
    assert grad_cam.shape == (4, 6, 6)


def test_cam_with_a_1x1_conv_head():
    class ConvHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
            self.head = nn.Conv2d(6, 4, 1)

        def forward(self, x):
            return self.head(self.body(x)).mean(dim=(2, 3))

    model = seeded(ConvHead(), 1).eval()
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([3, 0])
    want = torch.einsum("bk,bkhw->bhw", model.head.weight[t, :, 0, 0].detach(), model.body(x).detach())
    torch.testing.assert_close(sal.attribute(model, x, "cam", targets=t, upsample=False), want)


@pytest.mark.parametrize("name", ["vgg11", "mobilenet_v3_small", "convnext_tiny", "squeezenet1_0"])
def test_cam_refuses_heads_where_it_is_undefined(name):
    model = torchvision.models.get_model(name, weights=None).eval()
    with pytest.raises(SaliencyError, match="(?i)use grad-cam"):
        sal.attribute(model, torch.randn(1, 3, 64, 64), "cam")


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.mark.parametrize("layer", [None, "layer3"])
def test_grad_cam_equals_captum(resnet18, layer):
    from captum.attr import LayerAttribution, LayerGradCam

    x, t = torch.randn(2, 3, 64, 64), torch.tensor([3, 9])
    module = resnet18.get_submodule(layer or "layer4")
    ref = LayerGradCam(resnet18, module).attribute(x, target=t, relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, (64, 64), interpolate_mode="bilinear")[:, 0]
    torch.testing.assert_close(sal.attribute(resnet18, x, "grad-cam", targets=t, layer=layer), ref)


def test_guided_grad_cam_equals_captum(resnet18):
    from captum.attr import GuidedGradCam

    x, t = torch.randn(2, 3, 64, 64), torch.tensor([3, 9])
    ref = GuidedGradCam(resnet18, resnet18.layer4).attribute(x, target=t, interpolate_mode="bilinear")
    ours = sal.attribute(resnet18, x, "guided-grad-cam", targets=t, reduce="none")
    torch.testing.assert_close(ours, ref)


def test_guided_grad_cam_uses_the_plain_gradient_for_its_cam(resnet18):
    """With a layer that has ReLUs after it, Grad-CAM's weights must come from
    the true gradient even though the same forward pass serves guided backprop."""
    x, t = torch.randn(1, 3, 64, 64), torch.tensor([5])
    cam = sal.attribute(resnet18, x, "grad-cam", targets=t, layer="layer2")
    want = guided_backprop(resnet18, x, t) * cam[:, None]
    got = sal.attribute(resnet18, x, "guided-grad-cam", targets=t, layer="layer2", reduce="none")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * want.abs().max().item())


def test_grad_cam_never_backpropagates_to_the_input():
    class NoBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise AssertionError("the backward pass reached the input")

    class Guarded(TinyCNN):
        def forward(self, x):
            return super().forward(NoBackward.apply(x))

    model = seeded(Guarded(), 0).eval()
    x = torch.randn(2, 3, 12, 12)
    assert sal.attribute(model, x, "grad-cam").shape == (2, 12, 12)
    with pytest.raises(AssertionError, match="reached the input"):
        sal.attribute(model, x, "gradient")


def test_default_layer_is_the_last_feature_map_before_pooling(resnet18, lite0):
    assert probe(resnet18, torch.zeros(1, 3, 64, 64)).default_layer() == "layer4"
    assert probe(torchvision.models.vgg11(weights=None), torch.zeros(1, 3, 64, 64)).default_layer() == "features"
    assert probe(torchvision.models.densenet121(weights=None), torch.zeros(1, 3, 64, 64)).default_layer() == "features"
    found = probe(lite0, torch.zeros(1, 3, 224, 224))
    assert found.default_layer() == "_swish" and found.count("_swish") == 2  # stem and head


def test_reused_module_uses_its_last_call(lite0, chelsea_input):
    """EfficientNet-Lite's `_swish` serves the stem (32x112x112) and the head
    (1280x7x7): Grad-CAM must explain the head, and say so."""
    x = chelsea_input
    t = lite0(x).argmax(1)
    got = sal.attribute(lite0, x, "grad-cam", targets=t, upsample=False)
    features = lite0.extract_features(x).detach().requires_grad_(True)
    logits = lite0._fc(lite0._avg_pooling(features).flatten(1))
    (grads,) = torch.autograd.grad(logits[0, t[0]], features)
    want = F.relu((grads.mean(dim=(2, 3), keepdim=True) * features).sum(1))
    assert got.shape == (1, 7, 7)
    torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-6)


def test_a_reused_layer_is_reported(caplog):
    import logging

    from .helpers import FunctionalCNN

    model = seeded(FunctionalCNN(), 0).eval()
    with caplog.at_level(logging.INFO, logger="saliency"):
        sal.attribute(model, torch.randn(1, 3, 8, 8), "grad-cam", layer="act")
    assert "layer 'act' runs 2 times per forward pass; explaining its last call (output 6x8x8)" in caplog.text


def test_pretrained_grad_cam_finds_the_cat(lite0, chelsea_input):
    """The box is drawn by hand around the cat's face in the 224x224 input
    (both eyes, nose and muzzle); the blurred background is on the right."""
    x0, y0, x1, y1 = 20, 30, 185, 215
    maps = {name: sal.attribute(lite0, chelsea_input, name)[0] for name in ("grad-cam", "cam")}
    for name, m in maps.items():
        index = int(m.argmax())
        x, y = index % 224, index // 224
        assert x0 <= x < x1 and y0 <= y < y1, f"{name} peaks at {(x, y)}"
        inside = torch.zeros_like(m, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert m[inside].mean() > 2 * m[~inside].mean(), name


def test_unknown_and_unsuitable_layers(resnet18):
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(SaliencyError, match=r"unknown layer 'layer5' \(did you mean 'layer4'.*saliency layers"):
        sal.attribute(resnet18, x, "grad-cam", layer="layer5")
    with pytest.raises(SaliencyError, match=r"layer 'fc' outputs \[1, 1000\], not a 4-D feature map"):
        sal.attribute(resnet18, x, "guided-grad-cam", layer="fc")


FAMILIES = ["resnet18", "densenet121", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf",
            "convnext_tiny", "vgg11"]
CAM_HEAD = {"resnet18", "densenet121", "efficientnet_b0", "regnet_y_400mf"}
# guided-grad-cam warns, once per call, about activations it cannot guide
UNGUIDED = {"mobilenet_v3_small": "Hardswish", "efficientnet_b0": "SiLU", "convnext_tiny": "GELU"}


@pytest.mark.parametrize("name", FAMILIES)
def test_torchvision_families(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    for method in ("grad-cam", "guided-grad-cam") + (("cam",) if name in CAM_HEAD else ()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            maps = sal.attribute(model, x, method)
        assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all(), method
        unguided = [str(w.message) for w in caught if issubclass(w.category, UnguidedActivationWarning)]
        if method == "guided-grad-cam" and name in UNGUIDED:
            assert len(unguided) == 1 and UNGUIDED[name] in unguided[0]
        else:
            assert unguided == [], method
    if name not in CAM_HEAD:
        with pytest.raises(SaliencyError, match="(?i)use grad-cam"):
            sal.attribute(model, x, "cam")


def test_cam_plans_later_calls_and_replans_when_the_model_changes():
    from saliency_cli.methods.cam import _PLANS

    model = seeded(TinyCNN(classes=5, width=8), 4).eval()
    x = torch.randn(2, 3, 12, 12)
    first = sal.attribute(model, x, "cam", upsample=False)
    plan = _PLANS[model]
    assert plan.module is model.relu2 and plan.calls == 1  # A is relu2's output: only it is hooked later
    torch.testing.assert_close(sal.attribute(model, x, "cam", upsample=False), first)
    model.fc = nn.Linear(8, 5)  # a new head: the plan no longer explains the logits
    t = model(x).argmax(1)
    want = torch.einsum("bk,bkhw->bhw", model.fc.weight[t].detach(), features_of(model, x).detach())
    torch.testing.assert_close(sal.attribute(model, x, "cam", upsample=False), want)
    assert _PLANS[model].weight is model.fc.weight
