"""Transformers and today's classifiers: token layers on their patch grid,
NHWC maps, the default layers, and every method either runs or is skipped
with its reason (torchvision ViT, Swin, MaxViT, ConvNeXt; timm ViTs with 1
and 2 prefix tokens and with registers). Random weights, small inputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from typer.testing import CliRunner

import saliency_cli as sal
from saliency_cli.cli import app
from saliency_cli.errors import NotApplicable
from saliency_cli.methods import registry
from saliency_cli.methods.feature_maps import MapKind, map_kind
from saliency_cli.methods.layers import probe, resolve_layer

from .conftest import ROOT, SAMPLES
from .helpers import assert_same_state, model_state

timm = pytest.importorskip("timm")

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": 8}


def tv_vit(image_size: int = 32) -> nn.Module:
    """torchvision's ViT, tiny. Its head is initialised to zero: give it weights."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=image_size, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=5)
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model.eval()


def timm_vit(name: str = "vit_tiny_patch16_224", **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=5, **{**TINY, **kwargs}).eval()


# (model, prefix tokens by the model's own account, the default layer)
VITS = {
    "torchvision": (tv_vit, 1, "encoder.layers.encoder_layer_1.ln_1"),
    "timm-class": (lambda: timm_vit(), 1, "blocks.1.norm1"),
    "timm-distilled": (lambda: timm_vit("deit_tiny_distilled_patch16_224"), 2, "blocks.1.norm1"),
    "timm-registers": (lambda: timm_vit(reg_tokens=4), 5, "blocks.1.norm1"),
}


def test_a_token_map_drops_the_prefix_and_lays_the_patches_on_the_grid():
    tokens = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(2, 8, 3)  # 2 prefix + a 2x3 grid, 3 channels
    grid = MapKind("tokens", 3, (2, 3), prefix=2).to_grid(tokens)
    assert grid.shape == (2, 3, 2, 3)
    for row in range(2):
        for col in range(3):
            torch.testing.assert_close(grid[:, :, row, col], tokens[:, 2 + row * 3 + col])
    nhwc = torch.randn(2, 4, 5, 7)
    torch.testing.assert_close(MapKind("nhwc", 7, (4, 5)).to_grid(nhwc), nhwc.permute(0, 3, 1, 2))


def test_nhwc_is_told_from_nchw_by_the_input_grid():
    assert map_kind((1, 7, 7, 768), (224, 224)).layout == "nhwc"
    assert map_kind((1, 768, 7, 7), (224, 224)).layout == "nchw"
    assert map_kind((1, 8, 8, 8), (16, 16)).layout == "nchw"  # ambiguous: PyTorch's default
    assert map_kind((1, 4, 6, 10), (24, 40)).layout == "nchw"
    assert map_kind((1, 6, 10, 4), (24, 40)).layout == "nhwc"


@pytest.mark.parametrize("name", list(VITS))
def test_vit_token_layers_and_default(name):
    build, prefix, default = VITS[name]
    model = build()
    found = probe(model, torch.zeros(1, 3, 32, 32))
    assert found.default_layer() == default
    kind = found.last(default).kind
    assert (kind.layout, kind.grid, kind.prefix) == ("tokens", (4, 4), prefix)
    if name.startswith("timm"):
        assert kind.prefix == model.num_prefix_tokens  # timm's own count: class, distillation, registers


def test_the_grid_follows_the_input_size():
    model = tv_vit(image_size=48)
    assert probe(model, torch.zeros(1, 3, 48, 48)).last("encoder.layers.encoder_layer_1.ln_1").kind.grid == (6, 6)
    dynamic = timm_vit(dynamic_img_size=True)  # one model, two input sizes
    for size, grid in ((32, (4, 4)), (40, (5, 5)), (48, (6, 4))):
        width = 32 if size == 48 else size
        layer = resolve_layer(dynamic, torch.zeros(1, 3, size, width), None, "grad-cam")
        assert layer.name == "blocks.1.norm1" and layer.kind.grid == grid and layer.kind.prefix == 1


def independent_grad_cam(model, x, targets, layer, prefix):
    """Take the layer's tokens, drop the prefix, reshape, weight by the mean
    gradient, ReLU, bilinear upsampling: by hand, with plain hooks."""
    captured = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        with torch.enable_grad():
            logits = model(x)
            (grads,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), captured[-1])
    finally:
        handle.remove()
    tokens, grads = captured[-1].detach()[:, prefix:], grads[:, prefix:]
    b, n, c = tokens.shape
    side = int(n ** 0.5)
    a = tokens.reshape(b, side, side, c).permute(0, 3, 1, 2)
    g = grads.reshape(b, side, side, c).permute(0, 3, 1, 2)
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1))
    return F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("name", list(VITS))
def test_grad_cam_on_a_vit_equals_an_independent_computation(name):
    build, prefix, default = VITS[name]
    model = build()
    torch.manual_seed(1)
    x, targets = torch.randn(2, 3, 32, 32), torch.tensor([3, 1])
    got = sal.attribute(model, x, "grad-cam", targets=targets)
    want = independent_grad_cam(model, x, targets, default, prefix)
    assert got.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def min_max(maps):
    """pytorch-grad-cam's scale_cam_image, per map."""
    maps = maps - maps.min(axis=(1, 2), keepdims=True)
    return maps / (1e-7 + maps.max(axis=(1, 2), keepdims=True))


def test_grad_cam_on_a_vit_equals_pytorch_grad_cam():
    """Its documented ViT recipe: norm1 of the last block, a reshape_transform
    dropping the prefix tokens. It scales each map to [0, 1] (before and after
    cv2's bilinear resize); ours is raw and resized by torch."""
    cv2 = pytest.importorskip("cv2")
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = timm_vit("deit_tiny_distilled_patch16_224")  # class and distillation tokens

    def reshape(tokens):
        return tokens[:, 2:].reshape(tokens.shape[0], 4, 4, tokens.shape[2]).permute(0, 3, 1, 2)

    torch.manual_seed(2)
    x, targets = torch.randn(2, 3, 32, 32), [3, 1]
    with GradCAM(model=model, target_layers=[model.blocks[-1].norm1], reshape_transform=reshape) as reference:
        theirs = reference(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets])
    ours = sal.attribute(model, x, "grad-cam", targets=torch.tensor(targets), upsample=False).numpy()
    resized = np.stack([cv2.resize(m.astype(np.float32), (32, 32)) for m in min_max(ours)])
    np.testing.assert_allclose(theirs, min_max(np.maximum(resized, 0)), atol=1e-5)


def patch_gradient(model, x, layer, prefix):
    captured = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        with torch.enable_grad():
            logits = model(x)
            (grads,) = torch.autograd.grad(logits[:, 0].sum(), captured[-1])
    finally:
        handle.remove()
    return float(grads[:, prefix:].abs().max())


@pytest.mark.parametrize(("name", "last_block"), [("torchvision", "encoder.layers.encoder_layer_1"),
                                                  ("timm-class", "blocks.1"), ("timm-distilled", "blocks.1")])
def test_the_vit_default_is_the_last_layer_whose_patch_tokens_get_a_gradient(name, last_block):
    build, prefix, default = VITS[name]
    model, x = build(), torch.randn(1, 3, 32, 32)
    assert patch_gradient(model, x, last_block, prefix) == 0  # a class-token head: nothing reaches them
    assert patch_gradient(model, x, default, prefix) > 0


def test_an_average_pooled_vit_defaults_to_a_layer_whose_patch_tokens_get_a_gradient():
    model = timm_vit(reg_tokens=4, class_token=False, global_pool="avg")  # registers, no class token
    x = torch.randn(2, 3, 32, 32)
    layer = resolve_layer(model, x, None, "grad-cam")
    assert layer.kind.prefix == 4 and patch_gradient(model, x, layer.name, 4) > 0
    maps = sal.attribute(model, x, "grad-cam", targets=torch.tensor([0, 0]))
    torch.testing.assert_close(maps, independent_grad_cam(model, x, torch.tensor([0, 0]), layer.name, 4))
    assert maps.abs().amax(dim=(1, 2)).min() > 0


def test_nhwc_maps_give_the_same_grad_cam_as_their_nchw_permutation():
    torch.manual_seed(0)
    model = torchvision.models.swin_t(num_classes=5).eval()  # norm: [B,h,w,C] -> permute: [B,C,h,w]
    x = torch.randn(2, 3, 64, 96)  # a 2x3 map: a swapped height and width cannot pass
    assert resolve_layer(model, x, "norm", "grad-cam").kind.layout == "nhwc"
    assert probe(model, x).default_layer() == "permute"
    nhwc = sal.attribute(model, x, "grad-cam", layer="norm")  # the predicted classes: maps not all zero
    torch.testing.assert_close(nhwc, sal.attribute(model, x, "grad-cam"), rtol=1e-5, atol=1e-7)
    assert nhwc.abs().amax(dim=(1, 2)).min() > 0.05


def test_cam_and_grad_cam_on_timm_swin_whose_head_pools_nhwc():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", img_size=32, window_size=4, embed_dim=16,
                              depths=(1, 1), num_heads=(1, 2), num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    assert probe(model, x).default_layer() == "norm"
    cam = sal.attribute(model, x, "cam", upsample=False)  # GAP (x.mean((1, 2))) + linear on an NHWC map
    grad_cam = sal.attribute(model, x, "grad-cam", upsample=False)
    torch.testing.assert_close(grad_cam, F.relu(cam) / 16, rtol=1e-4, atol=1e-6)  # Grad-CAM = ReLU(CAM) / hw
    # CAM by its definition: the head's weights of the predicted class over the NHWC map `norm` outputs
    captured = []
    handle = model.norm.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    want = torch.einsum("bhwc,bc->bhw", captured[0], model.head.fc.weight[logits.argmax(1)])
    torch.testing.assert_close(cam, want, rtol=1e-4, atol=1e-6)
    assert cam.abs().amax(dim=(1, 2)).min() > 0
    # a second call goes the planned way (the head found once per model and shape): the same maps
    torch.testing.assert_close(sal.attribute(model, x, "cam", upsample=False), cam)


def test_guided_backprop_and_deconvnet_are_the_gradient_on_gelu_networks():
    model, x = timm_vit(), torch.randn(2, 3, 32, 32)
    gradient = sal.attribute(model, x, "gradient")
    for method in ("guided-backprop", "deconvnet"):
        with pytest.warns(UserWarning, match="GELU is not a ReLU-family activation"):
            torch.testing.assert_close(sal.attribute(model, x, method), gradient)


# ------------------------------------------------------------------ every method: runs, or skipped with its reason

CHEAP = {"n": 2, "noise_batch": 2, "num_masks": 8, "mask_batch": 8, "steps": 2, "batch": 8}


def cheap_params(method) -> object:
    """Parameters that keep a run short (fewer samples, masks, steps)."""
    fields = set(method.defaults())
    return method.make_params({k: v for k, v in CHEAP.items() if k in fields})


def runs_or_skips(model, x, names) -> dict[str, str]:
    """Each method's outcome: 'ran' or the reason it does not apply."""
    outcome = {}
    for name in names:
        method = registry.get(name)
        params = cheap_params(method)
        try:
            method.check_applies(model, x[:1], params)
        except NotApplicable as exc:
            outcome[name] = str(exc)
            with pytest.raises(NotApplicable):  # the method itself agrees
                method.run(model, x, None, params)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GELU: guided backprop = gradient, said once per call
            maps = method.run(model, x, None, params).maps
        assert maps.shape[0] == x.shape[0] and maps.shape[-2:] == x.shape[-2:] and torch.isfinite(maps).all(), name
        outcome[name] = "ran"
    return outcome


def big(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


# (build, input size, the methods that do not apply, the default layer); at
# these sizes a big architecture costs a few forward passes per method, so
# every registered method is checked for applicability and the layer and
# attention methods run (the others are architecture-blind: the timm tests
# below run them all)
BIG = {
    "vit_b_16": (lambda: big("vit_b_16", image_size=32), 32, {"cam"}, "encoder.layers.encoder_layer_11.ln_1"),
    "swin_t": (lambda: big("swin_t"), 64, {"attention-rollout"}, "permute"),
    "maxvit_t": (lambda: big("maxvit_t"), 224, {"cam", "attention-rollout"}, "blocks.3"),  # 224 px: its only size
    "convnext_tiny": (lambda: big("convnext_tiny"), 64, {"cam", "attention-rollout"}, "features"),
}


@pytest.mark.parametrize("name", list(BIG))
def test_big_architectures_run_or_skip_every_method(name):
    build, size, skipped, default = BIG[name]
    model, x = build(), torch.randn(1, 3, size, size)
    unmet = {}
    for method in registry.names("classification"):
        try:
            registry.get(method).check_applies(model, x, cheap_params(registry.get(method)))
        except NotApplicable as exc:
            unmet[method] = str(exc)
    assert set(unmet) == skipped, unmet
    assert probe(model, x).default_layer() == default
    for method in {"grad-cam", "attention-rollout"} - skipped:
        maps = sal.attribute(model, x, method)
        assert maps.shape == (1, size, size) and torch.isfinite(maps).all()


TIMM = {
    "class": lambda: timm_vit(),
    "distilled": lambda: timm_vit("deit_tiny_distilled_patch16_224"),
    "registers": lambda: timm_vit(reg_tokens=4),
    "registers-avg": lambda: timm_vit(reg_tokens=4, class_token=False, global_pool="avg"),
}


@pytest.mark.parametrize("name", list(TIMM))
def test_timm_vits_run_every_method_or_skip_it_and_stay_untouched(name):
    model, x = TIMM[name](), torch.randn(2, 3, 32, 32)
    flags = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    before = model_state(model)
    outcome = runs_or_skips(model, x, registry.names("classification"))
    assert_same_state(before, model_state(model))
    assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == flags
    skipped = {m: why for m, why in outcome.items() if why != "ran"}
    assert set(skipped) == {"cam"} and "global average pooling" in skipped["cam"]
    assert outcome["attention-rollout"] == outcome["grad-cam"] == "ran"


# ------------------------------------------------------------------ the command line


# configs/vit_b_16.yaml with the same torchvision class made tiny (vit_b_16 itself: test_big_architectures...)
VIT_CONFIG = ["-c", str(ROOT / "configs" / "vit_b_16.yaml"), "--set", "model.weights=null", "--set", "model.arch=null",
              "--set", "model.factory=torchvision.models:VisionTransformer", "--set", "model.kwargs={image_size: 32, "
              "patch_size: 8, num_layers: 2, num_heads: 2, hidden_dim: 16, mlp_dim: 32}", "--set", "preprocess.size=32",
              "--set", "labels=null"]


def test_explain_all_on_a_vit_writes_what_applies_and_names_what_it_skips(tmp_path):
    out = tmp_path / "out"
    run = ["explain", str(SAMPLES / "chelsea.png"), "-o", str(out), *VIT_CONFIG, "--set", "methods.smoothgrad.n=2"]
    result = CliRunner().invoke(app, [*run, "-m", "all"])
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if line.startswith("saliency: skipping ")]
    assert len(skipped) == 1 and skipped[0].startswith("saliency: skipping cam: cam needs a global average pooling")
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert list(record["outputs"]) == [m for m in registry.names("classification") if m != "cam"]
    for files in record["outputs"].values():
        assert (out / files["npy"]).is_file() and (out / files["png"]).is_file()
    again = CliRunner().invoke(app, [*run, "-m", "all"])  # nothing left to do: still fine
    assert again.exit_code == 0 and "1 more image(s) have every method that applies done" in again.output
    named = CliRunner().invoke(app, [*run, "-m", "cam", "-m", "gradient"])
    assert named.exit_code == 2 and "cam needs a global average pooling" in named.output


def test_layers_shows_token_layers_with_their_grid_and_the_default():
    result = CliRunner().invoke(app, ["layers", *VIT_CONFIG])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    (default,) = [line for line in lines if line.startswith("* encoder")]
    assert "encoder.layers.encoder_layer_1.ln_1 " in default and "16 x 4x4 tokens (+1 prefix)" in default
    assert any(line.startswith("  conv_proj ") and "16x4x4" in line for line in lines)
    assert "attention-rollout: available" in lines and any(line.startswith("cam: not available") for line in lines)
