"""Context managers that touch a model only for the duration of one call.

- `model_guard`: eval mode and frozen parameters during attribution; the
  training flags and `requires_grad` flags are restored even if forward raises.
- `activation_rules`: the backward rules of guided backprop and DeconvNet for
  every ReLU-family call, however the model makes it.
- `capture_outputs`: the outputs of one module (all its calls) for CAM-style
  methods, with the hook removed on exit.

Why a TorchFunctionMode rather than swapping `nn.ReLU` modules: real models
also call `F.relu`, `torch.relu`, `Tensor.relu_` (DenseNet's last ReLU,
Inception), reuse one activation module several times per forward
(EfficientNet-Lite's ReLU6), or clamp with `ReLU6`/`hardtanh`. Every one of
those reaches `__torch_function__`, so one interception point covers them
all, leaves the modules untouched and disappears when the `with` block ends.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

Rule = Literal["guided", "deconvnet", "plain"]


class UnguidedActivationWarning(UserWarning):
    """A non-ReLU activation (SiLU, GELU...) was met by a rule-based method."""


@contextmanager
def model_guard(model: Any) -> Iterator[None]:
    """Eval mode, parameters frozen; everything restored on exit.

    Freezing parameters is not only hygiene: a convolution whose weight needs
    no gradient does not keep its input for the backward pass, so attribution
    with respect to the input (or one layer) stores far less.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    # only what has to change is touched (and restored): for a model the CLI
    # already prepared, the guard costs one walk over its modules
    training = [m for m in model.modules() if m.training]
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        if training:
            model.eval()  # through eval(), so that a model's own train() override runs
        for p in trainable:
            p.requires_grad_(False)
        yield
    finally:
        for m in training:
            m.training = True
        for p in trainable:
            p.requires_grad_(True)


# ------------------------------------------------------------------ activation rules


class _Rectifier(torch.autograd.Function):
    """clamp(x, 0, upper) forward; the backward rule of the mode that created it.

    guided (Springenberg et al.):  dx = relu(dy) * [0 < x < upper]
    deconvnet (Zeiler & Fergus):   dx = relu(dy)  (the forward sign is ignored)
    plain:                         dx = dy * [0 < x < upper]  (the true derivative)
    The rule is read from the mode when the backward runs, so one forward
    pass can serve a plain and a guided backward (Guided Grad-CAM). The gate
    is read from the output: 0 < y < upper exactly where 0 < x < upper, and
    autograd keeps the output anyway.
    """

    @staticmethod
    def forward(ctx, x, upper, inplace, mode):  # type: ignore[override]
        if upper is None:
            y = torch.relu_(x) if inplace else torch.relu(x)
        else:
            y = torch.clamp_(x, 0.0, upper) if inplace else torch.clamp(x, 0.0, upper)
        if inplace:
            ctx.mark_dirty(x)
        ctx.upper = upper
        ctx.mode = mode
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        rule = ctx.mode.rule
        if rule == "deconvnet":
            return grad_out.clamp(min=0), None, None, None
        (y,) = ctx.saved_tensors
        # the gate with the fused kernels PyTorch's own ReLU / hardtanh backward use
        if ctx.upper is None:
            grad_in = torch.ops.aten.threshold_backward(grad_out, y, 0)  # dy where y > 0
        else:
            grad_in = torch.ops.aten.hardtanh_backward(grad_out, y, 0.0, ctx.upper)  # dy where 0 < y < upper
        if rule == "guided":
            grad_in.clamp_(min=0)
        return grad_in, None, None, None


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


# Each parser maps a call to (input, upper bound or None, in-place) or None when
# the call is not ReLU-family (hardtanh with a lower bound other than 0).
def _relu(inplace_default: bool) -> Callable:
    return lambda a, k: (a[0], None, _arg(a, k, 1, "inplace", inplace_default))


def _relu6(a: tuple, k: dict):
    return a[0], 6.0, _arg(a, k, 1, "inplace", False)


def _hardtanh(inplace_default: bool) -> Callable:
    def parse(a: tuple, k: dict):
        low = _arg(a, k, 1, "min_val", -1.0)
        high = _arg(a, k, 2, "max_val", 1.0)
        if low != 0:
            return None
        return a[0], float(high), _arg(a, k, 3, "inplace", inplace_default)

    return parse


_RELU_FAMILY: dict[Any, Callable] = {
    F.relu: _relu(False),
    torch.relu: lambda a, k: (a[0], None, False),
    torch.Tensor.relu: lambda a, k: (a[0], None, False),
    torch.relu_: lambda a, k: (a[0], None, True),  # also F.relu_: the same object
    torch.Tensor.relu_: lambda a, k: (a[0], None, True),
    F.relu6: _relu6,
    F.hardtanh: _hardtanh(False),
    F.hardtanh_: _hardtanh(True),
}

_NOT_RELU_FAMILY: dict[Any, str] = {
    F.silu: "SiLU", F.gelu: "GELU", F.hardswish: "Hardswish", F.mish: "Mish", F.elu: "ELU",
    F.selu: "SELU", F.celu: "CELU", F.leaky_relu: "LeakyReLU", F.softplus: "Softplus",
    F.prelu: "PReLU", F.rrelu: "RReLU", torch.selu: "SELU", torch.celu: "CELU",
    torch.prelu: "PReLU", torch.rrelu: "RReLU",
}


class _ActivationRules(TorchFunctionMode):
    def __init__(self, rule: Rule):
        super().__init__()
        self.rule = rule  # read by every _Rectifier when the backward runs
        self.unguided: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        parse = _RELU_FAMILY.get(func)
        if parse is not None:
            parsed = parse(args, kwargs)
            if parsed is None:
                self.unguided.add("Hardtanh (lower bound != 0)")
            else:
                x, upper, inplace = parsed
                if torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad:
                    return _Rectifier.apply(x, upper, inplace, self)
        elif func in _NOT_RELU_FAMILY:
            self.unguided.add(_NOT_RELU_FAMILY[func])
        return func(*args, **kwargs)


@contextmanager
def activation_rules(rule: Rule, method: str) -> Iterator[_ActivationRules]:
    """Inside the block, every ReLU-family call uses `rule` for its backward.

    Only the forward pass needs to run inside: the rule travels with the
    autograd graph. Warns once per call about activations left unchanged.
    """
    mode = _ActivationRules(rule)
    with mode:
        yield mode
    if mode.unguided:
        names = ", ".join(sorted(mode.unguided))
        warnings.warn(
            f"{method}: {names} is not a ReLU-family activation; gradients pass through it unchanged",
            UnguidedActivationWarning,
            stacklevel=3,
        )


# ------------------------------------------------------------------ activation capture


@contextmanager
def capture_outputs(module: nn.Module, *, track_call: int | None = None) -> Iterator[list[Any]]:
    """Collect the output of every call of `module` during the block.

    `track_call` is the index of the call whose output the gradient will be
    taken with respect to. That output is made to require grad (so the
    gradient exists even with frozen parameters and an input that needs
    none: the backward then stops at this layer), and a copy is passed on to
    the rest of the model, so an in-place operation after the layer cannot
    change the captured values.
    """
    outputs: list[Any] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        index = len(outputs)
        if index != track_call or not isinstance(output, torch.Tensor) or not torch.is_grad_enabled():
            outputs.append(output)
            return None
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        outputs.append(output)
        return output.clone()

    handle = module.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()
