"""The timm source: `model.timm: vit_small_patch16_224` (a timm model name,
with or without a weights tag such as `.augreg_in21k_ft_in1k`), with
constructor `kwargs` (`img_size`, `embed_dim`, `reg_tokens`...),
`num_classes`, `pretrained` and a `checkpoint` loaded over it.

timm is an optional extra (`pip install 'saliency-cli[timm]'`), imported
only when a config names a timm model. Nothing is ever downloaded:
`pretrained: true` loads timm's weights from the local caches (the Hugging
Face hub cache, then torch hub's) and otherwise says how to get them. The
model's pretrained_cfg gives the preprocessing the config leaves unset:
input size (`kwargs.img_size` wins), mean, std, crop fraction, interpolation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import SaliencyError, did_you_mean
from .sources import register

if TYPE_CHECKING:
    from ..config import ModelConfig

_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")


def _timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise SaliencyError("model.timm needs the timm package: pip install 'saliency-cli[timm]'") from exc
    return timm


def _checked(name: str) -> Any:
    """timm, once `name` is known to it (its architecture part: tags vary)."""
    timm = _timm()
    arch, _tag = timm.models.split_model_name_tag(name)
    if not timm.is_model(arch):
        raise SaliencyError(f"model.timm: {did_you_mean(arch, timm.list_models(), what='timm model', list_valid=False)}"
                            "; `python -c \"import timm; print(timm.list_models('vit*'))\"` lists them")
    return timm


def preprocess(cfg: ModelConfig) -> tuple[str, dict[str, Any]]:
    """The input the model was trained on, from its pretrained_cfg."""
    pretrained = _checked(cfg.timm).models.get_pretrained_cfg(cfg.timm)
    values: dict[str, Any] = {}
    if pretrained is not None:
        values = {"size": list(pretrained.input_size[1:]), "mean": list(pretrained.mean),
                  "std": list(pretrained.std), "crop_fraction": pretrained.crop_pct}
        if pretrained.interpolation in _INTERPOLATIONS:
            values["interpolation"] = pretrained.interpolation
    size = cfg.kwargs.get("img_size")
    if size is not None:  # the model is built for this size, whatever it was trained on
        values["size"] = [size, size] if isinstance(size, int) else list(size)
    return f"timm's pretrained_cfg of {cfg.timm}" + (" and model.kwargs.img_size" if size else ""), values


@register("timm", preprocess=preprocess)
def build(cfg: ModelConfig) -> nn.Module:
    timm = _checked(cfg.timm)
    kwargs = dict(cfg.kwargs)
    if cfg.num_classes is not None:
        kwargs["num_classes"] = cfg.num_classes
    if cfg.pretrained:
        overlay = {**kwargs.get("pretrained_cfg_overlay", {}), "file": cached_weights(timm, cfg.timm)}
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    try:
        return timm.create_model(cfg.timm, **kwargs)
    except Exception as exc:  # a bad keyword, a shape timm rejects: say which model, not "internal error"
        raise SaliencyError(f"model.timm {cfg.timm}: timm.create_model raised {type(exc).__name__}: {exc}") from exc


def cached_weights(timm: Any, name: str) -> str:
    """The file of timm's weights for `name` in a local cache, or one line
    saying how to get it: nothing is downloaded at run time."""
    pretrained = timm.models.get_pretrained_cfg(name)
    if pretrained is None or not (pretrained.hf_hub_id or pretrained.url):
        raise SaliencyError(f"model.pretrained: timm has no pretrained weights for {name}; give a state-dict file "
                            "as model.checkpoint")
    found = _hf_cached(pretrained.hf_hub_id, pretrained.hf_hub_filename) or _hub_cached(pretrained.url)
    if found:
        return found
    raise SaliencyError(
        f"model.pretrained: timm's weights for {name} are not in the local caches ({_hf_cache_dir()}, "
        f"{Path(torch.hub.get_dir()) / 'checkpoints'}) and saliency never downloads; fetch them once with network "
        f"access (python -c \"import timm; timm.create_model('{name}', pretrained=True)\") or give the file as "
        "model.checkpoint")


def _hf_cached(hub_id: str | None, filename: str | None) -> str | None:
    if not hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, _, revision = hub_id.partition("@")
    for name in dict.fromkeys(filter(None, (filename, "model.safetensors", "pytorch_model.bin"))):
        path = try_to_load_from_cache(repo, name, revision=revision or None)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _hub_cached(url: str | None) -> str | None:
    if not url:
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    return str(path) if path.is_file() else None


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:
        return "the Hugging Face hub cache"
    return str(constants.HF_HUB_CACHE)
