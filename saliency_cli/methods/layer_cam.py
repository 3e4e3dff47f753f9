"""LayerCAM (Jiang et al. 2021, "LayerCAM: Exploring Hierarchical Class
Activation Maps for Localization", IEEE TIP): every position weighs its own
activations by its own positive gradient,

    M = ReLU(sum_k ReLU(dy_c/dA_k) * A_k),

bilinearly upsampled to the input size. Meaningful at early layers too,
where Grad-CAM's channel-averaged gradient blurs. One forward and one
backward to the layer, as Grad-CAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from .layer_pass import CamLayerParams, finish, layer_pass
from .registry import Attribution, register


@dataclass
class LayerCamParams(CamLayerParams):
    pass


@register(
    "layer-cam",
    summary="Activations weighted by their own positive gradients, position by position",
    paper="Jiang et al. 2021, IEEE TIP 30:5875",
    params=LayerCamParams,
    pixel_space=False,
)
def layer_cam(model, images, targets, params):
    found = layer_pass(model, images, targets, params.layer, "layer-cam")
    maps = F.relu((F.relu(found.grads) * found.features).sum(dim=1))
    return Attribution(finish(maps, images, params), found.logits, found.targets)
