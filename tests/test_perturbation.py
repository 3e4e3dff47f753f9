"""Black-box methods: RISE against an independent implementation of the
paper's formula with the same seeded masks, occlusion against captum's
Occlusion; chunking does not change either."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import saliency_cli as sal
from saliency_cli.errors import SaliencyError

from .helpers import TinyCNN, seeded


@pytest.fixture(scope="module")
def model():
    return seeded(TinyCNN(classes=5, width=6), 1).eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(2)
    return torch.randn(2, 3, 14, 11)


def rise_masks_by_hand(n, grid, p, height, width, seed):
    """The RISE recipe written out mask by mask, drawing from the generator in
    the documented order: all N grids, then the N row shifts, then the N column shifts."""
    gen = torch.Generator().manual_seed(seed)
    grids = (torch.rand(n, 1, grid, grid, generator=gen) < p).float()
    cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
    dy = torch.randint(0, cell_h, (n,), generator=gen)
    dx = torch.randint(0, cell_w, (n,), generator=gen)
    masks = []
    for i in range(n):
        big = F.interpolate(grids[i:i + 1], size=((grid + 1) * cell_h, (grid + 1) * cell_w), mode="bilinear",
                            align_corners=False)[0, 0]
        masks.append(big[dy[i]:dy[i] + height, dx[i]:dx[i] + width].clamp(0, 1))
    return masks


@pytest.mark.parametrize("score", ["probability", "logit"])
def test_rise_equals_the_formula_with_the_same_masks(model, images, score):
    n, grid, p = 40, 3, 0.4
    targets = torch.tensor([1, 4])
    ours = sal.attribute(model, images, "rise", targets=targets, num_masks=n, grid=grid, p=p, seed=9, score=score)
    want = torch.zeros(2, 14, 11)
    with torch.no_grad():
        for mask in rise_masks_by_hand(n, grid, p, 14, 11, seed=9):
            out = model(images * mask)
            f = out.softmax(dim=1) if score == "probability" else out
            want += f[torch.arange(2), targets][:, None, None] * mask
    torch.testing.assert_close(ours, want / (n * p), rtol=1e-5, atol=1e-6)


def test_rise_does_not_depend_on_mask_batch(model, images):
    maps = [sal.attribute(model, images, "rise", num_masks=9, grid=4, mask_batch=mb) for mb in (1, 4, 18, None)]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-5, atol=1e-7)


def test_rise_finds_the_only_region_the_model_sees():
    class Region(torch.nn.Module):  # class 0's logit is the brightness of rows 4..7, columns 2..5
        def forward(self, x):
            bright = x[:, :, 4:8, 2:6].mean(dim=(1, 2, 3))
            return torch.stack([4 * bright, torch.zeros_like(bright)], dim=1)

    maps = sal.attribute(Region(), torch.ones(1, 3, 16, 16), "rise", targets=0, num_masks=500, grid=4, seed=1,
                         score="logit")
    row, col = divmod(int(maps[0].argmax()), 16)
    assert 4 <= row < 8 and 2 <= col < 6
    # far from the region a mask is independent of the score: E[f | pixel kept] = E[f] = 4 * E[M] = 2
    assert abs(float(maps[0, 10:, 10:].mean()) - 2.0) < 0.1
    assert maps[0, 4:8, 2:6].mean() > 2.4


@pytest.mark.parametrize("window, stride, base", [(5, 3, 0.0), (4, 4, -1.5), (11, 2, 0.5)])
def test_occlusion_equals_captum(model, images, window, stride, base):
    from captum.attr import Occlusion

    targets = torch.tensor([2, 0])
    ours = sal.attribute(model, images, "occlusion", targets=targets, window=window, stride=stride, baseline=base)
    ref = Occlusion(model).attribute(images, sliding_window_shapes=(3, window, window),
                                     strides=(3, stride, stride), baselines=base, target=targets)
    for channel in range(3):  # captum's map is the same in every channel
        torch.testing.assert_close(ours, ref[:, channel], rtol=1e-5, atol=1e-6)


def test_occlusion_of_probabilities_equals_captum(model, images):
    from captum.attr import Occlusion

    ours = sal.attribute(model, images, "occlusion", targets=torch.tensor([3, 3]), window=6, stride=4,
                         score="probability")
    ref = Occlusion(lambda x: model(x).softmax(dim=1)).attribute(
        images, sliding_window_shapes=(3, 6, 6), strides=(3, 4, 4), baselines=0.0, target=3)
    torch.testing.assert_close(ours, ref[:, 0], rtol=1e-5, atol=1e-7)


def test_occlusion_does_not_depend_on_window_batch(model, images):
    maps = [sal.attribute(model, images, "occlusion", window=5, stride=3, window_batch=wb) for wb in (1, 5, 32, None)]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-5, atol=1e-6)


def test_bad_parameters(model, images):
    with pytest.raises(SaliencyError, match="window 16 is larger than the 14x11 input"):
        sal.attribute(model, images, "occlusion")
    with pytest.raises(SaliencyError, match="stride between 1 and window"):
        sal.attribute(model, images, "occlusion", window=4, stride=5)
    with pytest.raises(SaliencyError, match="p must be in"):
        sal.attribute(model, images, "rise", p=0.0)
