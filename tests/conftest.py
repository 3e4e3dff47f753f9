from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

if torch.cuda.is_available():
    # The tests compare GPU results with CPU references: cuDNN convolutions in IEEE float32 in this
    # process, not PyTorch's default TF32 (operands rounded to a 10-bit mantissa, about 1e-3
    # relative), which the tool leaves as it is (README: Channels-last and --amp). The CLI runs in
    # subprocesses keep the default, and their tests compare with tolerances for it.
    if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):  # torch >= 2.9
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="session")
def lite0():
    """The offline pretrained default model, loaded once."""
    from saliency_cli.models import efficientnet_lite0

    return efficientnet_lite0().eval()


@pytest.fixture(scope="session")
def chelsea_input():
    """chelsea.png preprocessed exactly as the default config does: [1,3,224,224]."""
    from saliency_cli.config import Config
    from saliency_cli.data import load_image, normalize, preprocess

    cfg = Config().preprocess
    tensor, _ = preprocess(load_image(str(SAMPLES / "chelsea.png")), cfg)
    return normalize(tensor[None], cfg)


@pytest.fixture
def saliency_log(monkeypatch):
    """The 'saliency' logger reaching caplog, and as it was afterwards (a CLI
    command run in this process, by CliRunner, reconfigures it)."""
    log = logging.getLogger("saliency")
    monkeypatch.setattr(log, "handlers", [])
    monkeypatch.setattr(log, "propagate", True)
    monkeypatch.setattr(log, "level", log.level)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    return log


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
