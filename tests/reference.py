"""Independent reference implementations, for tests only.

Guided backprop here works by a different mechanism than the package's
(which intercepts calls with a TorchFunctionMode and a custom autograd
Function): the functional ReLU-family entry points are monkeypatched for the
duration of a call, and a tensor hook rectifies the gradient arriving at each
activation output, so the native ReLU/hardtanh backward supplies the forward
gate. Every nn.ReLU / nn.ReLU6 module goes through these functions too.
"""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import torch
import torch.nn.functional as F


def _rectify_incoming_grad(y: torch.Tensor) -> torch.Tensor:
    if y.requires_grad:
        y.register_hook(lambda g: g.clamp(min=0))
    return y


@contextmanager
def guided_relus():
    relu, hardtanh = F.relu, F.hardtanh

    def guided_relu(x, inplace=False):
        return _rectify_incoming_grad(relu(x))

    def guided_hardtanh(x, min_val=-1.0, max_val=1.0, inplace=False):
        y = hardtanh(x, min_val, max_val)
        return _rectify_incoming_grad(y) if min_val == 0 else y

    def guided_relu6(x, inplace=False):
        return guided_hardtanh(x, 0.0, 6.0)

    with mock.patch.object(F, "relu", guided_relu), mock.patch.object(F, "hardtanh", guided_hardtanh), \
            mock.patch.object(F, "relu6", guided_relu6):
        yield


def guided_backprop(model, images, targets):
    x = images.clone().requires_grad_(True)
    with guided_relus():
        logits = model(x)
    score = logits.gather(1, targets[:, None]).sum()
    (grad,) = torch.autograd.grad(score, x)
    return grad


def gradient(model, images, targets):
    x = images.clone().requires_grad_(True)
    score = model(x).gather(1, targets[:, None]).sum()
    (grad,) = torch.autograd.grad(score, x)
    return grad
