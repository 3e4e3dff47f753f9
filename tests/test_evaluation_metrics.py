"""The metrics of `saliency evaluate` against plain per-step reference
implementations written from their definitions (one input at a time, loops
over steps, numpy), against scipy and torch-cam where they compute the same
thing, and on hand-made maps whose answers are known."""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from saliency_cli.evaluation.confidence import confidence
from saliency_cli.evaluation.perturb import Batch, auc, curves, pixel_ranks, rise_kernel, step_counts, substrate
from saliency_cli.evaluation.pointing import best_match, point_and_energy
from saliency_cli.evaluation.sanity import Cascade, checkpoints, correlations, parameterised_layers
from saliency_cli.evaluation.stats import summarise, t_quantile, wilson

from .helpers import TinyCNN, assert_same_state, model_state, seeded

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def to_input(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - MEAN) / STD


@pytest.fixture(scope="module")
def setup():
    """A tiny classifier, two photos (20x24, so N = 480) and three maps, one with ties."""
    torch.manual_seed(0)
    model = seeded(TinyCNN(classes=5)).eval()
    pixels = torch.rand(2, 3, 20, 24)
    maps = torch.randn(3, 20, 24)
    maps[2] = torch.round(maps[2] * 2) / 2  # many ties: their order is row-major
    image_of = torch.tensor([0, 0, 1])
    targets = torch.tensor([1, 3, 2])
    return model, pixels, maps, image_of, targets


def class_score(model, targets, kind="probability"):
    def score(inputs, index):
        logits = model(inputs)
        values = logits.softmax(1) if kind == "probability" else logits
        return values.gather(1, targets[index][:, None])[:, 0]
    return score


# ------------------------------------------------------------------ references


def rise_blur(x: torch.Tensor) -> torch.Tensor:
    """The RISE reference code's insertion substrate, verbatim in spirit:
    gkern(11, 5) from scipy and a [3,3,k,k] conv2d with padding k//2."""
    ndimage = pytest.importorskip("scipy.ndimage")
    inp = np.zeros((11, 11))
    inp[5, 5] = 1
    k = ndimage.gaussian_filter(inp, 5)
    kern = np.zeros((3, 3, 11, 11))
    for c in range(3):
        kern[c, c] = k
    return F.conv2d(x, torch.from_numpy(kern.astype("float32")), padding=5)


def reference_curve(model, x, values, target, steps, fill, deletion, kind="probability"):
    """One input per step, from the definition: rank by M descending (stable),
    k_s = round(s N / S) (halves up), swap the top k_s pixels."""
    height, width = values.shape
    n = height * width
    order = np.argsort(-values.numpy().ravel(), kind="stable")
    scores = []
    for s in range(steps + 1):
        k = math.floor(Fraction(s * n, steps) + Fraction(1, 2))
        top = np.zeros(n, dtype=bool)
        top[order[:k]] = True
        top = torch.from_numpy(top.reshape(height, width))
        inp = x.clone() if deletion else fill.clone()
        inp[:, top] = (fill if deletion else x)[:, top]
        with torch.no_grad():
            logits = model(inp[None])[0]
        scores.append(float((logits.softmax(0) if kind == "probability" else logits)[target]))
    return np.array(scores)


# ------------------------------------------------------------------ deletion and insertion


def test_the_blur_kernel_is_the_rise_reference_codes():
    ndimage = pytest.importorskip("scipy.ndimage")
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    np.testing.assert_allclose(rise_kernel().double().numpy(), ndimage.gaussian_filter(delta, 5), atol=1e-8)


def test_step_counts_round_halves_up():
    assert step_counts(10, 4, torch.device("cpu")).tolist() == [0, 3, 5, 8, 10]  # 2.5 -> 3, 7.5 -> 8
    assert step_counts(50176, 224, torch.device("cpu"))[1] == 224  # RISE: 224 pixels per step at 224x224


@pytest.mark.parametrize(("deletion", "insertion", "kind", "steps"), [
    ("zero", "blur", "probability", 64),  # the defaults; N/S = 7.5: half steps round up
    ("black", "noise", "logit", 7),
    ("blur", "zero", "probability", 5),
])
def test_curves_equal_the_per_step_reference(setup, deletion, insertion, kind, steps):
    model, pixels, maps, image_of, targets = setup
    x = to_input(pixels)
    fills = {"deletion": substrate(deletion, x, to_input, seed=3), "insertion": substrate(insertion, x, to_input, 3)}
    reference_fills = {}
    for name, how in (("deletion", deletion), ("insertion", insertion)):
        if how == "blur":
            reference_fills[name] = rise_blur(x)
        elif how == "black":
            reference_fills[name] = to_input(torch.zeros_like(pixels))
        elif how == "noise":
            gen = torch.Generator().manual_seed(3)
            reference_fills[name] = to_input(torch.rand(3, 20, 24, generator=gen)[None]).expand_as(x)
        else:
            reference_fills[name] = torch.zeros_like(x)
    with torch.inference_mode():
        found = curves(class_score(model, targets, kind), Batch(x, image_of, pixel_ranks(maps)), fills, steps, chunk=3)
    for i in range(3):
        img = int(image_of[i])
        for name in ("deletion", "insertion"):
            want = reference_curve(model, x[img], maps[i], int(targets[i]), steps, reference_fills[name][img],
                                   name == "deletion", kind)
            np.testing.assert_allclose(found[name][i].numpy(), want, atol=1e-6, rtol=0)
            assert abs(auc(found[name][i].numpy()) - np.trapezoid(want, dx=1 / steps)) < 1e-6


def test_curves_do_not_depend_on_the_chunk_size(setup):
    model, pixels, maps, image_of, targets = setup
    x = to_input(pixels)
    fills = {"deletion": torch.zeros_like(x), "insertion": substrate("blur", x, to_input, 0)}
    batch = Batch(x, image_of, pixel_ranks(maps))
    with torch.inference_mode():
        one = curves(class_score(model, targets), batch, fills, 9, chunk=1)
        many = curves(class_score(model, targets), batch, fills, 9, chunk=64)
    for name in fills:
        np.testing.assert_allclose(one[name].numpy(), many[name].numpy(), atol=1e-6)


def test_deletion_and_insertion_equal_torchcams_on_its_grid(setup):
    """torch-cam's DeletionInsertionMetric steps ceil(N/steps) pixels at a time:
    where S divides N the two grids agree, and with one baseline for both curves
    (zeros) so must the AUCs."""
    metrics = pytest.importorskip("torchcam.metrics")
    model, pixels, maps, image_of, targets = setup
    x = to_input(pixels[image_of])

    class Extractor:  # hands torch-cam our maps
        def __init__(self):
            self.model = model

        def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
            return [maps.clone()]

        def fuse_cams(self, cams):
            return cams[0]

        @contextmanager
        def _hooks_off(self):
            yield

    theirs = metrics.DeletionInsertionMetric(Extractor(), lambda logits: logits.softmax(-1), steps=60, batch_size=7)
    theirs.update(x, class_idx=targets.tolist())
    zeros = torch.zeros_like(x)
    with torch.inference_mode():
        ours = curves(class_score(model, targets), Batch(x, torch.arange(3), pixel_ranks(maps)),
                      {"deletion": zeros, "insertion": zeros}, 60)
    assert abs(theirs.summary()["deletion_auc"] - auc(ours["deletion"].numpy()).mean()) < 1e-6
    assert abs(theirs.summary()["insertion_auc"] - auc(ours["insertion"].numpy()).mean()) < 1e-6


class RegionModel(nn.Module):
    """Class 0's logit is 6 x the mean of channel 0 over rows 4..11, columns 6..13, less 4.5; class 1's is 0."""

    def forward(self, x):
        region = x[:, 0, 4:12, 6:14].mean(dim=(1, 2))
        return torch.stack([6 * region - 4.5, torch.zeros_like(region)], dim=1)


def test_the_map_of_the_region_that_matters_beats_its_reverse():
    x = torch.zeros(1, 3, 16, 20)
    x[:, 0, 4:12, 6:14] = 1.0
    right = torch.zeros(1, 16, 20)
    right[:, 4:12, 6:14] = 1.0
    maps = torch.cat([right, 1.0 - right])
    fills = {"deletion": torch.zeros_like(x), "insertion": substrate("blur", x, lambda p: p, 0)}
    with torch.inference_mode():
        found = curves(class_score(RegionModel(), torch.tensor([0, 0])), Batch(x, torch.zeros(2, dtype=torch.long),
                       pixel_ranks(maps)), fills, 32)
    deletion, insertion = auc(found["deletion"].numpy()), auc(found["insertion"].numpy())
    assert deletion[0] < deletion[1] - 0.2
    assert insertion[0] > insertion[1] + 0.2


# ------------------------------------------------------------------ average drop, increase


def test_average_drop_and_increase_equal_the_reference(setup):
    model, pixels, maps, image_of, targets = setup
    maps = maps.clone()
    maps[1] = 0.7  # a constant map counts as all zeros
    score = class_score(model, targets)
    x = to_input(pixels)
    with torch.inference_mode():
        y = score(x[image_of], torch.arange(3))
        found = confidence(score, pixels, image_of, maps, to_input, y, chunk=2)
    for i in range(3):
        m = maps[i]
        unit = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else torch.zeros_like(m)
        with torch.no_grad():
            p = model(x[image_of[i]][None]).softmax(1)[0, targets[i]]
            o = model(to_input(pixels[image_of[i]] * unit)).softmax(1)[0, targets[i]]
        assert abs(float(found["average-drop"][i]) - float(max(0, p - o) / p * 100)) < 1e-4  # percent
        assert float(found["increase"][i]) == (100.0 if o > p else 0.0)


def test_increase_and_drop_where_the_answer_is_known():
    """RegionModel: class 1's probability rises when the region class 0 needs
    is hidden. Hiding it is an increase for class 1 and a drop of
    (y - o) / y for class 0; keeping only it changes nothing (no increase)."""
    pixels = torch.zeros(1, 3, 16, 20)
    pixels[:, 0, 4:12, 6:14] = 1.0
    region = torch.zeros(16, 20)
    region[4:12, 6:14] = 1.0
    maps = torch.stack([1.0 - region, 1.0 - region, region])  # hide, hide, keep only
    score = class_score(RegionModel(), torch.tensor([1, 0, 0]))
    image_of = torch.zeros(3, dtype=torch.long)
    with torch.inference_mode():
        y = score(pixels[image_of], torch.arange(3))
        found = confidence(score, pixels, image_of, maps, lambda p: p, y, chunk=1)

    def sigmoid(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    seen, hidden = 6 * 1.0 - 4.5, 6 * 0.0 - 4.5  # class 0's logit with the region shown / hidden
    assert found["increase"].tolist() == [100.0, 0.0, 0.0]
    drop = (sigmoid(seen) - sigmoid(hidden)) / sigmoid(seen) * 100
    assert found["average-drop"].tolist() == pytest.approx([0.0, drop, 0.0], abs=1e-4)


# ------------------------------------------------------------------ pointing games


def test_pointing_game_on_hand_made_maps():
    box = (40.0, 20.0, 30.0, 10.0)  # x 40..70, y 20..30 in a 100x50 photo
    values = np.zeros((25, 50), dtype=np.float32)  # the model saw the whole photo at half size
    values[12, 27] = 1.0  # -> photo pixels around (55, 25): inside
    hit, energy = point_and_energy(values, (100, 50), (0, 0, 100, 50), [box], tolerance=0)
    assert hit == 1.0 and energy > 0.9
    values[:] = 0
    values[2, 2] = 1.0  # top-left corner: far from the box
    assert point_and_energy(values, (100, 50), (0, 0, 100, 50), [box], tolerance=15)[0] == 0.0
    assert point_and_energy(values, (100, 50), (0, 0, 100, 50), [box], tolerance=60)[0] == 1.0
    assert point_and_energy(-np.ones((25, 50), np.float32), (100, 50), (0, 0, 100, 50), [box], 15)[1] is None


def test_pointing_game_equals_the_reference_on_a_cropped_region():
    rng = np.random.default_rng(0)
    values = rng.random((16, 16)).astype(np.float32) - 0.3
    size, region = (90, 60), (10.5, 5.5, 74.5, 53.5)  # a centre crop of a 90x60 photo
    boxes = [(20.0, 10.0, 25.0, 20.0), (50.0, 30.0, 10.0, 15.0)]
    left, top, right, bottom = 10, 6, 74, 54  # the overlay's rounding of the region
    resized = np.asarray(Image.fromarray(values, "F").resize((right - left, bottom - top), Image.BILINEAR), float)
    best = max(((resized[r, c], -r, -c) for r in range(resized.shape[0]) for c in range(resized.shape[1])))
    row, col = -best[1], -best[2]
    px, py = left + col + 0.5, top + row + 0.5
    near = any(math.dist((px, py), (min(max(px, x), x + w), min(max(py, y), y + h))) <= 15 for x, y, w, h in boxes)
    inside = total = 0.0
    for r in range(resized.shape[0]):
        for c in range(resized.shape[1]):
            v = max(0.0, resized[r, c])
            total += v
            cx, cy = left + c + 0.5, top + r + 0.5
            inside += v * any(x <= cx <= x + w and y <= cy <= y + h for x, y, w, h in boxes)
    hit, energy = point_and_energy(values, size, region, boxes, 15)
    assert hit == float(near)
    assert abs(energy - inside / total) < 1e-6


def test_detections_match_ground_truth_at_iou_one_half():
    assert best_match([0, 0, 10, 10], [(0, 0, 10, 10), (1, 1, 10, 10)]) == (0, 0, 10, 10)
    assert best_match([0, 0, 10, 10], [(5, 0, 10, 10)]) is None  # IoU 1/3
    assert best_match([0, 0, 10, 10], [(0, 0, 10, 20)]) == (0, 0, 10, 20)  # IoU 1/2 counts


# ------------------------------------------------------------------ sanity check


def test_spearman_equals_scipys_with_ties():
    stats = pytest.importorskip("scipy.stats")
    torch.manual_seed(1)
    a = torch.round(torch.randn(12, 9) * 2)
    b = torch.round(torch.randn(12, 9) * 2) + a
    signed, absolute = correlations(a, b)
    assert abs(signed - stats.spearmanr(a.flatten(), b.flatten()).statistic) < 1e-9
    assert abs(absolute - stats.spearmanr(a.abs().flatten(), b.abs().flatten()).statistic) < 1e-9
    assert correlations(a, torch.zeros_like(a)) == (None, None)


def test_cascade_randomises_from_the_logits_and_leaves_the_model_alone():
    model = seeded(TinyCNN()).eval()
    before = model_state(model)
    example = torch.rand(1, 3, 12, 12)
    cascade = Cascade(model, example, steps=10, seed=4)
    assert cascade.names == ["fc", "bn", "conv2", "conv1"]
    assert cascade.marks == [0, 1, 2, 3, 4] and checkpoints(99, 10) == [0, 10, 20, 30, 40, 50, 59, 69, 79, 89, 99]
    weights = []
    for mark in cascade.steps():
        weights.append({k: v.clone() for k, v in cascade.model.state_dict().items()})
        assert torch.equal(weights[-1]["conv1.weight"], model.conv1.weight) == (mark < 4)
        assert torch.equal(weights[-1]["fc.weight"], model.fc.weight) == (mark == 0)
    again = [{k: v.clone() for k, v in cascade.model.state_dict().items()} for _ in cascade.steps()]
    assert all(torch.equal(a[k], w[k]) for a, w in zip(again, weights) for k in w)  # seeded: the same every batch
    assert_same_state(before, model_state(model))
    assert parameterised_layers(model, example)[0][0] == "fc" and model_state(model)["hooks"] == before["hooks"]


def test_sanity_correlations_equal_the_reference():
    """A plain cascade: deep copy, reset_parameters seeded by seed + l from the logits backwards,
    the gradient recomputed by autograd, scipy's Spearman."""
    stats = pytest.importorskip("scipy.stats")
    model = seeded(TinyCNN()).eval()
    x = torch.rand(1, 3, 12, 12)
    stored = _gradient(model, x, 2)
    cascade = Cascade(model, x, steps=10, seed=7)
    found = [correlations(stored, _gradient(cascade.model, x, 2))[1] for _ in cascade.steps()]
    reference, want = copy.deepcopy(model), []
    for count, name in enumerate([None, "fc", "bn", "conv2", "conv1"]):
        if name is not None:
            torch.manual_seed(7 + count - 1)
            getattr(reference, name).reset_parameters()
        want.append(stats.spearmanr(stored.abs().flatten(), _gradient(reference, x, 2).abs().flatten()).statistic)
    np.testing.assert_allclose(found, want, atol=1e-6)
    assert abs(found[0] - 1.0) < 1e-9


def _gradient(model, x, target):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[0, target], x)
    return grad.abs().amax(dim=1)[0]


# ------------------------------------------------------------------ statistics


def test_intervals_equal_scipys():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 3, 9, 40):
        assert abs(t_quantile(0.975, df) - stats.t.ppf(0.975, df)) < 1e-9
    values = [0.2, 0.35, 0.1, 0.5, 0.45]
    found = summarise(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert found["n"] == 5 and np.allclose(found["ci95"], [low, high], atol=1e-9)
    for hits, n in ((0, 4), (3, 4), (7, 12)):
        want = stats.binomtest(hits, n).proportion_ci(method="wilson")
        assert np.allclose(wilson(hits, n), [want.low, want.high], atol=1e-9)
    assert summarise([100.0, 0.0, 100.0], hit=100.0)["mean"] == pytest.approx(200 / 3)
    assert summarise([0.9, 1.0], bounds=(0.0, 1.0))["ci95"][1] == 1.0
