"""Tiny models and checks shared by the tests (no downloads anywhere)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyCNN(nn.Module):
    """conv-relu-conv-relu(in-place)-GAP-linear: every classification method applies."""

    def __init__(self, classes: int = 5, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, stride=2)
        self.bn = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.bn(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class TinyAttention(nn.Module):
    """conv stem (bn, relu) -> tokens + class token -> self-attention block ->
    class token -> linear: the smallest model attention rollout applies to."""

    def __init__(self, classes: int = 5, width: int = 8, heads: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, stride=2)
        self.bn = nn.BatchNorm2d(width)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, classes)

    def tokens(self, x):
        x = F.relu(self.bn(self.conv(x))).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        h = self.norm1(x)
        return x + self.attn(h, h, h, need_weights=False)[0]

    def forward(self, x):
        return self.fc(self.norm2(self.tokens(x))[:, 0])


class Exploding(nn.Module):
    """Raises in the middle of the forward pass, after hooks and rules are in place."""

    def forward(self, x):
        raise RuntimeError("boom")


class FunctionalCNN(nn.Module):
    """Uses only functional activations and one reused module."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.act = nn.ReLU6()  # called twice per forward
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        x = self.act(self.conv1(x))
        x = F.relu(x)
        x = self.act(self.conv2(x)).relu()
        return self.fc(x.mean(dim=(2, 3)))


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, std=0.5)
    return module


def model_state(model: nn.Module) -> dict:
    """Everything attribution must leave alone."""
    return {
        "modules": [(name, id(m), type(m)) for name, m in model.named_modules()],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": hook_count(model),
    }


def hook_count(model: nn.Module) -> int:
    from torch.nn.modules import module as m

    total = sum(
        len(getattr(mod, attr))
        for mod in model.modules()
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_state_dict_hooks", "_load_state_dict_pre_hooks")
    )
    total += len(m._global_forward_hooks) + len(m._global_forward_pre_hooks)
    total += len(m._global_backward_hooks) + len(m._global_backward_pre_hooks)
    return total


def assert_same_state(before: dict, after: dict) -> None:
    assert after["modules"] == before["modules"]
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grads"]), "a parameter's .grad was written"
    assert after["hooks"] == before["hooks"]
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), f"{key} changed"
    assert torch._C._len_torch_function_stack() == 0, "a TorchFunctionMode is still active"


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))
