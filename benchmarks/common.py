"""What the benchmark scripts share: the models they build, the sample
photos, timing on a device (CUDA work is asynchronous: wait for it), and the
floors (the bare model passes a method cannot avoid)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def build(name: str) -> torch.nn.Module:
    """efficientnet_lite0 (offline ImageNet weights) or any torchvision
    architecture by name, untrained (weights=None: nothing is downloaded)."""
    if name == "efficientnet_lite0":
        from saliency_cli.models import efficientnet_lite0

        return efficientnet_lite0()
    import torchvision

    return torchvision.models.get_model(name, weights=None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn`, in ms (CPU work: nothing to wait for)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def sample_photos() -> list[Path]:
    """The bundled photos (sample_images/), sorted."""
    return sorted(p for p in (ROOT / "sample_images").iterdir() if p.suffix in (".png", ".jpg"))


def copy_photos(folder: Path, count: int, jpeg: bool = False) -> Path:
    """A folder of `count` photos, cycling through the samples (three PNGs
    and a JPEG); with `jpeg`, all saved as JPEGs (quality 90), the format
    of cameras' photos and of most datasets."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = sample_photos()
    for i in range(count):
        src = photos[i % len(photos)]
        if jpeg:
            Image.open(src).convert("RGB").save(folder / f"{i:04d}.jpg", quality=90)
        else:
            Image.open(src).save(folder / f"{i:04d}{src.suffix}")
    return folder


def interleaved_medians(variants: dict[str, Callable[[], object]], repeats: int,
                        device: torch.device) -> dict[str, float]:
    """Seconds per call of each variant: one warm-up round, then `repeats`
    rounds taking every variant in turn (so drift hits all alike); medians."""
    times: dict[str, list[float]] = {label: [] for label in variants}
    for round_ in range(repeats + 1):
        for label, fn in variants.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if round_:
                times[label].append(time.perf_counter() - start)
    return {label: statistics.median(ts) for label, ts in times.items()}


# ------------------------------------------------------------------ floors: the model passes a method cannot avoid


def fwd_bwd(model, x, t):
    """One forward and one backward to the input: what every gradient method must do."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    torch.autograd.grad(logits.gather(1, t[:, None]).sum(), x)


def forward(model, x, t):
    with torch.no_grad():
        model(x)


def fwd_bwd_layer(model, x, t, layer):
    """Forward, then backward from the logit to one layer's output only."""
    captured = []

    def hook(_m, _i, out):
        out = out.detach().requires_grad_(True)
        captured.append(out)
        return out

    handle = layer.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    torch.autograd.grad(logits.gather(1, t[:, None]).sum(), captured[-1])
