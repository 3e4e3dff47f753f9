"""Loading the model named by the config: a source (sources.py: a
torchvision architecture, a factory, a timm model) builds it, a state-dict
checkpoint loads over it, or, with explicit trust, a pickled model is the
checkpoint itself.

Relative paths (checkpoint, factory file) are relative to the current directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import SaliencyError

# isort: off
from . import sources
from . import arch  # noqa: F401  (registers the `arch` source: torchvision)
from . import factory  # noqa: F401  (registers the `factory` source)
from . import timm  # noqa: F401  (registers the `timm` source; timm itself is imported only when used)
from . import ultralytics  # noqa: F401  (registers the `ultralytics` source; the package is imported only when used)
from .checkpoint import extract_state_dict, load_state, read_checkpoint
from .factory import efficientnet_lite0  # noqa: F401  (the built-in default: "saliency_cli.models:efficientnet_lite0")
# isort: on

if TYPE_CHECKING:
    from ..config import ModelConfig


def load_model(cfg: ModelConfig) -> nn.Module:
    """Build the model described by `cfg`, on the CPU, as found (not yet in eval mode)."""
    model: Any = sources.build(cfg) if sources.chosen(cfg) else None
    if cfg.checkpoint:
        obj = read_checkpoint(cfg.checkpoint, trust=cfg.trust_checkpoint)
        if isinstance(obj, nn.Module):
            model = obj if model is None else load_state(model, obj.state_dict(), cfg)
        elif model is None:
            raise SaliencyError(
                f"model.checkpoint {cfg.checkpoint!r} holds weights, not a model: name the "
                "architecture too (model.arch, model.factory or model.timm)"
            )
        else:
            load_state(model, extract_state_dict(obj, cfg.checkpoint), cfg)
    if not callable(model):
        raise SaliencyError(f"the model is not callable (got {type(model).__name__})")
    return model
