"""Model sources: where a model comes from, selected by one key of the
config's `model:` section (`arch: resnet50`, `factory: pkg.mod:fn`, ...).

A source is one module in this package with a `@register("key")`ed
function `build(cfg: ModelConfig) -> model`, imported in `__init__.py`; its
key is a field of `ModelConfig` (config.py). A checkpoint (`model.checkpoint`)
loads over whatever the source built (checkpoint.py). A source that knows
how its models want their input (timm's pretrained_cfg) registers
`preprocess(cfg) -> (where from, {PreprocessConfig key: value})` too: those
values fill the preprocessing keys the config leaves unset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import ModelConfig, PreprocessConfig

Build = Callable[["ModelConfig"], Any]
Preprocess = Callable[["ModelConfig"], "tuple[str, dict[str, Any]]"]

_SOURCES: dict[str, Build] = {}
_PREPROCESS: dict[str, Preprocess] = {}
_TASKS: dict[str, str] = {}  # source key -> the only task its models serve


def register(key: str, *, preprocess: Preprocess | None = None,
             task: str | None = None) -> Callable[[Build], Build]:
    """Decorator registering `build` as the source selected by `model.<key>`;
    `task`: the config's task must be this one (Ultralytics: detection)."""

    def decorate(build: Build) -> Build:
        if key in _SOURCES:
            raise ValueError(f"model source {key!r} is registered twice")
        _SOURCES[key] = build
        if preprocess is not None:
            _PREPROCESS[key] = preprocess
        if task is not None:
            _TASKS[key] = task
        return build

    return decorate


def task_of(cfg: ModelConfig) -> tuple[str, str] | None:
    """(source key, task) when the chosen source serves one task only."""
    return next(((key, _TASKS[key]) for key in chosen(cfg) if key in _TASKS), None)


def keys() -> list[str]:
    """The `model:` keys that name a source, in registration order."""
    return list(_SOURCES)


def chosen(cfg: ModelConfig) -> list[str]:
    """The source keys this model config sets (exactly one, once checked)."""
    return [key for key in _SOURCES if getattr(cfg, key, None)]


def build(cfg: ModelConfig) -> Any:
    (key,) = chosen(cfg)
    return _SOURCES[key](cfg)


def fill_preprocess(pre: PreprocessConfig, cfg: ModelConfig) -> None:
    """Give the preprocessing keys the config left unset (`pre.unset`) the
    values the chosen source knows, and note which (`pre.taken`)."""
    keys = chosen(cfg)
    if len(keys) != 1 or keys[0] not in _PREPROCESS or not pre.unset:
        return
    where, values = _PREPROCESS[keys[0]](cfg)
    taken = [key for key in pre.unset if key in values]
    for key in taken:
        setattr(pre, key, values[key])
    pre.taken = (where, taken) if taken else None
    pre.check()
