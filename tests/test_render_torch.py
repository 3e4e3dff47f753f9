"""The torch renderer (the overlays drawn on the model's device) against the
numpy renderer: the same pixels, except where a resized map value sits on
the rounding point between two colormap entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saliency_cli import render_torch
from saliency_cli.render import COLORMAPS, DIVERGING, render_heatmap, to_unit

CASES = [("minmax", 100.0, False), ("positive", 99.0, True), ("signed", 99.0, True), ("positive", 100.0, False)]


def random_case(rng, style):
    h, w = rng.integers(7, 90, 2)
    values = (rng.standard_normal((h, w)) ** 3).astype(np.float32)
    if style == "positive":
        values = np.abs(values)
    width, height = rng.integers(20, 260, 2)
    x0, x1 = sorted(rng.uniform(-4, width + 4, 2))
    y0, y1 = sorted(rng.uniform(-4, height + 4, 2))
    if min(width, round(x1)) - max(0, round(x0)) < 1 or min(height, round(y1)) - max(0, round(y0)) < 1:
        x0, y0, x1, y1 = 0, 0, width, height
    photo = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return values, (int(width), int(height)), (x0, y0, x1, y1), photo


def both(values, size, box, photo, style, percentile, weighted, colormap="jet", alpha=0.5):
    ours = render_heatmap(values, style=style, colormap=colormap, size=size, box=box, original=photo, alpha=alpha,
                          percentile=percentile, weighted=weighted)
    theirs = render_torch.render_overlays(
        [torch.from_numpy(values)], [style], [percentile], [weighted], colormap=colormap, size=size, box=box,
        photo=None if photo is None else torch.from_numpy(photo), alpha=alpha)[0].numpy()
    return ours, theirs


def entry_of(colors: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The colormap entry of each colour of a bare heatmap (-1 if none)."""
    codes = {tuple(c): i for i, c in reversed(list(enumerate(table.tolist())))}
    return np.array([codes.get(tuple(c), -1) for c in colors.reshape(-1, 3).tolist()])


def test_display_scaling_matches_numpy():
    rng = np.random.default_rng(0)
    for style, percentile, _ in CASES * 5:
        values = (rng.standard_normal((31, 47)) ** 3).astype(np.float32)
        expected = to_unit(values, style, percentile)
        got = render_torch.to_unit(torch.from_numpy(values), style, percentile).numpy()
        np.testing.assert_allclose(got, expected, rtol=2e-7, atol=1e-7)
    for style in ("minmax", "signed", "positive"):  # degenerate maps
        zeros = np.zeros((4, 5), np.float32)
        assert np.array_equal(render_torch.to_unit(torch.from_numpy(zeros), style, 99.0).numpy(),
                              to_unit(zeros, style, 99.0))


@pytest.mark.parametrize(("style", "percentile", "weighted"), CASES)
def test_bare_heatmaps_differ_only_by_a_neighbouring_colormap_entry(style, percentile, weighted):
    rng = np.random.default_rng(1)
    table = COLORMAPS[DIVERGING if style == "signed" else "jet"]
    total = moved = 0
    for _ in range(12):
        values, size, box, _ = random_case(rng, style)
        ours, theirs = both(values, size, box, None, style, percentile, weighted)
        differ = (ours != theirs).any(-1)
        total += differ.size
        moved += differ.sum()
        if differ.any():  # the same map value, a hair either side of an entry's rounding point
            a, b = entry_of(ours[differ], table), entry_of(theirs[differ], table)
            assert (a >= 0).all() and (b >= 0).all() and (np.abs(a - b) == 1).all()
    assert moved / total < 1e-3


@pytest.mark.parametrize(("style", "percentile", "weighted"), CASES)
@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_overlays_agree_within_one_level(style, percentile, weighted, alpha):
    rng = np.random.default_rng(2)
    total = beyond = 0
    for _ in range(12):
        values, size, box, photo = random_case(rng, style)
        ours, theirs = both(values, size, box, photo, style, percentile, weighted, alpha=alpha)
        gap = np.abs(ours.astype(int) - theirs).max(-1)
        total += gap.size
        beyond += (gap > 1).sum()
        outside = np.ones(gap.shape, bool)
        left, top = max(0, round(box[0])), max(0, round(box[1]))
        outside[top:round(box[3]), left:round(box[2])] = False
        assert (theirs[outside] == photo[outside]).all()  # the photo is untouched outside the box
    assert beyond / total < 1e-3  # the colormap-entry ties above, scaled by alpha


def test_several_maps_of_one_photo_in_one_call():
    rng = np.random.default_rng(3)
    values, size, box, photo = random_case(rng, "positive")
    maps = [values, -values, np.stack([values, values * 0.5, -values])]
    styles, percentiles, weighted = ["positive", "signed", "positive"], [99.0, 99.0, 100.0], [True, True, False]
    drawn = render_torch.render_overlays([torch.from_numpy(m) for m in maps], styles, percentiles, weighted,
                                         colormap="viridis", size=size, box=box, photo=torch.from_numpy(photo))
    assert drawn.shape == (3, size[1], size[0], 3) and drawn.dtype == torch.uint8
    for i, values_i in enumerate(maps):
        single = values_i if values_i.ndim == 2 else np.abs(values_i).max(0)
        ours = render_heatmap(single, style=styles[i], colormap="viridis", size=size, box=box, original=photo,
                              percentile=percentiles[i], weighted=weighted[i])
        assert np.abs(ours.astype(int) - drawn[i].numpy()).max(-1).mean() < 0.01
