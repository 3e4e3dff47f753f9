from __future__ import annotations

import textwrap

import pytest
import torch
import torchvision

from saliency_cli.config import ModelConfig
from saliency_cli.errors import SaliencyError
from saliency_cli.models import load_model

from .helpers import TinyCNN


def test_torchvision_architecture_with_state_dict(tmp_path):
    source = torchvision.models.resnet18(weights=None, num_classes=10)
    path = tmp_path / "r18.pt"
    torch.save(source.state_dict(), path)
    model = load_model(ModelConfig(arch="resnet18", num_classes=10, checkpoint=str(path)))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    source = torchvision.models.resnet18(weights=None, num_classes=3)
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {prefix + k: v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    model = load_model(ModelConfig(arch="resnet18", num_classes=3, checkpoint=str(path)))
    assert torch.equal(model.fc.weight, source.fc.weight)


def test_mismatched_checkpoint_lists_the_keys(tmp_path):
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), path)
    with pytest.raises(SaliencyError) as err:
        load_model(ModelConfig(arch="resnet34", checkpoint=str(path)))
    message = str(err.value)
    assert "does not fit the model" in message
    assert "missing key(s): layer1.2.conv1.weight" in message
    assert "fc.weight: checkpoint [10, 512], model [1000, 512]" in message


def test_factory_from_module_and_from_file(tmp_path, monkeypatch):
    source = tmp_path / "my_models.py"
    source.write_text(textwrap.dedent("""
        from tests.helpers import TinyCNN
        def build(classes=5):
            return TinyCNN(classes=classes)
    """))
    model = load_model(ModelConfig(factory=f"{source}:build", kwargs={"classes": 7}))
    assert model.fc.out_features == 7
    monkeypatch.chdir(tmp_path)  # a module in the current folder imports by name
    model = load_model(ModelConfig(factory="my_models:build"))
    assert model.fc.out_features == 5


def test_factory_errors():
    with pytest.raises(SaliencyError, match="cannot import 'no_such_pkg'"):
        load_model(ModelConfig(factory="no_such_pkg:build"))
    with pytest.raises(SaliencyError, match="unknown name 'efficientnet_lite'.*did you mean 'efficientnet_lite0'"):
        load_model(ModelConfig(factory="saliency_cli.models:efficientnet_lite"))
    with pytest.raises(SaliencyError, match="package.module:callable"):
        load_model(ModelConfig(factory="saliency_cli.models"))


def test_a_factory_that_raises_is_a_config_error(tmp_path):
    source = tmp_path / "broken.py"
    source.write_text("def build():\n    raise RuntimeError('weights not found')\n")
    with pytest.raises(SaliencyError, match="broken.py:build raised RuntimeError: weights not found"):
        load_model(ModelConfig(factory=f"{source}:build"))


def test_unknown_architecture_suggests():
    with pytest.raises(SaliencyError, match="unknown torchvision model 'resnet5'.*'resnet50'"):
        load_model(ModelConfig(arch="resnet5"))


def test_pickled_model_needs_explicit_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(TinyCNN(), path)
    with pytest.raises(SaliencyError, match=r"pickled Python objects \(tests.helpers.TinyCNN.*trust_checkpoint: true"):
        load_model(ModelConfig(checkpoint=str(path), trust_checkpoint=False, factory="tests.helpers:TinyCNN"))
    model = load_model(ModelConfig(checkpoint=str(path), trust_checkpoint=True))
    assert isinstance(model, TinyCNN)


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(SaliencyError, match="no such file"):
        load_model(ModelConfig(arch="resnet18", checkpoint=str(tmp_path / "nope.pt")))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SaliencyError, match="cannot be read: not a PyTorch checkpoint"):
        load_model(ModelConfig(arch="resnet18", checkpoint=str(bad)))
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "ok.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:5000])
    with pytest.raises(SaliencyError, match="cannot be read"):
        load_model(ModelConfig(arch="resnet18", checkpoint=str(tmp_path / "cut.pt")))


def test_default_model_is_offline_and_pretrained(lite0, chelsea_input):
    from saliency_cli.targets import load_labels

    with torch.no_grad():
        top = lite0(chelsea_input).argmax(1).item()
    assert load_labels("imagenet")[top] == "Egyptian cat"
