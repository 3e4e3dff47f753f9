"""Typed configuration: YAML file, then `--set key.path=value`, then the
command's own options, all through one path (`load_config`).

Every section is a dataclass; `schema.from_mapping` turns plain YAML data
into them and rejects unknown keys (naming the key, close matches and the
valid keys) and wrong types. Method parameters live under `methods.<name>`
and are built once, when the config is checked, from the method's own
parameter dataclass in the registry: the config and the Python API validate
parameters the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import tasks
from .config_sections import (  # noqa: F401  (the sections are part of the config's interface)
    DEFAULT_FACTORY,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelConfig,
    OutputConfig,
    PreprocessConfig,
    RuntimeConfig,
)
from .errors import SaliencyError, did_you_mean
from .methods import registry
from .models import sources
from .schema import from_mapping


@dataclass
class Config:
    task: str = "classification"  # a registered task: classification | detection
    model: ModelConfig = field(default_factory=lambda: ModelConfig(factory=DEFAULT_FACTORY))
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    # auto: ImageNet names for a 1000-class classifier, COCO names for a 91-class
    # torchvision detector | imagenet | coco | a text file, one name per line | a list | null
    labels: str | list[str] | None = "auto"
    # methods `saliency explain` runs when no -m/--method is given; null: the task's
    # defaults (classification: gradient, guided-backprop, grad-cam; detection: d-rise)
    run: list[str] | None = None
    # per-method parameters: methods.<name>.<param>
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    output: OutputConfig = field(default_factory=OutputConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        if self.run is None:
            self.run = list(tasks.get(self.task).default_run)
        sources.fill_preprocess(self.preprocess, self.model)

    def check(self) -> None:
        tasks.get(self.task)
        serves = sources.task_of(self.model)
        if serves is not None and serves[1] != self.task:
            raise SaliencyError(f"model.{serves[0]} models are for task: {serves[1]}; this config has task: "
                                f"{self.task}")
        for name in self.run:
            if name != "all":  # every method of the task, as -m all
                self.check_method(name)
        # built (and so validated) once, here; method_params hands out these objects
        self._params = {name: self._make_params(name, values) for name, values in self.methods.items()}

    def asked(self, methods: Sequence[str] | None) -> list[str]:
        """The methods a run was asked for: -m names, else the `run` list (each once)."""
        asked = list(dict.fromkeys(methods or self.run))
        if not asked:
            raise SaliencyError("no method to run: the config's `run` list is empty and no -m was given "
                                "(see `saliency methods`)")
        return asked

    def check_method(self, name: str) -> None:
        """The method exists and explains this config's kind of model."""
        if name not in registry.names():
            raise SaliencyError(did_you_mean(name, [*registry.names(self.task), "all"], what="method"))
        method = registry.get(name)
        if method.task != self.task:
            raise SaliencyError(f"method {name!r} is for task: {method.task}, and this config has task: "
                                f"{self.task}; {self.task} methods: {', '.join(registry.names(self.task))}")

    def method_params(self, name: str) -> Any:
        """The parameter object of one method (its defaults unless `methods.<name>` sets some)."""
        built = self.__dict__.setdefault("_params", {})
        if name not in built:
            built[name] = self._make_params(name, self.methods.get(name, {}))
        return built[name]

    def _make_params(self, name: str, values: dict[str, Any]) -> Any:
        params = registry.get(name).make_params(values, where=f"methods.{name}")
        if hasattr(params, "fit_preprocess"):  # parameters given in pixel values (a black baseline)
            params.fit_preprocess(self.preprocess)
        return params

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                options: Mapping[str, Any] | None = None) -> Config:
    """Read YAML (or start from the built-in defaults), apply `key.path=value`
    overrides (`--set`), then `options` (a command's own options, as
    {"runtime.batch_size": 16}), and validate everything together."""
    data = _read_yaml(Path(path)) if path is not None else {}
    for item in overrides:
        apply_override(data, item)
    for key, value in (options or {}).items():
        set_value(data, key, value)
    model = data.get("model")
    if path is None and isinstance(model, dict) and not (set(sources.keys()) & model.keys()
                                                         or model.get("trust_checkpoint")):
        # `--set model.checkpoint=...` on the built-in default: the default model, not none
        data["model"] = {"factory": Config().model.factory, **model}
    try:
        return from_mapping(Config, data, "")
    except SaliencyError as exc:
        raise SaliencyError(f"config: {exc}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SaliencyError(f"cannot read config {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SaliencyError(f"config {str(path)!r} is not valid YAML: {_yaml_problem(exc)}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SaliencyError(f"config {str(path)!r}: expected a mapping at the top level")
    return loaded


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: what is wrong and where (PyYAML's own text spans several
    lines, with a caret under the spot)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML
    (`16` is an int, `[256,256]` a list, `true` a bool)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise SaliencyError(f"--set expects key.path=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    set_value(data, key.strip(), value)


def set_value(data: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted `key` (a.b.c) in a nested dict, making sections as needed."""
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise SaliencyError(f"--set {key}: {where!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def dump_config(cfg: Config) -> str:
    """The effective configuration as YAML (what `saliency config` prints),
    with every method's parameters filled in with their defaults."""
    data = cfg.to_dict()
    data["methods"] = {name: dataclasses.asdict(cfg.method_params(name)) for name in registry.names()}
    taken = cfg.preprocess.taken
    note = f"# preprocess {', '.join(taken[1])}: from {taken[0]}\n" if taken else ""
    return note + yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


class _Dumper(yaml.SafeDumper):
    """Block style, except lists of plain values on one line: [224, 224]."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(isinstance(v, (str, int, float, bool)) or v is None for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)
