"""timm models as a model source: offline, random weights or local files;
preprocessing from the model's pretrained_cfg where the config leaves it
unset; `pretrained: true` only from the local caches, never downloaded."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from saliency_cli.cli import app
from saliency_cli.config import load_config
from saliency_cli.errors import SaliencyError
from saliency_cli.methods import registry
from saliency_cli.models import load_model

from .conftest import ROOT, SAMPLES

timm = pytest.importorskip("timm")

KWARGS = "{embed_dim: 32, depth: 2, num_heads: 2, img_size: 32, patch_size: 8}"
NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"


def config(*sets: str):
    return load_config(None, ["model.factory=null", f"model.timm={NAME}", f"model.kwargs={KWARGS}", *sets])


def test_preprocessing_comes_from_the_pretrained_cfg_unless_the_config_sets_it():
    pre = config().preprocess
    assert pre.size == [32, 32]  # model.kwargs.img_size: the size the model is built for
    assert (pre.mean, pre.std, pre.crop_fraction, pre.interpolation) == ([0.5] * 3, [0.5] * 3, 0.9, "bicubic")
    mine = config("preprocess.mean=[0.4, 0.4, 0.4]", "preprocess.interpolation=bilinear").preprocess
    assert mine.mean == [0.4] * 3 and mine.interpolation == "bilinear" and mine.std == [0.5] * 3
    assert sorted(mine.taken[1]) == ["crop_fraction", "size", "std"]
    plain = load_config(None, []).preprocess  # other sources: the built-in defaults
    assert plain.mean == [0.485, 0.456, 0.406] and plain.interpolation == "bilinear" and plain.taken is None


def test_saliency_config_says_what_it_took_from_timm():
    result = CliRunner().invoke(app, ["config", "-c", str(ROOT / "configs" / "timm_vit.yaml")])
    assert result.exit_code == 0, result.output
    first, rest = result.output.split("\n", 1)
    assert first == ("# preprocess size, crop_fraction, mean, std, interpolation: from timm's pretrained_cfg of "
                     "vit_small_patch16_224.augreg_in21k_ft_in1k")
    assert "interpolation: bicubic" in rest and "mean: [0.5, 0.5, 0.5]" in rest


def test_random_weights_and_a_local_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = load_model(config().model).eval()
    assert model.num_prefix_tokens == 1 and model.embed_dim == 32
    x = torch.randn(1, 3, 32, 32)
    for path, save in ((tmp_path / "vit.pt", torch.save), (tmp_path / "vit.safetensors", None)):
        if save is None:
            from safetensors.torch import save_file
            save_file(model.state_dict(), str(path))
        else:
            save({"state_dict": model.state_dict()}, path)
        torch.manual_seed(1)  # other random weights, then the checkpoint's
        loaded = load_model(config(f"model.checkpoint={path}").model).eval()
        torch.testing.assert_close(loaded(x), model(x))


@pytest.fixture
def no_downloads(monkeypatch, tmp_path):
    """Empty caches, and any download attempt fails the test."""
    import huggingface_hub
    from huggingface_hub import constants

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", refuse, raising=False)
    monkeypatch.setattr(timm.models._hub, "download_cached_file", refuse, raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    torch_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch"))
    yield tmp_path
    torch.hub.set_dir(torch_hub)


def test_pretrained_weights_not_cached_are_one_line_saying_how(no_downloads):
    with pytest.raises(SaliencyError) as caught:
        load_model(config("model.pretrained=true").model)
    message = str(caught.value)
    assert "\n" not in message and "not in the local caches" in message and "never downloads" in message
    assert f"timm.create_model('{NAME}', pretrained=True)" in message and "model.checkpoint" in message


def test_pretrained_weights_load_from_the_hugging_face_cache(no_downloads):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    source = load_model(config().model).eval()
    snapshot = no_downloads / "hf" / f"models--timm--{NAME}" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123abc")
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))
    torch.manual_seed(3)
    model = load_model(config("model.pretrained=true").model).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model(x), source(x))


def test_pretrained_weights_load_from_the_torch_hub_cache(no_downloads):
    name = "deit_tiny_distilled_patch16_224.fb_in1k"
    url = timm.models.get_pretrained_cfg(name).url
    sets = ["model.factory=null", f"model.timm={name}", f"model.kwargs={KWARGS}"]
    torch.manual_seed(4)
    source = load_model(load_config(None, sets).model).eval()
    (no_downloads / "torch" / "checkpoints").mkdir(parents=True)
    torch.save({"model": source.state_dict()}, no_downloads / "torch" / "checkpoints" / url.rsplit("/", 1)[1])
    model = load_model(load_config(None, [*sets, "model.pretrained=true"]).model).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model(x), source(x))


def test_config_errors():
    with pytest.raises(SaliencyError, match=r"unknown timm model 'vit_tiny_patch16_2244' \(did you mean"):
        load_config(None, ["model.factory=null", "model.timm=vit_tiny_patch16_2244"])
    with pytest.raises(SaliencyError, match="model.pretrained applies to 'timm' models only"):
        load_config(None, ["model.pretrained=true"])
    with pytest.raises(SaliencyError, match="timm.create_model raised TypeError"):
        load_model(config("model.kwargs.no_such_argument=1").model)


def test_without_timm_installed_one_line_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(SaliencyError, match=r"pip install 'saliency-cli\[timm\]'"):
        config()


def test_timm_is_imported_only_when_a_config_names_it():
    code = ("import sys; from saliency_cli.cli import app; from saliency_cli.config import load_config; "
            "from saliency_cli import pipeline; load_config(None); print('timm' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert proc.stdout.strip() == "False"


def test_explain_all_with_a_timm_config(tmp_path):
    out = tmp_path / "out"
    args = ["explain", str(SAMPLES / "chelsea.png"), "-c", str(ROOT / "configs" / "timm_vit.yaml"), "-o", str(out),
            "-m", "all", "--set", "model.pretrained=false", "--set", f"model.kwargs={KWARGS}",
            "--set", "methods.smoothgrad.n=2", "--set", "labels=null"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "skipping cam: cam needs a global average pooling" in result.output
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert list(record["outputs"]) == [m for m in registry.names("classification") if m != "cam"]  # all but CAM
    assert np.load(out / record["outputs"]["attention-rollout"]["npy"]).shape == (32, 32)
