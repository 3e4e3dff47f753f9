"""Speed of deletion + insertion (`saliency evaluate`'s curves) against its
floor and torch-cam.

For a batch of B photos with M maps each, at S steps, in one process,
interleaved (every variant once per round), median over rounds:

  ours       evaluation.perturb.curves with the classifier's score, as
             `saliency evaluate` runs it: masks built on the device from the
             maps' pixel ranks, 2(S+1) inputs per map, CHUNK inputs per call
  ours-auto  the same with the chunk sized by the device (memory.run_in_chunks)
  floor      the 2(S+1) forwards per map it cannot avoid, of inputs made
             beforehand, CHUNK per call
  torch-cam  torchcam.metrics.DeletionInsertionMetric fed the same maps (one
             zero baseline for both curves, ceil(N/S) pixels a step),
             batch_size CHUNK

The maps are random: what they rank does not change the cost. Target:
ours <= 1.15 x floor.

    python benchmarks/evaluate.py                                # CPU, EfficientNet-Lite0, 4 photos x 2 maps, S=224
    python benchmarks/evaluate.py --device cuda --batch 32 --maps 8 --chunk 512
    python benchmarks/evaluate.py --model resnet50 --device cuda --batch 32 --maps 8 --chunk 256
    python benchmarks/evaluate.py --steps 8 --batch 2 --maps 1 --repeats 1   # a quick check that it runs

Prints a Markdown table; --json also saves the numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
from contextlib import contextmanager

import torch

from saliency_cli.config import Config
from saliency_cli.data import load_image, normalize, preprocess
from saliency_cli.evaluation.perturb import Batch, curves, pixel_ranks, substrate
from saliency_cli.runtime import prepare_model

from common import build, interleaved_medians, sample_photos, sync

TARGET = 1.15


def photos(count: int, device: torch.device) -> tuple[torch.Tensor, Config]:
    """`count` sample photos (cycling), preprocessed as the default config does."""
    cfg = Config()
    files = sample_photos()
    uint8 = torch.stack([preprocess(load_image(str(files[i % len(files)])), cfg.preprocess)[0] for i in range(count)])
    return normalize(uint8.to(device), cfg.preprocess), cfg


def score_fn(model, targets: torch.Tensor):
    """The classifier score of saliency evaluate: the class probability."""
    def score(inputs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        return model(inputs).float().softmax(dim=1).gather(1, targets[index][:, None])[:, 0]
    return score


def ours(model, x, maps, image_of, targets, steps, chunk):
    def to_input(pixels):
        return pixels  # only used by the black and noise substrates
    fills = {"deletion": substrate("zero", x, to_input, 0), "insertion": substrate("blur", x, to_input, 0)}
    with torch.inference_mode():
        return curves(score_fn(model, targets), Batch(x, image_of, pixel_ranks(maps)), fills, steps, chunk=chunk)


def floor(model, x, total: int, chunk: int):
    """`total` forwards in calls of `chunk`, of an input made beforehand."""
    batch = x[:1].expand(chunk, -1, -1, -1).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for start in range(0, total, chunk):
            model(batch[:min(chunk, total - start)]).float().softmax(dim=1)


def torchcam(model, x, maps, image_of, targets, steps, chunk):
    from torchcam.metrics import DeletionInsertionMetric

    class Extractor:  # hands torch-cam our maps
        def __init__(self):
            self.model = model

        def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
            return [maps]

        def fuse_cams(self, cams):
            return cams[0]

        @contextmanager
        def _hooks_off(self):
            yield

    metric = DeletionInsertionMetric(Extractor(), lambda logits: logits.softmax(-1), steps=steps, batch_size=chunk)
    metric.update(x[image_of].contiguous(memory_format=torch.channels_last), class_idx=targets.tolist())
    return metric.summary()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4, help="photos per batch")
    ap.add_argument("--maps", type=int, default=2, help="maps (methods) per photo")
    ap.add_argument("--steps", type=int, default=224)
    ap.add_argument("--chunk", type=int, default=None, help="inputs per model call (default: 8 on CPU, 256 on CUDA)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-peers", action="store_true", help="skip torch-cam")
    ap.add_argument("--json", default=None, help="also save the numbers here")
    args = ap.parse_args()
    device = torch.device(args.device)
    chunk = args.chunk or (256 if device.type == "cuda" else 8)
    model = prepare_model(build(args.model), device, channels_last=True)
    x, _ = photos(args.batch, device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    maps = torch.rand(args.batch * args.maps, *x.shape[-2:], generator=gen).to(device)
    image_of = torch.arange(args.batch, device=device).repeat_interleave(args.maps)
    with torch.inference_mode():
        targets = model(x).argmax(dim=1)[image_of]
    total = 2 * (args.steps + 1) * len(maps)
    variants = {
        "ours": lambda: ours(model, x, maps, image_of, targets, args.steps, chunk),
        "ours-auto": lambda: ours(model, x, maps, image_of, targets, args.steps, None),
        "floor": lambda: floor(model, x, total, chunk),
    }
    if not args.no_peers and importlib.util.find_spec("torchcam") is not None:
        variants["torch-cam"] = lambda: torchcam(model, x, maps, image_of, targets, args.steps, chunk)
    times = interleaved_medians(variants, args.repeats, device)
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        variants["ours"]()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    report(args, chunk, total, times, peak, device)


def report(args, chunk, total, times, peak, device) -> None:
    maps = args.batch * args.maps
    print(f"deletion + insertion, {args.model}, {device}, {args.batch} photos x {args.maps} maps, S = {args.steps} "
          f"({total} forwards, {chunk} per call); torch {torch.__version__}, {platform.processor() or 'cpu'}, "
          f"{torch.get_num_threads()} threads")
    print("\n| variant | s per batch | ms per map | x floor |\n|---|---|---|---|")
    for label, seconds in times.items():
        print(f"| {label} | {seconds:.3f} | {seconds / maps * 1e3:.1f} | {seconds / times['floor']:.2f} |")
    ratio = times["ours"] / times["floor"]
    print(f"\nours / floor = {ratio:.3f} (target <= {TARGET})" + (f"; ours peak {peak:.0f} MiB" if peak else ""))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "chunk": chunk, "forwards": total, "seconds": times, "ratio": ratio,
                       "peak_mib": peak, "torch": torch.__version__}, fh, indent=1)


if __name__ == "__main__":
    main()
