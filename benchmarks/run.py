"""Speed of every method against its floor and the peer libraries.

For each method, in one process, interleaved (every variant once per round),
median over rounds of the time for one batch:

  ours    saliency_cli.attribute (or explain_detections)
  floor   the bare model passes the method cannot avoid:
            gradient family: one forward + backward to the input
            smoothgrad: n of those, at the best chunking of the ones tried
            cam: one forward; grad-cam: forward + backward to the layer
            d-rise: N masked forwards of the detector, batched, masks made beforehand
            integrated gradients, RISE, occlusion, Grad-CAM++, LayerCAM, Score-CAM,
            Eigen-CAM: see method_variants.py
  peers   captum, pytorch-grad-cam (package grad-cam), torch-cam, where they
          implement the same method, on the same model, inputs and targets

Then end-to-end `saliency explain` throughput on a folder (PNG and .npy
written) against attribution alone, and the peak memory of each method.

    python benchmarks/run.py                      # CPU, EfficientNet-Lite0, batch 8
    python benchmarks/run.py --model resnet50 --device cuda --batch 32
    python benchmarks/run.py --methods grad-cam cam --repeats 7
    python benchmarks/run.py --methods rise score-cam --rise-masks 256 --one-mask-per-call

Prints a Markdown report (see BENCHMARKS.md); --json also saves the numbers.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import saliency_cli as sal
from saliency_cli.methods.layers import probe
from saliency_cli.runtime import prepare_model, reuse_freed_memory

import method_variants
from common import ROOT, build, copy_photos, forward, fwd_bwd, fwd_bwd_layer, interleaved_medians, sync

TARGETS = {  # ratio of ours to the floor (or to the reference pass named in the table)
    "gradient": 1.10, "gradient-x-input": 1.10, "deconvnet": 1.10, "guided-backprop": 1.10,
    "smoothgrad": 1.10, "cam": 1.05, "grad-cam": 0.75, "guided-grad-cam": 1.15, "d-rise": 1.15,
} | method_variants.TARGETS


# ------------------------------------------------------------------ models and inputs


# ------------------------------------------------------------------ variants per method


def installed(module: str) -> bool:
    """A peer library is optional (`pip install -e '.[bench]'` brings them all)."""
    return importlib.util.find_spec(module) is not None


def classification_variants(name, model, peer_model, x, t, args) -> dict[str, Callable[[], object]]:
    """{label: callable} for one method; the label 'floor' is the reference pass.
    Peers get `peer_model`, a copy whose parameters require grad, as a user's
    model does (pytorch-grad-cam relies on it); ours and the floors use the
    frozen model, as the CLI does (attribute() freezes a user's model for the
    duration of the call)."""
    if name in method_variants.METHODS:
        return method_variants.variants(name, model, peer_model, x, t, args)
    ca = importlib.import_module("captum.attr") if installed("captum") else None
    layer_name = probe(model, x).default_layer()
    default_layer, peer_layer = model.get_submodule(layer_name), peer_model.get_submodule(layer_name)
    frozen = model
    v: dict[str, Callable] = {"ours": lambda: sal.attribute(frozen, x, name, targets=t, **params(name, args))}
    model = peer_model  # the peers below see the user's model
    if name in ("gradient", "gradient-x-input", "deconvnet", "guided-backprop", "guided-grad-cam"):
        v["floor"] = lambda: fwd_bwd(frozen, x, t)
    if ca is not None:
        peers = {"gradient": lambda: ca.Saliency(model).attribute(x, target=t),
                 "gradient-x-input": lambda: ca.InputXGradient(model).attribute(x, target=t),
                 "deconvnet": lambda: ca.Deconvolution(model).attribute(x, target=t),
                 "guided-backprop": lambda: ca.GuidedBackprop(model).attribute(x, target=t),
                 "guided-grad-cam": lambda: ca.GuidedGradCam(model, peer_layer).attribute(
                     x, target=t, interpolate_mode="bilinear")}
        if name in peers:
            v["captum"] = peers[name]
    if name == "smoothgrad":
        n = args.smoothgrad_n
        total = n * x.shape[0]
        best_of = [c for c in (4, 8, 16, 32) if c <= total]
        v["floor"] = lambda: min_over_chunkings(frozen, x, t, n, best_of)
        if ca is not None:
            # captum at the same chunking as ours: 8 noisy copies per model call
            v["captum"] = lambda: ca.NoiseTunnel(ca.Saliency(model)).attribute(
                x, target=t, nt_type="smoothgrad", nt_samples=n, stdevs=0.5,
                nt_samples_batch_size=max(1, 8 // x.shape[0]))
    if name == "cam":
        v["floor"] = lambda: forward(frozen, x, t)
        if installed("torchcam"):
            v["torch-cam"] = lambda: torchcam_run("CAM", model, x, t, args)
    if name == "grad-cam":
        v["floor"] = lambda: fwd_bwd_layer(frozen, x, t, default_layer)
        v["fwd+bwd to input"] = lambda: fwd_bwd(frozen, x, t)
        if ca is not None:
            v["captum"] = lambda: ca.LayerAttribution.interpolate(
                ca.LayerGradCam(model, peer_layer).attribute(x, target=t, relu_attributions=True),
                tuple(x.shape[-2:]), interpolate_mode="bilinear")
        if installed("pytorch_grad_cam"):
            v["pytorch-grad-cam"] = lambda: pytorch_grad_cam_run(model, x, t, peer_layer)
        if installed("torchcam"):
            v["torch-cam"] = lambda: torchcam_run("GradCAM", model, x, t, args)
    return v


PEERS = ("captum", "pytorch-grad-cam", "torch-cam")  # the labels of the peer libraries' variants

_FLOOR_CHUNK: dict[tuple, int] = {}


def min_over_chunkings(model, x, t, n, sizes):
    """n forward+backward passes of noisy copies at the fastest chunk size
    (found once, on the first call, then reused)."""
    key = (id(model), tuple(x.shape), n)
    if key not in _FLOOR_CHUNK:
        timings = {}
        for size in sizes:
            sync(x.device)
            start = time.perf_counter()
            smoothgrad_passes(model, x, t, n, size)
            sync(x.device)
            timings[size] = time.perf_counter() - start
        _FLOOR_CHUNK[key] = min(timings, key=timings.get)
    smoothgrad_passes(model, x, t, n, _FLOOR_CHUNK[key])


def smoothgrad_passes(model, x, t, n, chunk):
    copies = x.repeat(n, 1, 1, 1)
    targets = t.repeat(n)
    for start in range(0, copies.shape[0], chunk):
        fwd_bwd(model, copies[start:start + chunk] + 0.1, targets[start:start + chunk])


def torchcam_run(kind, model, x, t, args):
    import torchcam.methods as tm

    layer = probe(model, x).default_layer()
    extractor = getattr(tm, kind)(model, target_layer=layer) if kind == "GradCAM" else \
        getattr(tm, kind)(model, target_layer=layer, fc_layer=args.fc_layer)
    try:
        if kind == "GradCAM":
            with torch.enable_grad():
                scores = model(x.detach().requires_grad_(kind == "GradCAM"))
            maps = extractor(t.tolist(), scores)
        else:
            with torch.no_grad():
                scores = model(x)
            maps = extractor(t.tolist(), scores)
        return [F.interpolate(m[:, None], size=x.shape[-2:], mode="bilinear") for m in maps]
    finally:
        extractor.remove_hooks()


def pytorch_grad_cam_run(model, x, t, layer):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t])


def params(name, args):
    return {"n": args.smoothgrad_n} if name == "smoothgrad" else method_variants.params(name, args)


# ------------------------------------------------------------------ d-rise


def d_rise_variants(args, device):
    import torchvision

    from saliency_cli.detectors import as_detector
    from saliency_cli.methods.d_rise import RiseMasks

    torch.manual_seed(0)
    detector = torchvision.models.get_model(args.detector, weights=None, weights_backbone=None,
                                            box_score_thresh=0.0).eval().to(device)
    image = torch.rand(3, args.detector_size, args.detector_size, generator=torch.Generator().manual_seed(0))
    image = image.to(device)
    n, chunk = args.masks, args.mask_batch
    masks = RiseMasks(n, 16, 0.5, tuple(image.shape[-2:]), 0, device)(0, n)
    adapter = as_detector(detector)

    def floor():
        with torch.inference_mode():
            for start in range(0, n, chunk):
                detector(list(image[None] * masks[start:start + chunk, None]))

    def one_mask_per_call():  # how the reference implementation runs
        with torch.inference_mode():
            for i in range(n):
                adapter(image[None] * masks[i:i + 1, None])

    v = {"ours": lambda: sal.explain_detections(detector, image, num_masks=n, mask_batch=chunk,
                                                score_threshold=0.0, max_detections=3),
         "floor": floor}
    if args.one_mask_per_call:
        v["one mask per call"] = one_mask_per_call
    return v


# ------------------------------------------------------------------ timing


def peak_memory(method: str, args) -> float | None:
    """Peak memory of one call above the loaded model, in MiB, in a fresh
    process (CPU: resident set; CUDA: allocator peak)."""
    code = f"""
import resource, sys, torch
sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
import run as b
args = b.parse([*{sys.argv[1:]!r}])
device = torch.device(args.device)
if {method!r} == "d-rise":
    v = b.d_rise_variants(args, device)["ours"]
else:
    model = b.prepare_model(b.build(args.model), device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    x = b.method_variants.images_for({method!r}, x, args)
    t = model(x).argmax(1)
    v = lambda: b.sal.attribute(model, x, {method!r}, targets=t, **b.params({method!r}, args))
if device.type == "cuda":
    torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
    v(); torch.cuda.synchronize(); print((torch.cuda.max_memory_allocated() - base) / 2**20)
else:
    def status(key):
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024
    import gc; gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # Linux: reset the peak resident set (VmHWM)
    base = status("VmRSS:")
    v(); print(status("VmHWM:") - base)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    try:
        return float(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(proc.stderr[-2000:], file=sys.stderr)
        return None


def end_to_end(args, device) -> dict[str, dict[str, float]]:
    """Images per second of `saliency explain` on a folder against the same
    attribution on tensors already on the device; once with PNG and .npy
    written, once with .npy only.

    The run's fixed costs (model loading, worker start-up) are taken out by
    timing folders of N and 2N photos after a warm-up run:
    throughput = N / median(T(2N) - T(N)); attribution alone is timed in the
    same rounds (median).
    """
    from saliency_cli.config import load_config
    from saliency_cli.data import load_image, normalize, preprocess
    from saliency_cli.pipeline import run

    overrides = [f"runtime.batch_size={args.batch}", f"runtime.device={args.device}"]
    if args.model != "efficientnet_lite0":
        overrides += ["model.factory=null", f"model.arch={args.model}"]
    n = args.e2e_images
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for count in (n, 2 * n):
            folders[count] = copy_photos(Path(tmp) / f"in{count}", count, jpeg=args.e2e_jpeg)
        cfg = load_config(None, overrides)
        images = [normalize(preprocess(load_image(str(p)), cfg.preprocess)[0][None], cfg.preprocess)
                  for p in sorted(folders[n].iterdir())]
        # the same memory format as the pipeline uses (runtime.channels_last, on by default)
        fmt = torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format
        batches = [torch.cat(images[i:i + args.batch]).to(device).contiguous(memory_format=fmt)
                   for i in range(0, n, args.batch)]
        model = prepare_model(build(args.model), device, channels_last=cfg.runtime.channels_last)
        variants = {"png+npy": [], "npy only": ["output.png=false"]}
        for method in args.e2e_methods:
            sal.attribute(model, batches[0], method, **params(method, args))  # warm-up
            configs = {name: load_config(None, overrides + extra) for name, extra in variants.items()}
            for name, cfg in configs.items():
                run(cfg, [str(folders[n])], Path(tmp) / f"warm-{method}-{name}", methods=[method])
            attribution_seconds, extra_seconds = [], {name: [] for name in variants}
            host_ms = {name: [] for name in variants}
            for repeat in range(args.e2e_repeats):  # interleaved, like the per-method table
                sync(device)
                start = time.perf_counter()
                for x in batches:
                    sal.attribute(model, x, method, **params(method, args)).cpu()
                sync(device)
                attribution_seconds.append(time.perf_counter() - start)
                for name, cfg in configs.items():
                    elapsed = {}
                    for count, folder in folders.items():
                        start = time.perf_counter()
                        summary = run(cfg, [str(folder)], Path(tmp) / f"out-{method}-{name}-{count}-{repeat}",
                                      methods=[method])
                        elapsed[count] = time.perf_counter() - start
                    extra_seconds[name].append(elapsed[2 * n] - elapsed[n])  # T(2N) - T(N)
                    host_ms[name].append(1000 * host_seconds(summary.profile) / (2 * n))  # one method
            for name in variants:
                result[f"{method}, {name}"] = {"end_to_end": n / statistics.median(extra_seconds[name]),
                                               "attribution": n / statistics.median(attribution_seconds),
                                               "host_ms": statistics.median(host_ms[name])}
    return result


def host_seconds(profile) -> float:
    """The host's work outside attribution in a run (all threads and
    processes): decoding, transfer, rendering, encoding, writing."""
    return sum(profile.seconds[phase] for phase in ("decode", "transfer", "render", "encode", "write"))


def e2e_target(method: str, device: torch.device) -> float:
    """Ratio to attribution-only throughput the whole command should reach:
    on a GPU the host's work overlaps the device's; on a CPU it takes the
    same cores, so the targets are lower and per method."""
    if device.type == "cuda":
        return 0.85
    return {"gradient": 0.80, "grad-cam": 0.65}.get(method, 0.65)


# ------------------------------------------------------------------ report


def machine(device: torch.device) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {torch.get_num_threads()} threads; torch {torch.__version__}, Python {platform.python_version()}"
    if device.type == "cuda":
        text = f"{torch.cuda.get_device_name(device)}; " + text
    return text


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--fc-layer", default=None, help="torch-cam CAM: the classifier's name (default: guessed)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", nargs="*", default=list(TARGETS), help="none: only the end-to-end rows")
    ap.add_argument("--smoothgrad-n", type=int, default=16, help="noise samples (the default 50 takes long on CPU)")
    ap.add_argument("--detector", default="fasterrcnn_mobilenet_v3_large_320_fpn")
    ap.add_argument("--detector-size", type=int, default=320)
    ap.add_argument("--masks", type=int, default=64)
    ap.add_argument("--mask-batch", type=int, default=8)
    ap.add_argument("--one-mask-per-call", action="store_true", help="also time D-RISE and RISE one mask per call")
    method_variants.add_arguments(ap)
    ap.add_argument("--e2e-images", type=int, default=64)
    ap.add_argument("--e2e-methods", nargs="*", default=["gradient", "grad-cam"])
    ap.add_argument("--e2e-repeats", type=int, default=3, help="end-to-end timings: median of this many")
    ap.add_argument("--e2e-jpeg", action="store_true", help="the folder's photos as JPEGs (quality 90), not "
                    "the samples as they are (three PNGs and a JPEG)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-peers", action="store_true", help="time ours and the floors only (no captum, "
                    "pytorch-grad-cam, torch-cam)")
    ap.add_argument("--system-malloc", action="store_true", help="leave glibc's malloc as it is (the CLI's "
                    "runtime.reuse_memory, applied here for every variant alike, is not)")
    ap.add_argument("--json", type=Path, default=None)
    return ap.parse_args(argv)


def main() -> None:
    args = parse()
    device = torch.device(args.device)
    reused = not args.system_malloc and reuse_freed_memory()  # as `saliency explain` runs; the same for all
    model = prepare_model(build(args.model), device)  # eval, frozen: as the CLI prepares it
    peer_model = copy.deepcopy(model).requires_grad_(True)
    if args.fc_layer is None:
        args.fc_layer = {"efficientnet_lite0": "_fc"}.get(args.model, "fc")
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    with torch.no_grad():
        t = model(x).argmax(1)
    print(f"# {args.model}, batch {args.batch} x {args.size}x{args.size}, {args.device}: {machine(device)}; "
          f"freed memory {'reused' if reused else 'returned (glibc default)'}\n")
    if args.methods:
        print("| method | ours (s/batch) | floor (s/batch) | ours / floor | target | other passes and peers "
              "(ratio to ours) | peak MiB |")
        print("|---|---|---|---|---|---|---|")
    results = {}
    for name in args.methods:
        variants = d_rise_variants(args, device) if name == "d-rise" else \
            classification_variants(name, model, peer_model, x, t, args)
        if args.no_peers:
            variants = {label: run for label, run in variants.items() if not label.startswith(PEERS)}
        times = interleaved_medians(variants, args.repeats, device)
        ratio = times["ours"] / times["floor"]
        reference = "fwd+bwd to input" if name == "grad-cam" else "floor"
        target_ratio = times["ours"] / times[reference]
        met = "met" if target_ratio <= TARGETS[name] else "MISSED"
        others = ", ".join(f"{k} {v:.3f}s ({v / times['ours']:.2f}x)" for k, v in times.items()
                           if k not in ("ours", "floor"))
        memory = None if args.no_memory else peak_memory(name, args)
        target_text = f"<= {TARGETS[name]}x {reference}: {target_ratio:.2f}x, {met}"
        print(f"| {name} | {times['ours']:.3f} | {times['floor']:.3f} | {ratio:.2f} | {target_text} | "
              f"{others} | {'' if memory is None else f'{memory:.0f}'} |", flush=True)
        results[name] = {"times": times, "ratio": ratio, "target": TARGETS[name], "target_ratio": target_ratio,
                         "peak_mib": memory}
    if args.e2e_methods:
        print("\n| saliency explain on a folder | images/s | attribution only, images/s | ratio | target | "
              "host ms per image and method |")
        print("|---|---|---|---|---|---|")
        e2e = end_to_end(args, device)
        for method, r in e2e.items():
            ratio = r["end_to_end"] / r["attribution"]
            target = e2e_target(method.split(",")[0], device)
            kind = "JPEG photos" if args.e2e_jpeg else "photos"
            print(f"| -m {method} ({args.e2e_images} {kind}) | {r['end_to_end']:.1f} | "
                  f"{r['attribution']:.1f} | {ratio:.2f} | >= {target}: {'met' if ratio >= target else 'MISSED'} | "
                  f"{r['host_ms']:.1f} |")
        results["end_to_end"] = e2e
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "machine": machine(device),
                                         "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
