"""The torchvision source: `model.arch: resnet50` with optional `weights`,
`num_classes` and constructor `kwargs`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import SaliencyError, did_you_mean
from .sources import register

if TYPE_CHECKING:
    from ..config import ModelConfig


@register("arch")
def build(cfg: ModelConfig) -> nn.Module:
    return build_torchvision(cfg.arch, cfg.weights, cfg.num_classes, cfg.kwargs)


def build_torchvision(arch: str, weights: str | None, num_classes: int | None,
                      kwargs: Mapping[str, Any]) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models()
    if arch not in available:
        raise SaliencyError(f"model.arch: {did_you_mean(arch, available, what='torchvision model')}")
    kwargs = dict(kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    weight_enum: Any = None
    if weights:
        enum = torchvision.models.get_model_weights(arch)
        try:
            weight_enum = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
        except KeyError:
            names = [w.name for w in enum] + ["DEFAULT"]
            raise SaliencyError(f"model.weights: {did_you_mean(weights, names, what='weights')}") from None
    try:
        return torchvision.models.get_model(arch, weights=weight_enum, **kwargs)
    except (OSError, RuntimeError) as exc:
        if weight_enum is None:
            raise SaliencyError(f"model.arch {arch}: {exc}") from exc
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise SaliencyError(
            f"cannot get torchvision weights {weight_enum} ({exc}). They download on first use "
            f"into {hub}; offline, copy the file there or use model.checkpoint"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise SaliencyError(f"model.arch {arch}: {exc}") from exc


