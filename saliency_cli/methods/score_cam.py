"""Score-CAM (Wang et al. 2020): each channel of the layer, used as a mask
on the input, says by itself how much it supports the class; no gradient.

For image x, layer output A [K,h,w] and target class c:

    H_k = (A_k - min A_k) / (max A_k - min A_k)     (0 where A_k is constant)
    U_k = bilinear upsampling of H_k to the input size
    s_k = y_c(x * U_k) - y_c(x)                     (logits)
    w = softmax_k(s)
    M = ReLU(sum_k w_k A_k), bilinearly upsampled to the input size.

This is torch-cam's ScoreCAM: each channel is normalised at the layer's
resolution, then upsampled. The paper's Algorithm 1 and pytorch-grad-cam
upsample first and normalise the upsampled map; the two agree where the
layer has the input's resolution. The masked images x * U_k (B x K of them:
about 1.2 GB at K = 2048 for one 224x224 image, were they built at once) go
through the model `channel_batch` per call, sized like SmoothGrad's noisy
copies when not set (saliency_cli/memory.py). Each masked image's score is
computed alone, so the maps do not depend on `channel_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import SaliencyError
from ..memory import run_in_chunks
from .layer_pass import CamLayerParams, finish, layer_pass
from .registry import Attribution, as_logits, register


@dataclass
class ScoreCamParams(CamLayerParams):
    channel_batch: int | None = None  # masked images per model call; null: sized to the device

    def check(self) -> None:
        if self.channel_batch is not None and self.channel_batch < 1:
            raise SaliencyError("score-cam: channel_batch must be >= 1")


def channel_masks(features: torch.Tensor) -> torch.Tensor:
    """[B,K,h,w] -> each channel min-max normalised over its h x w positions."""
    low = features.amin(dim=(2, 3), keepdim=True)
    span = features.amax(dim=(2, 3), keepdim=True) - low
    return torch.where(span > 0, (features - low) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)


@register(
    "score-cam",
    summary="Layer channels as input masks, weighted by the class score each mask keeps (no gradient)",
    paper="Wang et al. 2020, arXiv:1910.01279",
    params=ScoreCamParams,
    pixel_space=False,
)
def score_cam(model, images, targets, params):
    found = layer_pass(model, images, targets, params.layer, "score-cam", gradient=False)
    batch, channels = found.features.shape[:2]
    features = found.features.to(torch.promote_types(found.features.dtype, torch.float32))
    masks = channel_masks(features).flatten(0, 1)[:, None]  # [B*K,1,h,w], image-major
    base = found.logits.float().gather(1, found.targets[:, None])[:, 0]
    scores = images.new_empty(batch * channels, dtype=torch.float32)
    size = tuple(images.shape[-2:])

    def step(start: int, stop: int) -> None:
        image = torch.arange(start, stop, device=images.device) // channels
        up = F.interpolate(masks[start:stop], size=size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            logits = as_logits(model(images[image] * up.to(images.dtype)), stop - start)
        scores[start:stop] = logits.float().gather(1, found.targets[image, None])[:, 0] - base[image]

    run_in_chunks(batch * channels, step, device=images.device, chunk=params.channel_batch, probe=batch,
                  what="masked images")
    weights = scores.view(batch, channels).softmax(dim=1)
    maps = F.relu((weights[:, :, None, None].to(features.dtype) * features).sum(dim=1))
    return Attribution(finish(maps, images, params), found.logits, found.targets)
