"""run.py's variants for integrated gradients, RISE, occlusion, Grad-CAM++,
LayerCAM, Score-CAM and Eigen-CAM: ours, the floor of model passes each
cannot avoid, and the peers that implement the same method.

Floors (per batch of B images):
  integrated-gradients  1 forward + `steps` x B forward + backward passes to the input
  rise, occlusion       1 forward + N x B forwards of masked copies (N masks, N window positions)
  score-cam             1 forward + K x B forwards of masked copies (K channels of the layer)
  grad-cam-plus-plus,   forward + backward to the layer (as Grad-CAM)
  layer-cam
  eigen-cam             one forward
The one forward of the images themselves picks the targets and gives the
predictions. The repeated passes take the fastest of 4, 8, 16 and 32 images
per call (chosen once, on the first call), as SmoothGrad's floor in run.py does.

The perturbation methods get tiny settings by default (`--ig-steps`,
`--rise-masks`, `--occlusion-window`, `--score-cam-images`): at the
methods' own defaults one CPU batch takes minutes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import saliency_cli as sal
from saliency_cli.methods.integrated_gradients import IntegratedGradientsParams, baseline
from saliency_cli.methods.layers import probe
from saliency_cli.methods.masks import RiseMasks

from common import forward, fwd_bwd, fwd_bwd_layer

METHODS = ("integrated-gradients", "rise", "occlusion", "grad-cam-plus-plus", "layer-cam", "score-cam",
           "eigen-cam")
TARGETS = {name: 1.10 for name in METHODS}
CHUNKS = (4, 8, 16, 32)


def add_arguments(ap) -> None:
    ap.add_argument("--ig-steps", type=int, default=16, help="integrated-gradients steps (default 50 is slow on CPU)")
    ap.add_argument("--rise-masks", type=int, default=64, help="RISE masks (default 4000 is slow on CPU)")
    ap.add_argument("--occlusion-window", type=int, default=56)
    ap.add_argument("--occlusion-stride", type=int, default=28)
    ap.add_argument("--score-cam-images", type=int, default=1,
                    help="Score-CAM explains this many images of the batch (K forwards each)")


def params(name: str, args) -> dict:
    return {"integrated-gradients": {"steps": args.ig_steps}, "rise": {"num_masks": args.rise_masks},
            "occlusion": {"window": args.occlusion_window, "stride": args.occlusion_stride}}.get(name, {})


def images_for(name: str, x: torch.Tensor, args) -> torch.Tensor:
    return x[:args.score_cam_images] if name == "score-cam" else x


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ------------------------------------------------------------------ floors


_FASTEST: dict[tuple, int] = {}


def fastest(key: tuple, passes: Callable[[int], None]) -> None:
    """Run `passes(chunk)` at the fastest chunk of CHUNKS, found on the first call."""
    if key not in _FASTEST:
        timings = {}
        for chunk in CHUNKS:
            _sync_cuda()
            start = time.perf_counter()
            passes(chunk)
            _sync_cuda()
            timings[chunk] = time.perf_counter() - start
        _FASTEST[key] = min(timings, key=timings.get)
    passes(_FASTEST[key])


def _sync_cuda() -> None:
    """Wait for queued CUDA work, where there is a GPU (`passes` does not say where it ran)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def copies(model, x, t, count: int, chunk: int, *, backward: bool) -> None:
    """`count` perturbed copies of every image (x scaled by 0.5), `chunk` per
    model call; forward only, or forward + backward to the input."""
    total = count * x.shape[0]
    for start in range(0, total, chunk):
        index = torch.arange(start, min(total, start + chunk), device=x.device) % x.shape[0]
        if backward:
            fwd_bwd(model, x[index] * 0.5, t[index])
        else:
            forward(model, x[index] * 0.5, t[index])


def floor(name, model, x, t, layer, args) -> Callable[[], None]:
    if name in ("grad-cam-plus-plus", "layer-cam"):
        return lambda: fwd_bwd_layer(model, x, t, layer)
    if name == "eigen-cam":
        return lambda: forward(model, x, t)
    if name == "integrated-gradients":
        count, backward = args.ig_steps, True
    elif name == "rise":
        count, backward = args.rise_masks, False
    elif name == "occlusion":
        count, backward = positions(x, args), False
    else:  # score-cam: one forward, then one per channel of the layer
        count, backward = channels(model, x, layer), False
    key = (name, id(model), tuple(x.shape), count)

    def run() -> None:
        forward(model, x, t)
        fastest(key, lambda chunk: copies(model, x, t, count, chunk, backward=backward))

    return run


def positions(x, args) -> int:
    per_side = [-(-(size - args.occlusion_window) // args.occlusion_stride) + 1 for size in x.shape[-2:]]
    return per_side[0] * per_side[1]


def channels(model, x, layer) -> int:
    out = []
    handle = layer.register_forward_hook(lambda _m, _i, o: out.append(o.shape[1]))
    try:
        forward(model, x[:1], None)
    finally:
        handle.remove()
    return out[-1]


# ------------------------------------------------------------------ peers


def peers(name, model, x, t, layer_name, args) -> dict[str, Callable[[], object]]:
    """The peer libraries on `model` (the user's copy, parameters requiring grad)."""
    v: dict[str, Callable[[], object]] = {}
    layer = model.get_submodule(layer_name)
    if name == "integrated-gradients" and installed("captum"):
        from captum.attr import IntegratedGradients

        black = baseline(x, IntegratedGradientsParams())  # our default baseline, for the same work
        for size in (None, 8):  # captum's default (every step at once), then our CPU chunk
            v[f"captum internal_batch_size={size}"] = lambda size=size: IntegratedGradients(model).attribute(
                x, baselines=black, target=t, n_steps=args.ig_steps, internal_batch_size=size)
    if name == "occlusion" and installed("captum"):
        from captum.attr import Occlusion

        window, stride = args.occlusion_window, args.occlusion_stride
        v["captum"] = lambda: Occlusion(model).attribute(x, sliding_window_shapes=(3, window, window),
                                                         strides=(3, stride, stride), baselines=0.0, target=t)
    if name == "rise" and args.one_mask_per_call:
        v["one mask per call"] = lambda: rise_one_mask_per_call(model, x, t, args.rise_masks)
    kinds = {"grad-cam-plus-plus": ("GradCAMpp", "GradCAMPlusPlus"), "layer-cam": ("LayerCAM", "LayerCAM"),
             "score-cam": ("ScoreCAM", "ScoreCAM"), "eigen-cam": (None, "EigenCAM")}
    torch_cam, grad_cam = kinds.get(name, (None, None))
    if torch_cam and installed("torchcam"):
        v["torch-cam"] = lambda: torchcam_run(torch_cam, model, x, t, layer_name)
    if grad_cam and installed("pytorch_grad_cam"):
        v["pytorch-grad-cam"] = lambda: pytorch_grad_cam_run(grad_cam, model, x, t, layer)
    return v


def rise_one_mask_per_call(model, x, t, n):
    """RISE as a loop over masks: one masked image per model call."""
    masks = RiseMasks(n, 7, 0.5, tuple(x.shape[-2:]), 0, x.device)(0, n)
    saliency = torch.zeros(x.shape[0], *x.shape[-2:], device=x.device)
    with torch.no_grad():
        for i in range(x.shape[0]):
            for j in range(n):
                prob = model(x[i:i + 1] * masks[j]).softmax(dim=1)[0, t[i]]
                saliency[i] += prob * masks[j]
    return saliency


def torchcam_run(kind, model, x, t, layer_name):
    import torchcam.methods as tm

    extractor = getattr(tm, kind)(model, target_layer=layer_name)
    gradient = kind != "ScoreCAM"
    try:
        with torch.enable_grad() if gradient else torch.no_grad():
            scores = model(x.detach().requires_grad_(gradient))
        maps = extractor(t.tolist(), scores)
        return [F.interpolate(m[:, None], size=x.shape[-2:], mode="bilinear") for m in maps]
    finally:
        extractor.remove_hooks()


def pytorch_grad_cam_run(kind, model, x, t, layer):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # its ScoreCAM draws a progress bar per image: keep it (it is part of its cost), out of the report
    with getattr(pytorch_grad_cam, kind)(model=model, target_layers=[layer]) as cam, \
            contextlib.redirect_stderr(io.StringIO()):
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t])


# ------------------------------------------------------------------ all of one method


def variants(name, model, peer_model, x, t, args) -> dict[str, Callable[[], object]]:
    """{label: callable}: ours (the frozen model, as the CLI prepares it), 'floor', then the peers."""
    x, t = images_for(name, x, args), images_for(name, t, args)
    layer_name = probe(model, x).default_layer()
    extra = params(name, args)
    v = {"ours": lambda: sal.attribute(model, x, name, targets=t, **extra),
         "floor": floor(name, model, x, t, model.get_submodule(layer_name), args)}
    return v | peers(name, peer_model, x, t, layer_name, args)
