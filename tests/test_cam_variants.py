"""Grad-CAM++, LayerCAM, Score-CAM and Eigen-CAM against pytorch-grad-cam,
torch-cam and an independent SVD, after the references' normalisation:

- torch-cam: ReLU, then (m - min) / (max - min + 1e-8) per map, at the layer's resolution;
- pytorch-grad-cam: ReLU, min-max, resize to the input, min-max again. On a
  layer with the input's resolution there is no resizing, so the maps compare exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import saliency_cli as sal
from saliency_cli.errors import SaliencyError

from .helpers import TinyCNN, seeded

LAYER_METHODS = ["grad-cam-plus-plus", "layer-cam", "score-cam", "eigen-cam"]


def tiny(scale: float = 1.0):
    """TinyCNN: relu1 keeps the input's 12x12, relu2 (the default layer) is 6x6.
    `scale` multiplies the logits (through the last layer's weights)."""
    model = seeded(TinyCNN(classes=5, width=8), 2).eval()
    with torch.no_grad():
        model.fc.weight.mul_(scale)
        model.fc.bias.mul_(scale)
    return model


X = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
T = torch.tensor([1, 2, 3])


def minmax(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    maps = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return maps / (maps.amax(dim=(-2, -1), keepdim=True) + eps)


def pytorch_grad_cam(kind: str, model, layer: str) -> np.ndarray:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with getattr(pgc, kind)(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        return cam(input_tensor=X, targets=[ClassifierOutputTarget(int(c)) for c in T])


def as_pytorch_grad_cam(maps: torch.Tensor) -> np.ndarray:
    return minmax(minmax(maps.relu(), 1e-7), 1e-7).numpy()


@pytest.mark.parametrize("method, kind", [("layer-cam", "LayerCAM"), ("score-cam", "ScoreCAM")])
def test_equal_to_pytorch_grad_cam(method, kind, monkeypatch):
    monkeypatch.setattr("tqdm.tqdm", lambda it, *a, **k: it)  # pytorch-grad-cam's ScoreCAM prints progress
    ours = sal.attribute(tiny(), X, method, targets=T, layer="relu1", upsample=False)
    np.testing.assert_allclose(as_pytorch_grad_cam(ours), pytorch_grad_cam(kind, tiny(), "relu1"), atol=1e-6)


def test_grad_cam_plus_plus_equals_pytorch_grad_cam_but_its_epsilon():
    """pytorch-grad-cam adds 1e-6 to the denominator of alpha = g^2 / (2 g^2 +
    S g^3), which pulls alpha from its limit 1/2 towards 0 where |g| is below
    about 1e-3. Its pipeline with that one term removed agrees exactly; the
    stock class agrees once the logits are scaled up (larger g)."""
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class WithoutEpsilon(GradCAMPlusPlus):
        def get_cam_weights(self, input_tensor, target_layers, targets, activations, grads):
            sums = activations.sum(axis=(2, 3), keepdims=True)
            alpha = np.where(grads != 0, grads ** 2 / (2 * grads ** 2 + sums * grads ** 3), 0)
            return (np.maximum(grads, 0) * alpha).sum(axis=(2, 3))

    model = tiny()
    ours = sal.attribute(model, X, "grad-cam-plus-plus", targets=T, layer="relu1", upsample=False)
    reference = tiny()
    with WithoutEpsilon(model=reference, target_layers=[reference.relu1]) as cam:
        ref = cam(input_tensor=X, targets=[ClassifierOutputTarget(int(c)) for c in T])
    np.testing.assert_allclose(as_pytorch_grad_cam(ours), ref, atol=1e-6)
    assert np.abs(as_pytorch_grad_cam(ours) - pytorch_grad_cam("GradCAMPlusPlus", tiny(), "relu1")).max() > 1e-3
    scaled = sal.attribute(tiny(1000.0), X, "grad-cam-plus-plus", targets=T, layer="relu1", upsample=False)
    np.testing.assert_allclose(as_pytorch_grad_cam(scaled), pytorch_grad_cam("GradCAMPlusPlus", tiny(1000.0), "relu1"),
                               atol=1e-4)


@pytest.mark.parametrize("method, kind", [("layer-cam", "LayerCAM"), ("score-cam", "ScoreCAM")])
@pytest.mark.parametrize("layer", ["relu1", None])
def test_equal_to_torch_cam(method, kind, layer):
    """Also at a layer coarser than the input (relu2, 6x6): torch-cam's
    Score-CAM normalises each channel before upsampling it, as we do."""
    import torchcam.methods as tm

    model = tiny()
    ours = sal.attribute(model, X, method, targets=T, layer=layer, upsample=False)
    with getattr(tm, kind)(tiny(), layer or "relu2") as extractor:
        with torch.no_grad() if kind == "ScoreCAM" else torch.enable_grad():
            scores = extractor.model(X)
        ref = extractor(T.tolist(), scores)[0]
    torch.testing.assert_close(minmax(ours), ref, rtol=1e-5, atol=1e-6)


def test_grad_cam_plus_plus_formula_at_the_default_layer():
    """Equation 19 of the paper with the logit's gradient, written out (what
    torch-cam 0.5's GradCAMpp would compute, had its in-place division not
    acted on a copy: its alpha stays g^2)."""
    model = tiny()
    captured = []
    handle = model.relu2.register_forward_hook(lambda _m, _i, out: captured.append(out))
    logits = model(X)
    handle.remove()
    (g,) = torch.autograd.grad(logits.gather(1, T[:, None]).sum(), captured[0])
    want = grad_cam_plus_plus(g, captured[0].detach())
    torch.testing.assert_close(sal.attribute(model, X, "grad-cam-plus-plus", targets=T, upsample=False), want)


def grad_cam_plus_plus(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Equation 19 from the gradient g and the activations a, [B,C,h,w] -> [B,h,w]."""
    alpha = g ** 2 / (2 * g ** 2 + a.sum(dim=(2, 3), keepdim=True) * g ** 3)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return F.relu(((alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True) * a).sum(dim=1))


def test_score_cam_raw_values_by_its_definition():
    """Unnormalised (the peers' comparisons above go through min-max, which
    would hide a scale per map): each channel, min-max normalised at the
    layer's 6x6 and upsampled, masks the input; its weight is the softmax of
    the target logit's change; the map is ReLU(sum_k w_k A_k)."""
    model = tiny()
    captured = []
    handle = model.relu2.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().clone()))
    with torch.no_grad():
        base = model(X)
    handle.remove()
    want = []
    for i, c in enumerate(T.tolist()):
        a = captured[0][i]  # [K,6,6]
        changes = []
        for k in range(a.shape[0]):
            span = a[k].max() - a[k].min()
            h = (a[k] - a[k].min()) / span if span > 0 else torch.zeros_like(a[k])
            u = F.interpolate(h[None, None], size=(12, 12), mode="bilinear", align_corners=False)[0]
            with torch.no_grad():
                changes.append(model((X[i] * u)[None])[0, c] - base[i, c])
        w = torch.stack(changes).softmax(0)
        want.append(F.relu((w[:, None, None] * a).sum(0)))
    ours = sal.attribute(model, X, "score-cam", targets=T, upsample=False)
    torch.testing.assert_close(ours, torch.stack(want), rtol=1e-5, atol=1e-7)


def eigen_by_numpy(features: np.ndarray) -> np.ndarray:
    """Per image, in float64: centre each channel over positions, SVD, project
    on the first right singular vector, sign so that its entries sum >= 0."""
    maps = []
    for a in features.astype(np.float64):
        rows = a.reshape(a.shape[0], -1).T
        rows = rows - rows.mean(axis=0)
        v1 = np.linalg.svd(rows, full_matrices=False)[2][0]
        v1 = -v1 if v1.sum() < 0 else v1
        maps.append((rows @ v1).reshape(a.shape[1:]))
    return np.stack(maps)


@pytest.mark.parametrize("layer", ["relu1", "relu2"])
def test_eigen_cam_equals_an_independent_svd(layer):
    model = tiny()
    with torch.no_grad():
        features = model.relu1(model.conv1(X))
        if layer == "relu2":
            features = model.relu2(model.bn(model.conv2(features)))
    ours = sal.attribute(model, X, "eigen-cam", layer=layer, upsample=False)
    np.testing.assert_allclose(ours.numpy(), eigen_by_numpy(features.numpy()), rtol=1e-4, atol=1e-5)
    assert ours.min() < 0 < ours.max()  # raw: signed, no ReLU


@pytest.mark.parametrize("shape", [(3, 64, 4, 5), (3, 4, 8, 8), (2, 16, 4, 4)])
def test_eigen_cam_projection_on_either_gram_matrix(shape):
    """Fewer positions than channels (a last feature map), more, and as many:
    the same map as numpy's SVD of the centred [positions, channels] matrix."""
    from saliency_cli.methods.eigen_cam import principal_projection

    features = torch.randn(shape, generator=torch.Generator().manual_seed(1)) ** 2  # ReLU-like, skewed
    ours = principal_projection(features)
    np.testing.assert_allclose(ours.numpy(), eigen_by_numpy(features.numpy()), rtol=1e-4, atol=1e-5)


def test_eigen_cam_against_pytorch_grad_cam_up_to_its_sign():
    """pytorch-grad-cam keeps whichever sign numpy's SVD returns, then clips
    negatives: it equals our map's positive or negative part."""
    ours = sal.attribute(tiny(), X, "eigen-cam", layer="relu1", upsample=False)
    ref = pytorch_grad_cam("EigenCAM", tiny(), "relu1")
    for i in range(len(X)):
        errors = [np.abs(as_pytorch_grad_cam(sign * ours[i:i + 1]) - ref[i:i + 1]).max() for sign in (1, -1)]
        assert min(errors) < 1e-5, errors


def test_score_cam_does_not_depend_on_channel_batch():
    model = tiny()
    maps = [sal.attribute(model, X, "score-cam", channel_batch=cb) for cb in (1, 5, 24, None)]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-5, atol=1e-7)


def test_layer_methods_use_the_reused_module_last_call(lite0, chelsea_input):
    """EfficientNet-Lite's default layer `_swish` runs for the stem and the
    head: Layer-CAM, Eigen-CAM and Grad-CAM++ explain the head's 1280x7x7
    output, as Grad-CAM does."""
    x = chelsea_input
    features = lite0.extract_features(x).detach().requires_grad_(True)
    logits = lite0._fc(lite0._avg_pooling(features).flatten(1))
    t = logits.argmax(1)
    (g,) = torch.autograd.grad(logits[0, t[0]], features)
    a = features.detach()
    layer_cam = sal.attribute(lite0, x, "layer-cam", targets=t, upsample=False)
    torch.testing.assert_close(layer_cam, F.relu((F.relu(g) * a).sum(1)), rtol=1e-4, atol=1e-6)
    eigen = sal.attribute(lite0, x, "eigen-cam", upsample=False)
    np.testing.assert_allclose(eigen.numpy(), eigen_by_numpy(a.numpy()), rtol=1e-3, atol=1e-4)
    plus_plus = sal.attribute(lite0, x, "grad-cam-plus-plus", targets=t, upsample=False)
    torch.testing.assert_close(plus_plus, grad_cam_plus_plus(g, a), rtol=1e-4, atol=1e-6)


def test_gradient_methods_find_the_cat(lite0, chelsea_input):
    """The hand-drawn box around the cat's face of test_cam_family."""
    x0, y0, x1, y1 = 20, 30, 185, 215
    for name in ("grad-cam-plus-plus", "layer-cam"):
        m = sal.attribute(lite0, chelsea_input, name)[0]
        y, x = divmod(int(m.argmax()), 224)
        assert x0 <= x < x1 and y0 <= y < y1, f"{name} peaks at {(x, y)}"
        inside = torch.zeros_like(m, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert m[inside].mean() > 2 * m[~inside].mean(), name


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "convnext_tiny"])
def test_torchvision_families(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    for method in ("grad-cam-plus-plus", "layer-cam", "eigen-cam"):
        maps = sal.attribute(model, x, method)
        assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all(), method


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_unknown_and_unsuitable_layers(method):
    with pytest.raises(SaliencyError, match=rf"{method}: unknown layer 'relu3' \(did you mean 'relu2', 'relu1'"):
        sal.attribute(tiny(), X, method, layer="relu3")
    with pytest.raises(SaliencyError, match=rf"{method}: layer 'fc' outputs \[1, 5\], not a 4-D feature map"):
        sal.attribute(tiny(), X, method, layer="fc")
