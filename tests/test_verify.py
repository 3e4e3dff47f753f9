"""Outputs that do not load (a crashed machine leaves empty or truncated
files listed as done) are redone at resume; `saliency verify` lists them."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from saliency_cli.cli import app
from saliency_cli.config import load_config
from saliency_cli.integrity import npy_problem, png_problem, verify_folder
from saliency_cli.pipeline import run

from .test_reliability import many_images

TINY_SET = "model.factory=tests.helpers:TinyCNN"


@pytest.fixture
def finished(tmp_path):
    """Four images explained with gradient, and one input that fails."""
    many_images(tmp_path / "in", 4)
    (tmp_path / "in" / "zz-empty.png").write_bytes(b"")
    out = tmp_path / "out"
    summary = run(load_config(None, [TINY_SET]), [str(tmp_path / "in")], out, methods=["gradient"])
    assert (summary.ok, summary.failed) == (4, 1)
    return tmp_path / "in", out


def test_resume_redoes_outputs_that_do_not_load(finished, saliency_log, caplog):
    folder, out = finished
    npy = out / "img000" / "gradient.npy"
    npy.write_bytes(npy.read_bytes()[:-100])  # truncated
    (out / "img001" / "gradient.png").write_bytes(b"")  # empty
    png = out / "img002" / "gradient.png"
    png.write_bytes(png.read_bytes()[:-20])  # its end never reached the disk
    assert verify_folder(out).problems
    with caplog.at_level(logging.INFO, logger="saliency"):
        summary = run(load_config(None, [TINY_SET]), [str(folder)], out, methods=["gradient"])
    assert "3 image(s) in" in caplog.text and "do not load" in caplog.text
    assert (summary.skipped, summary.ok) == (1, 3)  # the intact image and nothing else is kept
    result = verify_folder(out)
    assert (result.images, result.failed, result.files, result.problems) == (4, 1, 8, [])


def test_cheap_checks_read_headers_and_sizes(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 6), np.float32))
    data = (tmp_path / "a.npy").read_bytes()
    assert npy_problem(tmp_path / "a.npy", [4, 6], "float32") is None
    assert npy_problem(tmp_path / "a.npy", [6, 4], "float32") == "shape [4, 6], recorded [6, 4]"
    assert npy_problem(tmp_path / "a.npy", [4, 6], "float16") == "dtype float32, recorded float16"
    (tmp_path / "a.npy").write_bytes(data + b"x")
    assert npy_problem(tmp_path / "a.npy") == "1 bytes too long"
    (tmp_path / "a.npy").write_bytes(b"\0" * len(data))  # a file system that kept the size, not the data
    assert npy_problem(tmp_path / "a.npy") == "not an .npy file (damaged header)"
    assert npy_problem(tmp_path / "missing.npy") == "missing"
    Image.new("RGB", (7, 5)).save(tmp_path / "a.png")
    assert png_problem(tmp_path / "a.png", [7, 5]) is None
    assert png_problem(tmp_path / "a.png", [5, 7]) == "7x5 pixels, recorded 5x7"
    (tmp_path / "a.png").write_bytes(b"\0" * 100)
    assert png_problem(tmp_path / "a.png") == "not a PNG file (damaged header)"


def test_verify_passes_a_good_folder_and_lists_every_problem_of_a_damaged_one(finished, saliency_log):
    _, out = finished
    runner = CliRunner()
    good = runner.invoke(app, ["verify", str(out)])
    assert good.exit_code == 0, good.output
    assert good.stdout == ""
    assert ("4 image(s), 8 file(s) in" in good.stderr and "every file loads as recorded; 1 input(s) recorded as "
            "failed" in good.stderr)
    (out / "img000" / "gradient.npy").unlink()
    np.save(out / "img001" / "gradient.npy", np.zeros((3, 3), np.float32))
    np.save(out / "img002" / "gradient.npy", np.zeros((224, 224), np.float64))
    Image.new("RGB", (10, 10)).save(out / "img002" / "gradient.png")
    png = bytearray((out / "img003" / "gradient.png").read_bytes())
    png[60:90] = bytes(30)  # damaged pixel data; header and end intact
    (out / "img003" / "gradient.png").write_bytes(bytes(png))
    bad = runner.invoke(app, ["verify", str(out)])
    assert bad.exit_code == 1, bad.output
    lines = bad.stdout.splitlines()
    assert lines[:4] == [f"{out}/img000/gradient.npy: missing",
                         f"{out}/img001/gradient.npy: shape [3, 3], recorded [224, 224]",
                         f"{out}/img002/gradient.npy: dtype float64, recorded float32",
                         f"{out}/img002/gradient.png: 10x10 pixels, recorded 56x40"]
    assert len(lines) == 5 and lines[4].startswith(f"{out}/img003/gradient.png: does not decode")
    assert "5 problem(s) in 4 of 4 image(s)" in bad.stderr
    empty = runner.invoke(app, ["verify", str(out / "img000")])
    assert empty.exit_code == 2 and "no manifest in" in empty.stderr


def test_records_carry_the_npy_shape_and_dtype_and_round_trip():
    from saliency_cli.records import SCHEMA_VERSION, Files, Record

    files = Files(npy="a/gradient.npy", pngs=["a/gradient.png"])
    files.describe(np.zeros((3, 224, 224), np.float32))
    data = Record(input="a.png", key="a", outputs={"gradient": files}).to_json()
    assert data["schema_version"] == SCHEMA_VERSION == 2
    assert data["outputs"]["gradient"] == {"png": "a/gradient.png", "npy": "a/gradient.npy",
                                           "shape": [3, 224, 224], "dtype": "float32"}
    assert Record.from_json(data).to_json() == data
