"""Checkpoints: a state dict loaded over the built model (torch.load with
weights_only=True, wrapper prefixes stripped, mismatches named), or, with
explicit trust, a whole pickled model."""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import SaliencyError

if TYPE_CHECKING:
    from ..config import ModelConfig

_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def read_checkpoint(path: str, *, trust: bool) -> Any:
    """torch.load with weights_only=True; unpickling objects needs `trust`."""
    if not Path(path).is_file():
        raise SaliencyError(f"model.checkpoint: no such file {path!r}")
    if path.endswith(".safetensors"):  # timm and Hugging Face save weights so: tensors only, no pickle
        return _read_safetensors(path)
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


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise SaliencyError(f"model.checkpoint {path!r}: reading .safetensors needs the safetensors package "
                            "(pip install safetensors; the timm extra brings it)") from exc
    try:
        return load_file(path, device="cpu")
    except Exception as exc:
        raise SaliencyError(f"model.checkpoint {path!r} cannot be read: {exc}") from exc


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


def load_state(model: nn.Module, state: Mapping[str, Any], cfg: ModelConfig) -> nn.Module:
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
