"""D-RISE: masks, similarity, the detector protocol and torchvision adapters."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import saliency_cli as sal
from saliency_cli import Detections
from saliency_cli.detection import box_iou
from saliency_cli.detectors import as_detector
from saliency_cli.errors import SaliencyError
from saliency_cli.methods.d_rise import RiseMasks, similarity

from .helpers import assert_same_state, model_state

REGION = (slice(20, 40), slice(30, 50))  # rows, cols the test detector looks at


class RegionDetector(nn.Module):
    """Deterministic: one fixed box over REGION whose score is the mean
    brightness inside REGION; nothing else in the image matters."""

    def forward(self, images):
        out = []
        for image in images:
            score = image[:, REGION[0], REGION[1]].mean().clamp(0, 1)
            out.append(Detections(torch.tensor([[30.0, 20.0, 50.0, 40.0]]), score[None],
                                  torch.tensor([[0.9, 0.1]]), torch.tensor([0])))
        return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_saliency_peaks_in_the_region_the_detector_uses(seed):
    image = torch.ones(3, 64, 80)
    (explained,) = sal.explain_detections(RegionDetector(), image, num_masks=1000, grid=8, seed=seed,
                                          score_threshold=0.1)
    saliency = explained.maps[0]
    row, col = divmod(int(saliency.argmax()), saliency.shape[1])
    assert REGION[0].start <= row < REGION[0].stop and REGION[1].start <= col < REGION[1].stop
    inside = saliency[REGION].mean()
    outside = torch.cat([saliency[:10].flatten(), saliency[:, 65:].flatten()]).mean()
    # far from the region a mask is independent of the score: E[w] E[M] = 0.5 * 0.5
    assert abs(float(outside) - 0.25) < 0.01
    assert inside > outside + 0.025


class TwoRegionDetector(nn.Module):
    """Two fixed boxes over disjoint regions, of classes 0 and 1, each scored
    by the mean brightness inside it."""

    boxes = torch.tensor([[4.0, 8.0, 20.0, 24.0], [40.0, 8.0, 56.0, 24.0]])  # x0, y0, x1, y1

    def forward(self, images):
        out = []
        for image in images:
            scores = torch.stack([image[:, 8:24, 4:20].mean(), image[:, 8:24, 40:56].mean()])
            out.append(Detections(self.boxes, scores, torch.eye(2), torch.arange(2)))
        return out


def test_each_detections_map_is_weighted_by_its_own_match():
    """With two detections, map k is sum_i s_k(M_i * I) M_i / N: the masks
    weighted by detection k's own score in each masked photo (IoU and cosine
    are 1 for the same box and class, 0 across), and it peaks in box k."""
    image = torch.full((3, 32, 60), 0.8)
    image[:, 8:24, 4:20] = 0.9  # the left box scores higher: explained first
    (explained,) = sal.explain_detections(TwoRegionDetector(), image, num_masks=300, grid=6, seed=5,
                                          score_threshold=0.0)
    assert explained.detections.labels.tolist() == [0, 1]
    masks = RiseMasks(300, grid=6, p=0.5, size=(32, 60), seed=5, device=torch.device("cpu"))(0, 300)
    for k, (x0, y0, x1, y1) in enumerate(TwoRegionDetector.boxes.int().tolist()):
        own = (image[None] * masks[:, None])[:, :, y0:y1, x0:x1].mean(dim=(1, 2, 3))  # s_k per mask
        torch.testing.assert_close(explained.maps[k], (own[:, None, None] * masks).sum(0) / 300)
        row, col = divmod(int(explained.maps[k].argmax()), 60)
        assert y0 <= row < y1 and x0 <= col < x1, (k, row, col)


def test_result_does_not_depend_on_mask_batch():
    image = torch.rand(3, 48, 40, generator=torch.Generator().manual_seed(0))
    maps = [sal.explain_detections(RegionDetector(), image, num_masks=40, mask_batch=mb, score_threshold=0.0)[0].maps
            for mb in (1, 7, 40, None)]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-5, atol=1e-6)


def test_masks_follow_the_rise_recipe():
    masks = RiseMasks(400, grid=4, p=0.5, size=(30, 50), seed=3, device=torch.device("cpu"))
    all_masks = masks(0, 400)
    assert all_masks.shape == (400, 30, 50)
    assert all_masks.min() >= 0 and all_masks.max() <= 1
    assert abs(float(all_masks.mean()) - 0.5) < 0.03
    torch.testing.assert_close(masks(3, 9), all_masks[3:9])  # built by index, any chunking
    # smooth: bilinear upsampling of a coarse grid, not per-pixel noise
    assert (all_masks[:, :, 1:] - all_masks[:, :, :-1]).abs().max() < 0.2
    shifted = RiseMasks(1, grid=4, p=0.5, size=(30, 50), seed=3, device=torch.device("cpu"))
    assert torch.equal(shifted.grids, masks.grids[:1])


def test_similarity_is_iou_times_cosine_times_score_maxed_per_masked_image():
    target = Detections(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0.9]),
                        torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    half = Detections(torch.tensor([[0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 10.0]]), torch.tensor([0.8, 0.5]),
                      torch.tensor([[0.6, 0.8], [0.0, 1.0]]), torch.tensor([0, 1]))
    nothing = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    weights = similarity(target, [half, nothing, target])
    # first masked image: max(IoU 0.5 * cos 0.6 * 0.8, IoU 1 * cos 0 * 0.5) = 0.24
    torch.testing.assert_close(weights, torch.tensor([[0.24, 0.0, 0.9]]))


def test_box_iou():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 2.0, 2.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 0.0, 1.0]]))


def test_target_selection_threshold_limit_and_class():
    class Many(nn.Module):
        def forward(self, images):
            scores = torch.tensor([0.3, 0.9, 0.6, 0.95])
            labels = torch.tensor([1, 2, 1, 1])
            boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]]).repeat(4, 1) + torch.arange(4.0)[:, None]
            return [Detections(boxes, scores, torch.nn.functional.one_hot(labels, 3).float(), labels)
                    for _ in images]

    image = torch.ones(3, 16, 16)
    (e,) = sal.explain_detections(Many(), image, num_masks=4, score_threshold=0.5, max_detections=2)
    assert e.detections.scores.tolist() == pytest.approx([0.95, 0.9]) and e.maps.shape == (2, 16, 16)
    (e,) = sal.explain_detections(Many(), image, num_masks=4, score_threshold=0.5, target_class=1)
    assert e.detections.labels.tolist() == [1, 1] and e.detections.scores.tolist() == pytest.approx([0.95, 0.6])
    (e,) = sal.explain_detections(Many(), image, num_masks=4, score_threshold=0.99)
    assert len(e.detections) == 0 and e.maps.shape == (0, 16, 16)


@pytest.mark.parametrize(("output", "message"), [
    (lambda: {"boxes": torch.zeros(1, 4)}, "must return a list with one Detections per image; got dict"),
    (lambda: torch.zeros(1, 1000), "must return a list with one Detections per image; got a tensor of shape "
                                   "(1, 1000) (a classifier's scores? task: detection needs a detector)"),
    (lambda: [], "returned 0 results for 1 images"),
    (lambda: [{"boxes": torch.zeros(1, 4), "scores": torch.zeros(1)}], "missing 'probs', 'labels'"),
    (lambda: [{"boxes": torch.zeros(4), "scores": torch.zeros(1), "probs": torch.zeros(1, 2),
               "labels": torch.zeros(1)}], "'boxes' must have shape [K, 4]"),
    (lambda: [{"boxes": torch.zeros(2, 4), "scores": torch.zeros(1), "probs": torch.zeros(2, 2),
               "labels": torch.zeros(2)}], "'scores' must have shape [K]"),
    (lambda: [{"boxes": torch.zeros(2, 4), "scores": torch.zeros(2), "probs": torch.zeros(2),
               "labels": torch.zeros(2)}], "'probs' must have shape [K, C]"),
    (lambda: ["not detections"], "expected Detections or a dict"),
])
def test_protocol_errors_are_clear(output, message):
    with pytest.raises(SaliencyError, match=__import__("re").escape(message)):
        sal.explain_detections(lambda images: output(), torch.ones(3, 8, 8), num_masks=2)


def test_dict_outputs_are_accepted_and_images_may_differ_in_size():
    def detector(images):
        return [{"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]), "scores": im.mean()[None],
                 "probs": torch.ones(1, 1), "labels": torch.zeros(1, dtype=torch.long)} for im in images]

    result = sal.explain_detections(detector, [torch.ones(3, 10, 12), torch.ones(3, 20, 8)], num_masks=8,
                                    score_threshold=0.0)
    assert [tuple(r.maps.shape) for r in result] == [(1, 10, 12), (1, 20, 8)]


def test_progress_counts_masks():
    seen = []
    method = __import__("saliency_cli.methods.registry", fromlist=["get"]).get("d-rise")
    params = method.make_params({"num_masks": 20, "mask_batch": 6, "score_threshold": 0.0})
    method.compute(as_detector(RegionDetector()), torch.ones(3, 64, 64), None, params, seen.append)
    assert seen == [6, 6, 6, 2]


def torchvision_detector(name, **kwargs):
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, weights_backbone=None, **kwargs).eval()


def test_two_stage_detections_carry_their_softmax_vector():
    model = torchvision_detector("fasterrcnn_mobilenet_v3_large_320_fpn", box_score_thresh=0.0)
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(1))
    (found,) = as_detector(model)(image[None])
    assert len(found) > 0 and found.probs.shape == (len(found), 91)
    torch.testing.assert_close(found.probs.sum(dim=1), torch.ones(len(found)))
    torch.testing.assert_close(found.probs[torch.arange(len(found)), found.labels], found.scores)
    # the model's own output is unchanged by the adapter
    with torch.no_grad():
        plain = model([image])[0]
    torch.testing.assert_close(found.boxes, plain["boxes"])


def test_one_stage_detections_use_one_hot_times_score():
    model = torchvision_detector("retinanet_resnet50_fpn", score_thresh=0.0, min_size=128, max_size=128,
                                 detections_per_img=5)
    (found,) = as_detector(model)(torch.rand(3, 96, 128)[None])
    assert found.probs.shape == (5, 91)
    torch.testing.assert_close(found.probs.sum(dim=1), found.scores)
    torch.testing.assert_close(found.probs[torch.arange(5), found.labels], found.scores)  # one-hot: all of it
    assert ((found.probs > 0).sum(dim=1) <= 1).all()  # at the label (a zero score leaves none)


def test_detector_left_as_given_even_when_it_raises():
    model = torchvision_detector("fasterrcnn_mobilenet_v3_large_320_fpn", box_score_thresh=0.0)
    model.train()
    before = model_state(model)
    sal.explain_detections(model, torch.rand(1, 3, 64, 64), num_masks=2, score_threshold=0.0, max_detections=1)
    assert_same_state(before, model_state(model))

    def explode(*_):
        raise RuntimeError("boom")

    handle = model.roi_heads.box_predictor.register_forward_hook(explode)
    before = model_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        sal.explain_detections(model, torch.rand(1, 3, 64, 64), num_masks=2, score_threshold=0.0)
    assert_same_state(before, model_state(model))
    handle.remove()


def test_classification_and_detection_apis_refuse_each_other():
    with pytest.raises(SaliencyError, match="explains object detectors"):
        sal.attribute(nn.Linear(2, 2), torch.zeros(1, 3, 2, 2), "d-rise")
    with pytest.raises(SaliencyError, match="explains classifiers"):
        sal.explain_detections(RegionDetector(), torch.zeros(1, 3, 2, 2), "grad-cam")


@pytest.mark.parametrize(("name", "kwargs", "two_stage"), [
    ("maskrcnn_resnet50_fpn", {"box_score_thresh": 0.0, "min_size": 128, "max_size": 128}, True),
    ("keypointrcnn_resnet50_fpn", {"box_score_thresh": 0.0, "min_size": 128, "max_size": 128}, True),
    ("fcos_resnet50_fpn", {"score_thresh": 0.0, "min_size": 128, "max_size": 128}, False),
    ("ssdlite320_mobilenet_v3_large", {"score_thresh": 0.0}, False),
    ("ssd300_vgg16", {"score_thresh": 0.0}, False),
])
def test_every_torchvision_detector_family_is_adapted(name, kwargs, two_stage):
    model = torchvision_detector(name, **kwargs)
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(2))
    (explained,) = sal.explain_detections(model, image, num_masks=2, score_threshold=0.0, max_detections=2)
    found = explained.detections
    assert len(found) == 2 and explained.maps.shape == (2, 96, 128)
    assert torch.isfinite(explained.maps).all()
    if two_stage:  # the proposal's full softmax: sums to one, its label's entry is the score
        torch.testing.assert_close(found.probs.sum(dim=1), torch.ones(2))
    else:
        torch.testing.assert_close(found.probs.sum(dim=1), found.scores)
    torch.testing.assert_close(found.probs[torch.arange(2), found.labels], found.scores)
