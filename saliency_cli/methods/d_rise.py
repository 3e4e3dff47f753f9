"""D-RISE (Petsiuk et al. 2021, "Black-box Explanation of Object Detectors
via Saliency Maps"): random masks, detections of each masked image, and the
masks weighted by how well those detections match the target detection.

Masks as in RISE (methods/masks.py); the masked image is image * mask.

For target detection t and mask i, over the detections j of the masked image:
    w_i = max_j IoU(b_t, b_j) * cos(P_t, P_j) * O_j      (0 if none)
    S_t = sum_i w_i M_i / N
with O the detection's score (objectness / confidence) and P its class
probability vector. No further normalisation: S_t is in [0, 1], and a pixel's
value is the mean, over the masks, of the match with that pixel kept.

Every mask's parameters (the N small grids and N shifts) are drawn up front
from one seeded generator on the device; full-size masks are built chunk by
chunk, `mask_batch` masked images per detector call. So for a fixed seed the
maps do not depend on `mask_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..detection import DetectionExplanation, Detections, Detector, box_iou
from ..errors import SaliencyError
from ..memory import run_in_chunks
from .masks import RiseMasks
from .registry import Progress, register_detection


@dataclass
class DRiseParams:
    num_masks: int = 1000  # the paper uses 5000
    grid: int = 16
    p: float = 0.5  # probability that a grid cell is kept
    seed: int = 0
    mask_batch: int | None = None  # masked images per detector call; null: sized to the device
    score_threshold: float = 0.5  # explain detections of the unmasked image scoring at least this
    max_detections: int = 10  # at most this many, highest scores first

    def check(self) -> None:
        if self.num_masks < 1 or self.grid < 1 or self.max_detections < 1:
            raise SaliencyError("d-rise: num_masks, grid and max_detections must be >= 1")
        if not 0 < self.p <= 1:
            raise SaliencyError("d-rise: p must be in (0, 1]")
        if self.mask_batch is not None and self.mask_batch < 1:
            raise SaliencyError("d-rise: mask_batch must be >= 1")


def similarity(targets: Detections, found: list[Detections]) -> torch.Tensor:
    """[K, M]: for each target and masked image, the best match
    IoU * cos(class vectors) * score over that image's detections."""
    k, m = len(targets), len(found)
    lengths = [len(d) for d in found]  # known on the host: no device sync
    weights = targets.boxes.new_zeros((k, m))
    if sum(lengths) == 0:
        return weights
    boxes = torch.cat([d.boxes for d in found])
    probs = torch.cat([d.probs for d in found])
    scores = torch.cat([d.scores for d in found])
    if probs.shape[1] != targets.probs.shape[1]:
        raise SaliencyError(f"the detector's class vectors changed length ({targets.probs.shape[1]} for "
                            f"the image, {probs.shape[1]} for a masked copy)")
    cosine = F.normalize(targets.probs, dim=1) @ F.normalize(probs, dim=1).T
    pairs = box_iou(targets.boxes, boxes) * cosine * scores[None, :]  # [K, D]
    owner = torch.repeat_interleave(torch.arange(m), torch.tensor(lengths)).to(weights.device)
    return weights.scatter_reduce_(1, owner.expand(k, -1), pairs, reduce="amax", include_self=True)


def detections_to_explain(found: Detections, params: DRiseParams, target_class: int | None) -> Detections:
    keep = found.scores >= params.score_threshold
    if target_class is not None:
        keep &= found.labels == target_class
    index = keep.nonzero()[:, 0]
    order = found.scores[index].argsort(descending=True)[: params.max_detections]
    return found.select(index[order])


@register_detection(
    "d-rise",
    summary="Object detectors: random masks weighted by how well the masked image's detections match",
    paper="Petsiuk et al. 2021, arXiv:2006.03204",
    params=DRiseParams,
    style="minmax",  # every pixel keeps some match on average: show the contrast, not the offset
    units=lambda params: params.num_masks,  # the progress bar counts masks
)
def d_rise(detector: Detector, image: torch.Tensor, target_class: int | None, params: DRiseParams,
           progress: Progress | None = None) -> DetectionExplanation:
    """Explain the detections of one image [3,H,W] in [0,1]."""
    height, width = image.shape[-2:]
    with torch.inference_mode():
        targets = detections_to_explain(detector(image[None])[0], params, target_class)
        saliency = image.new_zeros((len(targets), height, width))
        if len(targets) == 0:
            if progress is not None:
                progress(params.num_masks)
            return DetectionExplanation(targets, saliency, note=f"found no detection with score >= "
                                        f"{params.score_threshold} to explain")
        masks = RiseMasks(params.num_masks, params.grid, params.p, (height, width), params.seed, image.device)

        def step(start: int, stop: int) -> None:
            chunk = masks(start, stop)
            found = detector(image[None] * chunk[:, None])
            weights = similarity(targets, found)  # [K, m]
            saliency.add_((weights @ chunk.flatten(1)).view_as(saliency))
            if progress is not None:
                progress(stop - start)

        run_in_chunks(params.num_masks, step, device=image.device, chunk=params.mask_batch, probe=8,
                      what="masks")
    return DetectionExplanation(targets, saliency / params.num_masks)
