"""Integrated gradients: captum's IntegratedGradients, completeness, the
baselines, chunking, and use as a SmoothGrad base."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import saliency_cli as sal
from saliency_cli.errors import SaliencyError
from saliency_cli.methods.integrated_gradients import IntegratedGradientsParams, baseline, gaussian_blur

from .helpers import TinyCNN, seeded


@pytest.fixture(scope="module")
def model():
    return seeded(TinyCNN(classes=5, width=6), 3).eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(5)
    return torch.randn(3, 3, 12, 12)


TARGETS = torch.tensor([0, 3, 4])


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_middle",
                                  "riemann_right"])
def test_equals_captum_for_every_rule(model, images, rule):
    from captum.attr import IntegratedGradients

    ours = sal.attribute(model, images, "integrated-gradients", targets=TARGETS, steps=7, rule=rule,
                         baseline="mean", reduce="none")
    ref = IntegratedGradients(model).attribute(images, target=TARGETS, n_steps=7, method=rule)  # zero baseline
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["black", "blur", "noise"])
def test_equals_captum_with_the_same_baseline(model, images, kind):
    from captum.attr import IntegratedGradients

    params = IntegratedGradientsParams(baseline=kind, blur_sigma=1.5, seed=4)
    start = baseline(images, params)
    ours = sal.attribute(model, images, "integrated-gradients", targets=TARGETS, steps=6, baseline=kind,
                         blur_sigma=1.5, seed=4, reduce="none")
    ref = IntegratedGradients(model).attribute(images, baselines=start, target=TARGETS, n_steps=6)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)


def test_completeness(images):
    """Sundararajan et al.'s axiom: the attributions add up to y_c(x) - y_c(x').
    A smooth model, so that 16 Gauss-Legendre points integrate it closely."""
    smooth = seeded(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 6, 3, padding=1),
                                  nn.Softplus(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)), 1).eval()
    maps = sal.attribute(smooth, images, "integrated-gradients", targets=TARGETS, steps=16, baseline="blur",
                         blur_sigma=2.0)
    with torch.no_grad():
        start = gaussian_blur(images, 2.0)
        gap = (smooth(images) - smooth(start)).gather(1, TARGETS[:, None])[:, 0]
    assert gap.abs().min() > 0.03
    torch.testing.assert_close(maps.sum(dim=(1, 2)), gap, rtol=1e-4, atol=1e-5)


def test_baselines(images):
    black = baseline(images, IntegratedGradientsParams())
    want = torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225])  # ImageNet's black, the API default
    torch.testing.assert_close(black, want.view(1, 3, 1, 1).expand_as(images))
    assert torch.equal(baseline(images, IntegratedGradientsParams(baseline="mean")), torch.zeros_like(images))
    noisy = baseline(images, IntegratedGradientsParams(baseline="noise", noise_level=0.1, seed=2))
    spread = 0.1 * (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3)))
    eps = (noisy - images) / spread[:, None, None, None]
    torch.testing.assert_close(eps[0], eps[2])  # one draw shared by the batch
    assert abs(float(eps[0].std()) - 1) < 0.15


def test_blur_is_a_normalised_gaussian():
    sigma = 1.5
    radius = math.ceil(3 * sigma)
    impulse = torch.zeros(1, 3, 21, 21)
    impulse[:, :, 10, 10] = 1.0
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    want = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma ** 2))
    blurred = gaussian_blur(impulse, sigma)
    torch.testing.assert_close(blurred[0, 1, 10 - radius:11 + radius, 10 - radius:11 + radius], want / want.sum())
    flat = torch.full((1, 3, 5, 4), 0.7)
    torch.testing.assert_close(gaussian_blur(flat, 4.0), flat)  # edges replicated, even past the image


def test_the_config_fills_black_from_its_preprocessing():
    from saliency_cli.config import load_config

    cfg = load_config(None, ["preprocess.mean=[0.5,0.5,0.5]", "preprocess.std=[0.25,0.5,1.0]",
                             "methods.smoothgrad.base=integrated-gradients"])
    assert cfg.method_params("integrated-gradients").black == [-2.0, -1.0, -0.5]
    assert cfg.method_params("smoothgrad").base_method()[1].black == [-2.0, -1.0, -0.5]  # as a base too
    given = load_config(None, ["methods.integrated-gradients.black=[0,0,0]"])
    assert given.method_params("integrated-gradients").black == [0.0, 0.0, 0.0]


def test_result_does_not_depend_on_step_batch(model, images):
    maps = [sal.attribute(model, images, "integrated-gradients", steps=5, baseline="noise", step_batch=sb,
                          reduce="none") for sb in (1, 4, 15, None)]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-5, atol=1e-7)


def test_smoothgrad_of_integrated_gradients(model, images):
    ig = {"steps": 4, "baseline": "mean"}
    sg = sal.attribute(model, images, "smoothgrad", base="integrated-gradients", base_params=ig, n=2,
                       noise_level=0.0, reduce="none")
    torch.testing.assert_close(sg, sal.attribute(model, images, "integrated-gradients", reduce="none", **ig))


def test_bad_parameters(model, images):
    with pytest.raises(SaliencyError, match="steps must be >= 1 \\(>= 2 for Riemann"):
        sal.attribute(model, images, "integrated-gradients", steps=1, rule="riemann_left")
    with pytest.raises(SaliencyError, match="black has 2 values for images with 3 channels"):
        sal.attribute(model, images, "integrated-gradients", black=[0.0, 1.0])
