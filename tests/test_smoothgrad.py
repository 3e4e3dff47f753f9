from __future__ import annotations

import pytest
import torch

import saliency_cli as sal
from saliency_cli.errors import SaliencyError

from .helpers import TinyCNN, cosine, seeded
from .reference import gradient


@pytest.fixture(scope="module")
def model():
    return seeded(TinyCNN(classes=5, width=6), 3).eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(7)
    return torch.randn(3, 3, 16, 16)


@pytest.mark.parametrize("squared", [False, True])
def test_result_does_not_depend_on_noise_batch(model, images, squared):
    maps = [sal.attribute(model, images, "smoothgrad", n=9, noise_batch=nb, squared=squared, reduce="none")
            for nb in (1, 2, 5, 27, None)]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("base", ["gradient", "guided-backprop", "deconvnet", "gradient-x-input"])
def test_zero_noise_equals_the_base_method(model, images, base):
    sg = sal.attribute(model, images, "smoothgrad", base=base, n=4, noise_level=0.0, reduce="none")
    torch.testing.assert_close(sg, sal.attribute(model, images, base, reduce="none"))


def test_squared_zero_noise_is_the_square(model, images):
    sg = sal.attribute(model, images, "smoothgrad", n=3, noise_level=0.0, squared=True, reduce="none")
    torch.testing.assert_close(sg, sal.attribute(model, images, "gradient", reduce="none") ** 2)


def test_base_params_reach_the_base(model, images):
    sg = sal.attribute(model, images, "smoothgrad", base="gradient-x-input", base_params={"gradient": "guided"},
                       n=2, noise_level=0.0, reduce="none")
    want = sal.attribute(model, images, "gradient-x-input", gradient="guided", reduce="none")
    torch.testing.assert_close(sg, want)


def test_seed_fixes_the_noise(model, images):
    a = sal.attribute(model, images, "smoothgrad", n=4, seed=1)
    assert torch.equal(a, sal.attribute(model, images, "smoothgrad", n=4, seed=1))
    assert not torch.allclose(a, sal.attribute(model, images, "smoothgrad", n=4, seed=2))


def test_agrees_with_an_independent_many_sample_estimate(model, images):
    """Smilkov et al.'s definition, written as a plain loop with its own noise."""
    targets = model(images).argmax(1)
    gen = torch.Generator().manual_seed(1234)
    sigma = 0.15 * (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3)))
    total = torch.zeros_like(images)
    samples = 2000
    for _ in range(samples):
        noise = torch.randn(images.shape, generator=gen) * sigma[:, None, None, None]
        total += gradient(model, images + noise, targets)
    expected = total / samples
    ours = sal.attribute(model, images, "smoothgrad", n=2000, noise_batch=512, reduce="none")
    for i in range(images.shape[0]):
        assert cosine(ours[i], expected[i]) > 0.98
    plain = gradient(model, images, targets)
    # the smoothing is real: the plain gradient is further from the expectation
    assert min(cosine(ours[i], expected[i]) - cosine(plain[i], expected[i]) for i in range(3)) > 0.1


def test_noise_is_relative_to_each_images_range(model):
    x = torch.randn(1, 3, 16, 16)
    a = sal.attribute(model, x, "smoothgrad", n=4, reduce="none")
    # scaling the input by 10 scales sigma by 10: the noisy copies are the scaled copies
    b = sal.attribute(lambda_scaled(model), x * 10, "smoothgrad", n=4, reduce="none")
    torch.testing.assert_close(b * 10, a, rtol=1e-4, atol=1e-6)
    # each image of a batch by its own range, not the batch's: as if explained alone
    pair = sal.attribute(model, torch.cat([x, x * 10]), "smoothgrad", n=4, reduce="none")
    torch.testing.assert_close(pair[0], a[0], rtol=1e-4, atol=1e-6)
    alone = sal.attribute(model, x * 10, "smoothgrad", n=4, reduce="none")
    torch.testing.assert_close(pair[1], alone[0], rtol=1e-4, atol=1e-6)


def lambda_scaled(model):
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner(x / 10)

    return Scaled()


@pytest.mark.parametrize(("params", "message"), [
    ({"n": 0}, "n must be >= 1"),
    ({"noise_level": -1.0}, "noise_level must be >= 0"),
    ({"base": "smoothgrad"}, "base must be a pixel-space method"),
    ({"noise_batch": 0}, "noise_batch must be >= 1"),
])
def test_bad_parameters(model, images, params, message):
    with pytest.raises(SaliencyError, match=message):
        sal.attribute(model, images, "smoothgrad", **params)
