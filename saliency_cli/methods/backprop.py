"""One forward and one backward to the input: the pass every gradient-family
method is built on (vanilla, guided, DeconvNet, x input, SmoothGrad's copies)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from ..hooks import Rule, activation_rules
from .registry import Attribution, as_logits, class_score, select_targets


def input_gradient(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    rule: Rule | None = None,
    method: str = "gradient",
) -> Attribution:
    """d logit[target] / d images for every image in the batch, with the
    backward rule of guided backprop or DeconvNet when `rule` is given.

    `torch.autograd.grad` (not `.backward()`) so no parameter's `.grad` is
    touched; only the forward runs under the rule's interception.
    """
    x = images.detach().requires_grad_(True)
    rules = activation_rules(rule, method) if rule else nullcontext()
    with torch.enable_grad(), rules:
        logits = as_logits(model(x), x.shape[0])
    targets = select_targets(logits, targets)
    (grad,) = torch.autograd.grad(class_score(logits, targets), x)
    return Attribution(grad, logits.detach(), targets)
