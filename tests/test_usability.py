"""Smaller things users trip on: a labels list of the wrong length, a
Grad-CAM layer that gives a constant map, hidden files in photo folders,
--version."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import saliency_cli as sal
from saliency_cli.cli import app
from saliency_cli.config import load_config
from saliency_cli.discovery import discover
from saliency_cli.errors import SaliencyError
from saliency_cli.pipeline import run

from .helpers import TinyCNN
from .test_reliability import GOOD, many_images

TINY_SET = "model.factory=tests.helpers:TinyCNN"



def test_labels_that_do_not_fit_the_model(tmp_path, saliency_log, caplog):
    photo = tmp_path / "a.png"
    Image.fromarray(GOOD).save(photo)
    with caplog.at_level(logging.WARNING, logger="saliency"):
        run(load_config(None, [TINY_SET, "labels=[a, b, c, d, e]"]), [str(photo)], tmp_path / "o1",
            methods=["gradient"])
        assert caplog.text == ""
        run(load_config(None, [TINY_SET, "labels=[a, b, c, d, e, f]"]), [str(photo)], tmp_path / "o2",
            methods=["gradient"])
    assert "labels: 6 name(s) for a model with 5 outputs" in caplog.text
    with pytest.raises(SaliencyError, match=r"labels: class 3 is explained but the list has only 2 name\(s\)"):
        run(load_config(None, [TINY_SET, "labels=[a, b]", "runtime.target=3"]), [str(photo)], tmp_path / "o3",
            methods=["gradient"])


def test_a_grad_cam_layer_with_a_one_pixel_map_is_flagged(saliency_log, caplog):
    model, images = TinyCNN().eval(), torch.rand(2, 3, 16, 16)
    with caplog.at_level(logging.WARNING, logger="saliency"):
        sal.attribute(model, images, method="grad-cam", layer="conv2")
        assert caplog.text == ""
        maps = sal.attribute(model, images, method="grad-cam", layer="pool")
    assert "grad-cam: layer 'pool' outputs a 1x1 map" in caplog.text and "constant" in caplog.text
    assert torch.allclose(maps, maps[:, :1, :1].expand_as(maps))  # constant over each image, as it says


def test_hidden_files_and_folders_are_skipped_unless_asked(tmp_path, saliency_log, caplog):
    many_images(tmp_path / "in", 1)
    for hidden in (".ipynb_checkpoints/img000-checkpoint.png", "._img000.png", "sub/.thumb.png"):
        (tmp_path / "in" / hidden).parent.mkdir(exist_ok=True)
        Image.fromarray(GOOD).save(tmp_path / "in" / hidden)
    assert [i.key for i in discover([str(tmp_path / "in")]).items] == ["img000"]
    assert discover([str(tmp_path / "in" / "._img000.png")]).items  # named explicitly: taken
    with caplog.at_level(logging.INFO, logger="saliency"):
        summary = run(load_config(None, [TINY_SET]), [str(tmp_path / "in")], tmp_path / "out", methods=["gradient"])
    assert summary.found == 1 and "skipping 3 hidden file(s) and folder(s)" in caplog.text
    summary = run(load_config(None, [TINY_SET]), [str(tmp_path / "in")], tmp_path / "out", methods=["gradient"],
                  include_hidden=True)
    assert (summary.found, summary.skipped, summary.ok) == (4, 1, 3)


def test_version(saliency_log):
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith(f"saliency-cli {sal.__version__} (torch ")
