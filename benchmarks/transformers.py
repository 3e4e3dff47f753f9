"""Speed of the transformer paths against their floors and pytorch-grad-cam.

On a ViT with random weights (nothing is downloaded), one batch, interleaved
medians (every variant once per round):

  grad-cam           ours: sal.attribute(..., "grad-cam") at the default layer
                     floor: forward + backward to that layer, with a hook by hand
                     peer: pytorch-grad-cam's GradCAM with its ViT reshape_transform
  attention-rollout  ours: sal.attribute(..., "attention-rollout")
                     floors: the model's own (fused) forward, and the forward with
                     attention probabilities formed (MultiheadAttention with
                     need_weights, timm's fused_attn off): what reading them costs
  first call         the probe once per model and input size (layouts, and the
                     default layer: one forward and one backward of one image)

    python benchmarks/transformers.py                                    # CPU, vit_b_16, batch 8
    python benchmarks/transformers.py --model timm:deit_small_distilled_patch16_224 --device cuda --batch 64
    python benchmarks/transformers.py --model vit_b_16 --size 64 --batch 2 --repeats 1   # a quick check

timm models need `pip install timm`. Prints a Markdown table; --json saves the numbers.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import platform
import time

import torch

import saliency_cli as sal
from saliency_cli.methods.attention import attention_probabilities
from saliency_cli.methods.layers import _PROBES, probe

from common import build, interleaved_medians, sync


def make_model(name: str, size: int) -> torch.nn.Module:
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], pretrained=False, img_size=size)
    if size != 224:
        import torchvision

        return torchvision.models.get_model(name, weights=None, image_size=size)
    return build(name)


def layer_floor(model, x, targets, layer):
    """Forward + backward to the layer's output, nothing else."""
    captured = []

    def leaf(_module, _inputs, output):  # the backward stops here, as in ours
        captured.append(output.detach().requires_grad_(True))
        return captured[-1]

    handle = layer.register_forward_hook(leaf)
    try:
        with torch.enable_grad():
            logits = model(x)
            torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), captured[-1])
    finally:
        handle.remove()


def peer_grad_cam(model, x, targets, layer, kind):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[layer], reshape_transform=kind.to_grid) as cam:
        cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in targets])


def unfused_forward(model, x):
    with torch.no_grad(), attention_probabilities(model):
        model(x)


def fused_forward(model, x):
    with torch.no_grad():
        model(x)


def first_probe_seconds(model, x, device) -> float:
    _PROBES.pop(model, None)
    sync(device)
    start = time.perf_counter()
    probe(model, x[:1])
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b_16", help="torchvision name, or timm:NAME")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="save the numbers here")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = make_model(args.model, args.size).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    first = first_probe_seconds(model, x, device)
    found = probe(model, x[:1])
    layer, kind = model.get_submodule(found.default_layer()), found.last(found.default_layer()).kind
    with torch.no_grad():
        targets = model(x).argmax(1)
    variants = {
        "grad-cam": lambda: sal.attribute(model, x, "grad-cam", targets=targets),
        "grad-cam floor (forward + backward to the layer)": lambda: layer_floor(model, x, targets, layer),
        "attention-rollout": lambda: sal.attribute(model, x, "attention-rollout", targets=targets),
        "forward (fused attention)": lambda: fused_forward(model, x),
        "forward (attention probabilities formed)": lambda: unfused_forward(model, x),
    }
    if importlib.util.find_spec("pytorch_grad_cam"):  # it needs trainable weights: a copy of the model
        peer = copy.deepcopy(model).requires_grad_(True)
        peer_layer = peer.get_submodule(found.default_layer())
        variants["pytorch-grad-cam GradCAM"] = lambda: peer_grad_cam(peer, x, targets, peer_layer, kind)
    seconds = interleaved_medians(variants, args.repeats, device)
    report(args, found.default_layer(), first, seconds)


def report(args, layer: str, first: float, seconds: dict[str, float]) -> None:
    machine = platform.processor() or platform.machine()
    print(f"## {args.model}, {args.size} px, batch {args.batch}, {args.device} ({machine}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
    print(f"Default layer `{layer}`; first call's probe: {first:.3f} s (once per model and input size)\n")
    print("| variant | ms / batch | x grad-cam floor | x fused forward |")
    print("|---|---|---|---|")
    floor = seconds["grad-cam floor (forward + backward to the layer)"]
    forward = seconds["forward (fused attention)"]
    for label, value in seconds.items():
        print(f"| {label} | {value * 1000:.1f} | {value / floor:.2f} | {value / forward:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "layer": layer, "first_probe_seconds": first, "seconds": seconds}, f,
                      indent=2)


if __name__ == "__main__":
    main()
