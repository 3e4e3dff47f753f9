from __future__ import annotations

import numpy as np
import pytest

from saliency_cli.render import COLORMAPS, render_heatmap, to_unit


def colorize(unit: np.ndarray, colormap: str) -> np.ndarray:
    """The reference colouring: [h,w] in [0,1] -> the nearest of the colormap's 256 entries."""
    return COLORMAPS[colormap][np.clip(np.floor(unit.astype(np.float64) * 255 + 0.5), 0, 255).astype(int)]


def test_positive_scaling_clips_at_the_percentile_and_keeps_the_raw_map():
    raw = np.arange(100, dtype=np.float32).reshape(10, 10)
    copy = raw.copy()
    unit = to_unit(raw, "positive", 90.0)
    assert np.array_equal(raw, copy)
    assert unit.max() == 1.0 and unit[0, 0] == 0.0
    assert unit[5, 0] == pytest.approx(50 / np.percentile(raw, 90))


def test_signed_scaling_puts_zero_in_the_middle():
    unit = to_unit(np.array([[-2.0, 0.0, 2.0]], np.float32), "signed", 100.0)
    assert unit.tolist() == [[0.0, 0.5, 1.0]]


def test_minmax_and_constant_maps():
    assert to_unit(np.array([[-3.0, 1.0]], np.float32), "minmax").tolist() == [[0.0, 1.0]]
    assert not to_unit(np.zeros((3, 3), np.float32), "positive").any()


def test_jet_runs_blue_to_red():
    lut = COLORMAPS["jet"]
    assert lut[0].argmax() == 2 and lut[-1].argmax() == 0
    bare = render_heatmap(np.array([[0.0, 1.0]], np.float32), style="minmax", colormap="jet", size=(2, 1),
                          box=(0, 0, 2, 1))
    assert bare.tolist() == [[lut[0].tolist(), lut[-1].tolist()]]


def test_overlay_at_original_size_only_inside_the_box():
    original = np.full((40, 60, 3), 100, np.uint8)
    values = np.ones((8, 8), np.float32)
    img = render_heatmap(values, style="positive", colormap="gray", size=(60, 40), box=(10, 0, 50, 40),
                         original=original, alpha=0.5)
    arr = np.asarray(img)
    assert arr.shape == (40, 60, 3) and arr.dtype == np.uint8
    assert (arr[:, :10] == 100).all() and (arr[:, 50:] == 100).all()
    assert abs(int(arr[20, 30, 0]) - (100 + 255) // 2) <= 1
    bare = np.asarray(render_heatmap(values, style="positive", colormap="gray", size=(60, 40),
                                     box=(0, 0, 60, 40)))
    assert (bare == 255).all()


@pytest.mark.parametrize(("style", "weighted"), [("positive", True), ("signed", True), ("minmax", False)])
def test_banded_blending_equals_blending_at_once(monkeypatch, style, weighted):
    """Large photos blend a band of rows at a time; the pixels must not change."""
    import saliency_cli.render as render

    rng = np.random.default_rng(1)
    original = rng.integers(0, 256, (97, 130, 3), dtype=np.uint8)
    values = rng.standard_normal((16, 16)).astype(np.float32)
    kwargs = dict(style=style, colormap="jet", size=(130, 97), box=(3.0, 5.0, 127.0, 90.0), original=original,
                  alpha=0.4, weighted=weighted)
    whole = np.asarray(render_heatmap(values, **kwargs))
    monkeypatch.setattr(render, "_BAND_PIXELS", 7 * 124)  # 7 rows per band, the last one short
    banded = np.asarray(render_heatmap(values, **kwargs))
    assert np.array_equal(banded, whole)
    assert (banded[:5] == original[:5]).all() and (banded[90:] == original[90:]).all()  # outside the box
    assert not (banded[5:90, 3:127] == original[5:90, 3:127]).all()


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_cam_style_blend_is_the_rounded_mix_of_photo_and_colour(alpha):
    """Every (photo byte, heat byte) pair: round(photo * (1 - alpha) + heat * alpha),
    the integer path of alpha 0.5 and the table of other alphas alike."""
    import saliency_cli.render as render

    pairs = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1).reshape(-1, 2)
    photo = np.repeat(pairs[:, :1], 3, axis=1).astype(np.uint8)[None]  # [1, 65536, 3]
    heat = np.repeat(pairs[:, 1:], 3, axis=1).astype(np.uint8)[None]
    got = render._blend(photo, heat, alpha)[0, :, 0].astype(int)
    want = np.floor(pairs[:, 0] * (1 - alpha) + pairs[:, 1] * alpha + 0.5)
    # the float32 arithmetic of the table may round a tie the other way; alpha 0.5 has exact ties
    assert np.abs(got - want).max() <= (0 if alpha == 0.5 else 1)
    assert np.array_equal(got, render._blend_table(alpha)[pairs[:, 0] * 256 + pairs[:, 1]])


def test_pillow_quiet_is_shared_by_threads_and_restores_the_filters():
    """Photos decode on several threads; each entering and leaving its own
    warnings.catch_warnings could leave the process's filters at 'ignore'."""
    import threading
    import time
    import warnings

    from saliency_cli.render import pillow_quiet

    before = list(warnings.filters)

    def read():
        for _ in range(50):
            with pillow_quiet():
                warnings.warn("a damaged EXIF block", UserWarning)  # ignored
                time.sleep(0.0005)  # decoding: another thread enters meanwhile

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warnings.filters == before  # restored, whatever the interleaving
    with pytest.warns(UserWarning, match="still heard"):
        warnings.warn("still heard", UserWarning)


@pytest.mark.parametrize("style", ["positive", "signed"])
@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_weighted_blend_is_its_float32_formula(style, alpha):
    """round(photo * (1 - alpha) * (1 - s) + heat * s) in float32, s the
    strength of the pixel's colormap entry e: e / 255, or |2 e / 255 - 1|
    for signed maps; computed here per pixel, looked up by the renderer."""
    import saliency_cli.render as render

    rng = np.random.default_rng(5)
    photo = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    entry = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    colormap = "bwr" if style == "signed" else "jet"
    got = render._weighted_blend(photo, entry, render.weighted_table(colormap, style, alpha))
    unit = entry.astype(np.float32) / np.float32(255)
    s = np.abs(2 * unit - 1) if style == "signed" else unit
    heat = COLORMAPS[colormap][entry].astype(np.float32)
    keep = np.float32(1 - alpha) * (1 - s)
    want = (photo.astype(np.float32) * keep[..., None] + heat * s[..., None] + np.float32(0.5)).astype(np.uint8)
    assert np.array_equal(got, want)


def test_entries_are_the_nearest_colormap_entries_of_the_resized_map():
    """entries() resizes 255 * unit + 0.5 and lets Pillow truncate: the same
    entries as resizing the map and rounding, but for float ties."""
    from PIL import Image

    import saliency_cli.render as render

    rng = np.random.default_rng(6)
    unit = rng.random((31, 45), dtype=np.float32)
    unit[0, :5] = [0.0, 1.0, 0.5 / 255, 254.5 / 255, 1e-9]
    for size in [(45, 31), (300, 200), (20, 11)]:  # the same, larger and smaller (antialiased)
        got = np.asarray(render.entries(unit, size))
        resized = np.asarray(Image.fromarray(unit, mode="F").resize(size, Image.BILINEAR))
        want = np.clip(resized * np.float32(255) + np.float32(0.5), 0, 255).astype(np.uint8)
        assert got.shape == want.shape[:2] and np.abs(got.astype(int) - want).max() <= 1
        assert (got != want).mean() < 1e-3
    assert np.asarray(render.entries(unit, (45, 31)))[0, :2].tolist() == [0, 255]


def test_percentile_of_is_numpys_to_the_bit():
    from saliency_cli.render import percentile_of

    rng = np.random.default_rng(7)
    for i in range(400):
        values = (rng.standard_normal(int(rng.integers(1, 900))) * 10.0 ** rng.uniform(-20, 20)).astype(np.float32)
        if i % 3 == 0:
            values = np.round(values)  # ties
        q = float(rng.choice([0.0, 50.0, 99.0, 100.0, rng.uniform(0, 100)]))
        assert percentile_of(values.reshape(1, -1), q) == float(np.percentile(values, q))


@pytest.mark.parametrize("style", ["positive", "signed"])
def test_weighted_overlay_is_within_one_level_of_the_exact_strength(style):
    """The overlay takes each pixel's strength from its colormap entry (a
    lookup): at most 1 level from blending with the pixel's own resized value."""
    from PIL import Image

    rng = np.random.default_rng(8)
    photo = rng.integers(0, 256, (120, 170, 3), dtype=np.uint8)
    values = rng.standard_normal((24, 24)).astype(np.float32) ** 3
    if style == "positive":
        values = np.abs(values)
    got = render_heatmap(values, style=style, colormap="jet", size=(170, 120), box=(0, 0, 170, 120),
                         original=photo, alpha=0.4, weighted=True)
    unit = np.asarray(Image.fromarray(to_unit(values, style, 99.0), mode="F").resize((170, 120), Image.BILINEAR))
    s = np.abs(2 * unit - 1) if style == "signed" else unit
    heat = colorize(unit, "bwr" if style == "signed" else "jet").astype(np.float32)
    exact = np.floor(photo * (0.6 * (1 - s))[..., None] + heat * s[..., None] + 0.5)
    gap = np.abs(got.astype(int) - exact)
    assert gap.max() <= 1 and (gap > 0).any()  # the lookup differs, by at most a level


@pytest.mark.parametrize("style", ["positive", "signed", "minmax"])
def test_nan_and_inf_show_as_zero_in_both_renderers(style):
    """A map with NaN or +-inf (a method's division by zero) shows as the map
    with those pixels at 0, by the numpy and the torch renderer alike (as
    numpy.nan_to_num's float32 extremes, minmax's range overflowed float32
    into NaN everywhere), and the map itself is left as it was."""
    import torch

    from saliency_cli import render_torch

    rng = np.random.default_rng(3)
    values = rng.standard_normal((16, 16)).astype(np.float32)
    values[0, 0], values[1, 1], values[2, 2] = np.nan, np.inf, -np.inf
    before = values.copy()
    zeroed = np.where(np.isfinite(values), values, np.float32(0))
    unit = to_unit(values, style)
    assert np.isfinite(unit).all() and unit.min() >= 0 and unit.max() <= 1
    np.testing.assert_array_equal(unit, to_unit(zeroed, style))
    np.testing.assert_allclose(render_torch.to_unit(torch.from_numpy(values), style, 99.0).numpy(), unit, atol=1e-6)
    np.testing.assert_array_equal(values, before)  # NaNs included: assert_array_equal matches them
