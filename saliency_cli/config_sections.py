"""The config's sections: where the model comes from, how a photo becomes
its input, what is written, and how the run computes. Each is a dataclass
built strictly by schema.from_mapping and checked by its `check()`; the
whole config (config.Config) holds one of each.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import SaliencyError
from .models import sources

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DEFAULT_FACTORY = "saliency_cli.models:efficientnet_lite0"
_FALLBACK = {"size": [224, 224], "crop_fraction": 0.875, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
             "interpolation": "bilinear", "max_size": None}


@dataclass
class ModelConfig:
    """Where the model comes from: exactly one source key (`arch`, `factory`
    or `timm`: models/sources.py), or a trusted pickled `checkpoint` on its own."""

    arch: str | None = None  # torchvision builder name, e.g. resnet50
    weights: str | None = None  # torchvision weights enum name, e.g. IMAGENET1K_V2 or DEFAULT
    factory: str | None = None  # "package.module:callable" returning an nn.Module
    # an Ultralytics detection model: a trained .pt (trust_checkpoint: true: it is a pickle) or a model
    # .yaml such as yolov8n.yaml (random weights); pip install 'saliency-cli[ultralytics]'
    ultralytics: str | None = None
    timm: str | None = None  # timm model name, e.g. vit_small_patch16_224 (pip install 'saliency-cli[timm]')
    pretrained: bool = False  # timm: its weights, from the local cache only (never downloaded)
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the builder, factory or timm.create_model
    checkpoint: str | None = None  # state-dict file loaded over the built model
    num_classes: int | None = None  # torchvision and timm models
    strip_prefixes: list[str] = field(default_factory=lambda: ["module.", "_orig_mod."])
    trust_checkpoint: bool = False  # allow unpickling a whole model (runs code from the file)

    def check(self) -> None:
        chosen = sources.chosen(self)
        if len(chosen) > 1:
            raise SaliencyError(f"model: give either {' or '.join(repr(k) for k in chosen)}, "
                                f"{'not both' if len(chosen) == 2 else 'only one'}")
        if not chosen and not (self.checkpoint and self.trust_checkpoint):
            raise SaliencyError(
                "model: name an 'arch' (torchvision), a 'factory' (package.module:callable), a 'timm'"
                " model, an 'ultralytics' model, or a pickled 'checkpoint' with 'trust_checkpoint: true'"
            )
        if self.weights and not self.arch:
            raise SaliencyError("model.weights applies to torchvision 'arch' models only")
        if self.weights and self.checkpoint:
            raise SaliencyError("model: give either 'weights' or 'checkpoint', not both")
        if self.ultralytics and self.checkpoint:
            raise SaliencyError("model.ultralytics names the whole model (a .pt or a .yaml): drop model.checkpoint")
        if self.pretrained and not self.timm:
            raise SaliencyError("model.pretrained applies to 'timm' models only (torchvision: model.weights)")
        if self.pretrained and self.checkpoint:
            raise SaliencyError("model: give either 'pretrained: true' or 'checkpoint', not both")


@dataclass
class PreprocessConfig:
    """How a photo becomes the model input. `stretch` resizes the whole photo
    to `size`, so every pixel is explained and maps project back onto it;
    `center-crop` resizes the shorter side to size/crop_fraction and crops.
    Keys left unset (null) take the model source's values where it knows
    them (timm: the model's pretrained_cfg), else those of _FALLBACK."""

    size: list[int] | int | None = None  # [height, width] or one int; default [224, 224]
    resize: Literal["stretch", "center-crop"] = "stretch"
    crop_fraction: float | None = None  # default 0.875
    mean: list[float] | None = None  # default ImageNet's
    std: list[float] | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos"] | None = None  # default bilinear
    # task: detection only. Detectors get the photo itself, in [0,1] (torchvision
    # detectors resize and normalise inside); max_size caps its longer side.
    max_size: int | None = None

    def __post_init__(self) -> None:  # plain attributes, not fields: the dump shows the values only
        self.unset = [key for key in _FALLBACK if getattr(self, key) is None]
        self.taken: tuple[str, list[str]] | None = None  # (from where, keys): set by sources.fill_preprocess
        for key in self.unset:
            setattr(self, key, copy.deepcopy(_FALLBACK[key]))

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
    png: bool = True  # heatmap PNG at the photo's size (capped by png_max_side)
    npy: bool = True  # raw float32 map at model-input resolution
    overlay: bool = True  # blend the heatmap over the photo (false: bare heatmap)
    alpha: float = 0.5  # heatmap opacity in the overlay
    colormap: Literal["jet", "viridis", "inferno", "gray"] = "jet"  # signed maps: blue-white-red
    # display scale: the map's value at this percentile is the top colour; null:
    # 99 for pixel-space methods (as the SmoothGrad paper shows them), 100 otherwise
    clip_percentile: float | None = None
    grid: bool = False  # OUT/<image>/grid.png: the photo and every method side by side
    report: bool = False  # OUT/report.html: every image and method, browsable
    # PNGs of larger photos are drawn at this longer side (the .npy never changes); null: full size
    png_max_side: int | None = 2048
    # fast: fpng with the model on the CPU, ISA-L's zlib (releases the GIL) on a GPU, 10-20x faster than
    # zlib (png.py); zlib: Pillow's, files 5-15% smaller
    png_compression: Literal["fast", "zlib"] = "fast"
    # where overlays are drawn: auto (on the GPU when the model runs on one, else numpy on the
    # writer threads) | numpy | torch (on the model's device)
    renderer: Literal["auto", "numpy", "torch"] = "auto"

    def check(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise SaliencyError("output.alpha must be between 0 and 1")
        if self.png_max_side is not None and self.png_max_side < 16:
            raise SaliencyError("output.png_max_side must be >= 16 (or null: full size)")
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
    # where JPEGs are decoded: auto (on the GPU, with nvjpeg, when the model runs on CUDA;
    # else in the decoding workers) | cpu | device (on the model's device, whatever it is)
    decode: Literal["auto", "cpu", "device"] = "auto"
    # the CLI keeps memory freed after a batch for the next one instead of returning it to the
    # system (glibc on Linux): attribution 1.2-1.6x faster on 2 CPU cores, peak memory 7-19% higher
    reuse_memory: bool = True

    def check(self) -> None:
        if self.batch_size < 1:
            raise SaliencyError("runtime.batch_size must be >= 1")
        if self.workers is not None and self.workers < 0:
            raise SaliencyError("runtime.workers must be >= 0")
        if self.top_k < 1:
            raise SaliencyError("runtime.top_k must be >= 1")
