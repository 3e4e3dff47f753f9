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
from typing import Any, Literal

import yaml

from . import tasks
from .errors import SaliencyError
from .methods import registry
from .models import sources
from .schema import from_mapping

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DEFAULT_FACTORY = "saliency_cli.models:efficientnet_lite0"


@dataclass
class ModelConfig:
    """Where the model comes from: exactly one source key (`arch` or
    `factory`: models/sources.py), or a trusted pickled `checkpoint` on its own."""

    arch: str | None = None  # torchvision builder name, e.g. resnet50
    weights: str | None = None  # torchvision weights enum name, e.g. IMAGENET1K_V2 or DEFAULT
    factory: str | None = None  # "package.module:callable" returning an nn.Module
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the builder or factory
    checkpoint: str | None = None  # state-dict file loaded over the built model
    num_classes: int | None = None  # torchvision architectures only
    strip_prefixes: list[str] = field(default_factory=lambda: ["module.", "_orig_mod."])
    trust_checkpoint: bool = False  # allow unpickling a whole model (runs code from the file)

    def check(self) -> None:
        chosen = sources.chosen(self)
        if len(chosen) > 1:
            raise SaliencyError(f"model: give either {' or '.join(repr(k) for k in chosen)}, "
                                f"{'not both' if len(chosen) == 2 else 'only one'}")
        if not chosen and not (self.checkpoint and self.trust_checkpoint):
            raise SaliencyError(
                "model: name an 'arch' (torchvision), a 'factory' (package.module:callable),"
                " or a pickled 'checkpoint' with 'trust_checkpoint: true'"
            )
        if self.weights and not self.arch:
            raise SaliencyError("model.weights applies to torchvision 'arch' models only")
        if self.weights and self.checkpoint:
            raise SaliencyError("model: give either 'weights' or 'checkpoint', not both")


@dataclass
class PreprocessConfig:
    """How a photo becomes the model input. `stretch` resizes the whole photo
    to `size`, so every pixel is explained and maps project back onto it;
    `center-crop` resizes the shorter side to size/crop_fraction and crops."""

    size: list[int] | int = field(default_factory=lambda: [224, 224])  # [height, width] or one int
    resize: Literal["stretch", "center-crop"] = "stretch"
    crop_fraction: float = 0.875
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    # task: detection only. Detectors get the photo itself, in [0,1] (torchvision
    # detectors resize and normalise inside); max_size caps its longer side.
    max_size: int | None = None

    def check(self) -> None:
        if isinstance(self.size, int):
            self.size = [self.size, self.size]
        if len(self.size) != 2 or min(self.size) < 8:
            raise SaliencyError(f"preprocess.size: expected [height, width] >= 8, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise SaliencyError("preprocess.mean and preprocess.std need 3 values (std > 0)")
        if not 0 < self.crop_fraction <= 1:
            raise SaliencyError("preprocess.crop_fraction must be in (0, 1]")
        if self.max_size is not None and self.max_size < 8:
            raise SaliencyError("preprocess.max_size must be >= 8")


@dataclass
class OutputConfig:
    png: bool = True  # heatmap PNG at the photo's original size
    npy: bool = True  # raw float32 map at model-input resolution
    overlay: bool = True  # blend the heatmap over the photo (false: bare heatmap)
    alpha: float = 0.5  # heatmap opacity in the overlay
    colormap: Literal["jet", "viridis", "inferno", "gray"] = "jet"  # signed maps: blue-white-red
    # display scale: the map's value at this percentile is the top colour; null:
    # 99 for pixel-space methods (as the SmoothGrad paper shows them), 100 otherwise
    clip_percentile: float | None = None
    grid: bool = False  # OUT/<image>/grid.png: the photo and every method side by side
    report: bool = False  # OUT/report.html: every image and method, browsable

    def check(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise SaliencyError("output.alpha must be between 0 and 1")
        if self.clip_percentile is not None and not 50 <= self.clip_percentile <= 100:
            raise SaliencyError("output.clip_percentile must be between 50 and 100")
        if self.grid and not self.png:
            raise SaliencyError("output.grid needs output.png")
        if not (self.png or self.npy):
            raise SaliencyError("output: at least one of png and npy must be true")


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 8
    workers: int | None = None  # image-decoding processes; null: cores torch leaves idle (CPU), up to 4 (CUDA)
    seed: int = 0
    target: int | str = "predicted"  # predicted | class index | class name
    top_k: int = 5
    # classifiers: weights and inputs in channels-last memory order (0.75-0.97x
    # the time on five convnets, benchmarks/layouts.py; same maps to rounding)
    channels_last: bool = True
    # classifiers: autocast to bfloat16 (float16 where a GPU lacks it); 0.45-0.68x
    # the time on a CPU with bfloat16 units, and the maps change (README)
    amp: bool = False

    def check(self) -> None:
        if self.batch_size < 1:
            raise SaliencyError("runtime.batch_size must be >= 1")
        if self.workers is not None and self.workers < 0:
            raise SaliencyError("runtime.workers must be >= 0")
        if self.top_k < 1:
            raise SaliencyError("runtime.top_k must be >= 1")


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

    def check(self) -> None:
        tasks.get(self.task)
        for name in self.run:
            self.check_method(name)
        # built (and so validated) once, here; method_params hands out these objects
        self._params = {name: self._make_params(name, values) for name, values in self.methods.items()}

    def check_method(self, name: str) -> None:
        """The method exists and explains this config's kind of model."""
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
    if path is None and isinstance(model, dict) and not ({"arch", "factory"} & model.keys()
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
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


class _Dumper(yaml.SafeDumper):
    """Block style, except lists of plain values on one line: [224, 224]."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(isinstance(v, (str, int, float, bool)) or v is None for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)
