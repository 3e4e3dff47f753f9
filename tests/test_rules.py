"""Guided backprop and DeconvNet on hand-computed two-layer networks, for
every way a model can call a ReLU-family activation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import saliency_cli as sal

# x = ones(3); h1 = W1 x hits every regime of ReLU6: negative, inside, above 6, inside.
W1 = np.array([[-1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [3.0, 2.0, 2.0], [0.5, 0.0, 0.0]])
W2 = np.array([[1.0, -2.0, 0.5, 1.0], [-1.0, 1.0, 1.0, -3.0], [0.5, 2.0, -0.2, 0.0], [2.0, 1.0, 0.0, 1.0]])
W3 = np.array([[1.0, -1.0, 2.0, -0.5], [-2.0, 0.5, 1.0, 1.0]])


class TwoLayer(nn.Module):
    def __init__(self, act1, act2):
        super().__init__()
        self.l1, self.l2, self.l3 = (nn.Linear(w.shape[1], w.shape[0], bias=False) for w in (W1, W2, W3))
        for layer, w in zip((self.l1, self.l2, self.l3), (W1, W2, W3)):
            layer.weight.data = torch.tensor(w, dtype=torch.float32)
        self.act1, self.act2 = act1, act2

    def forward(self, x):
        return self.l3(self.act2(self.l2(self.act1(self.l1(x.flatten(1))))))


def expected(rule: str, upper: float | None, target: int) -> np.ndarray:
    """Backward pass written out by hand with numpy."""
    x = np.ones(3)
    h1 = W1 @ x
    a1 = np.clip(h1, 0, upper if upper else np.inf)
    h2 = W2 @ a1

    def gate(h):
        return (h > 0) & (h < (upper if upper else np.inf))

    def through(g, h):
        if rule == "gradient":
            return g * gate(h)
        if rule == "guided":
            return np.maximum(g, 0) * gate(h)
        return np.maximum(g, 0)  # deconvnet

    g = through(W3[target], h2)
    g = through(W2.T @ g, h1)
    return W1.T @ g


def two(make):
    return make(), make()


CASES = {
    "ReLU modules": (lambda: two(nn.ReLU), None),
    "in-place ReLU modules": (lambda: two(lambda: nn.ReLU(inplace=True)), None),
    "one ReLU module reused": (lambda: (lambda m: (m, m))(nn.ReLU()), None),
    "F.relu": (lambda: (F.relu, F.relu), None),
    "F.relu in-place": (lambda: two(lambda: (lambda h: F.relu(h, inplace=True))), None),
    "torch.relu": (lambda: (torch.relu, torch.relu), None),
    "Tensor.relu / relu_": (lambda: (lambda h: h.relu(), lambda h: h.relu_()), None),
    "torch.relu_": (lambda: (torch.relu_, torch.relu_), None),
    "ReLU6 modules": (lambda: two(nn.ReLU6), 6.0),
    "one in-place ReLU6 reused": (lambda: (lambda m: (m, m))(nn.ReLU6(inplace=True)), 6.0),
    "F.relu6": (lambda: (F.relu6, F.relu6), 6.0),
    "hardtanh(0, 6)": (lambda: two(lambda: nn.Hardtanh(0.0, 6.0)), 6.0),
    "F.hardtanh_(0, 6)": (lambda: two(lambda: (lambda h: F.hardtanh_(h, 0.0, 6.0))), 6.0),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("method", "rule"), [("gradient", "gradient"), ("guided-backprop", "guided"),
                                              ("deconvnet", "deconvnet")])
@pytest.mark.parametrize("target", [0, 1])
def test_rule_matches_hand_computation(case, method, rule, target):
    make, upper = CASES[case]
    model = TwoLayer(*make())
    x = torch.ones(1, 3, 1, 1)
    got = sal.attribute(model, x, method, targets=target, reduce="none").flatten().numpy()
    np.testing.assert_allclose(got, expected(rule, upper, target), rtol=1e-6, atol=1e-6)


def test_the_example_exercises_every_regime():
    h1 = W1 @ np.ones(3)
    assert (h1 < 0).any() and ((h1 > 0) & (h1 < 6)).any() and (h1 > 6).any()
    assert not np.allclose(expected("guided", 6.0, 0), expected("gradient", 6.0, 0))
    assert not np.allclose(expected("guided", 6.0, 0), expected("deconvnet", 6.0, 0))
    assert not np.allclose(expected("guided", None, 1), expected("guided", 6.0, 1))


def test_non_relu_activations_pass_through_with_one_warning():
    model = TwoLayer(nn.SiLU(), nn.GELU())
    x = torch.ones(1, 3, 1, 1)
    with pytest.warns(UserWarning, match="GELU, SiLU is not a ReLU-family activation") as record:
        guided = sal.attribute(model, x, "guided-backprop", targets=0, reduce="none")
    assert len(record) == 1
    plain = sal.attribute(model, x, "gradient", targets=0, reduce="none")
    assert torch.equal(guided, plain)


def test_hardtanh_with_other_bounds_is_not_rectified():
    model = TwoLayer(nn.Hardtanh(-1.0, 1.0), nn.Hardtanh(-1.0, 1.0))
    x = torch.full((1, 3, 1, 1), 0.1)
    with pytest.warns(UserWarning, match="Hardtanh"):
        guided = sal.attribute(model, x, "guided-backprop", targets=0, reduce="none")
    assert torch.equal(guided, sal.attribute(model, x, "gradient", targets=0, reduce="none"))
