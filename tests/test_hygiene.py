"""Contract of every registered method: shapes, finite values, batch of two
equals two single calls, and the model left exactly as given, also when its
forward raises halfway."""

from __future__ import annotations

import pytest
import torch

import saliency_cli as sal
from saliency_cli.errors import NotApplicable
from saliency_cli.methods import registry

from .helpers import TinyAttention, TinyCNN, assert_same_state, model_state, seeded

CLASSIFICATION = registry.names("classification")  # d-rise has its own contract (test_d_rise.py)
# keep the expensive methods cheap here; their own tests cover their parameters
FAST = {"smoothgrad": {"n": 3}, "integrated-gradients": {"steps": 3}, "rise": {"num_masks": 6},
        "occlusion": {"window": 4, "stride": 4}}


def params(name):
    return FAST.get(name, {})


class RaisingCNN(TinyCNN):
    def forward(self, x):
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.bn(self.conv2(x)))
        raise RuntimeError("boom")


class RaisingAttention(TinyAttention):
    def forward(self, x):
        self.tokens(x)
        raise RuntimeError("boom")


def tiny(name, raising=False):
    """TinyCNN, or for a method that does not apply to it (attention
    rollout) the tiny attention model; both have a `bn` and an `fc`."""
    method = registry.get(name)
    try:
        method.check_applies(seeded(TinyCNN(), 0).eval(), torch.zeros(1, 3, 12, 10), method.make_params(params(name)))
    except NotApplicable:
        return RaisingAttention if raising else TinyAttention
    return RaisingCNN if raising else TinyCNN


def train_mode_model(cls=TinyCNN):
    model = seeded(cls(), 0)
    model.train()  # attribution must switch to eval and back
    model.bn.eval()  # ... and leave a module the user froze (a BatchNorm, typically) in eval
    model.fc.weight.requires_grad_(False)  # a partly frozen model keeps its flags
    return model


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_shapes_and_finiteness(name):
    model = seeded(tiny(name)(), 0).eval()
    x = torch.randn(2, 3, 12, 10)
    maps = sal.attribute(model, x, name, **params(name))
    assert maps.shape == (2, 12, 10) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.abs().sum() > 0


@pytest.mark.parametrize("name", CLASSIFICATION)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_maps_are_float32_whatever_the_input_dtype(name, dtype):
    model = seeded(tiny(name)(), 0).eval().to(dtype)
    maps = sal.attribute(model, torch.randn(2, 3, 12, 10, dtype=dtype), name, **params(name))
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_batch_of_two_equals_two_single_calls(name):
    model = seeded(tiny(name)(), 0).eval()
    x = torch.randn(2, 3, 12, 10)
    both = sal.attribute(model, x, name, **params(name))
    singles = torch.cat([sal.attribute(model, x[i:i + 1], name, **params(name)) for i in range(2)])
    torch.testing.assert_close(both, singles, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_model_left_exactly_as_given(name):
    model = train_mode_model(tiny(name))
    before = model_state(model)
    sal.attribute(model, torch.randn(2, 3, 12, 10), name, **params(name))
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_model_left_as_given_when_forward_raises(name):
    model = train_mode_model(tiny(name, raising=True))
    before = model_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        sal.attribute(model, torch.randn(2, 3, 12, 10), name, **params(name))
    assert_same_state(before, model_state(model))


def test_eval_mode_is_used_during_attribution():
    """BatchNorm must use its running statistics: the maps of a model given in
    train mode equal those of the same model in eval mode."""
    model = train_mode_model()
    x = torch.randn(2, 3, 12, 10)
    in_train = sal.attribute(model, x, "gradient")
    torch.testing.assert_close(in_train, sal.attribute(model.eval(), x, "gradient"))


def test_images_are_not_modified():
    x = torch.randn(2, 3, 12, 10)
    copy = x.clone()
    for name in CLASSIFICATION:
        sal.attribute(seeded(tiny(name)(), 0).eval(), x, name, **params(name))
    assert torch.equal(x, copy) and not x.requires_grad


def test_registry_rejects_duplicates():
    from saliency_cli.methods.registry import PixelParams, register

    with pytest.raises(ValueError, match="registered twice"):
        register("gradient", summary="", paper="", params=PixelParams)(lambda *a: None)


def test_registry_is_the_list_of_methods():
    assert sal.methods() == ["gradient", "gradient-x-input", "deconvnet", "guided-backprop", "smoothgrad",
                             "integrated-gradients", "cam", "grad-cam", "guided-grad-cam", "grad-cam-plus-plus",
                             "layer-cam", "score-cam", "eigen-cam", "rise", "occlusion", "attention-rollout",
                             "d-rise"]
    assert registry.names("detection") == ["d-rise"]
