"""Chunking of long jobs and the out-of-memory back-off."""

from __future__ import annotations

import logging

import pytest
import torch

import saliency_cli as sal
from saliency_cli.memory import CPU_CHUNK, chosen, run_in_chunks

from .helpers import TinyCNN, seeded


def test_cpu_chunks_cover_the_range_in_order():
    seen = []
    run_in_chunks(20, lambda a, b: seen.append((a, b)), device=torch.device("cpu"))
    assert seen == [(i, min(20, i + CPU_CHUNK)) for i in range(0, 20, CPU_CHUNK)]


def test_out_of_memory_halves_the_chunk_and_retries_once_logged(caplog):
    done = []

    def step(start, stop):
        if stop - start > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        done.append((start, stop))

    with caplog.at_level(logging.WARNING, logger="saliency"):
        run_in_chunks(10, step, device=torch.device("cuda"), chunk=16, what="copies")
    assert done == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert caplog.text.count("CUDA out of memory") == 1
    assert "retrying with 8 copies per call" in caplog.text
    assert chosen["copies"] == 2  # the size the job ended at, after halving


def test_the_size_each_job_ran_at_is_kept():
    run_in_chunks(20, lambda a, b: None, device=torch.device("cpu"), what="test items")
    assert chosen["test items"] == CPU_CHUNK
    run_in_chunks(20, lambda a, b: None, device=torch.device("cpu"), chunk=5, what="test items")
    assert chosen["test items"] == 5
    model = seeded(TinyCNN(), 0).eval()
    sal.attribute(model, torch.randn(2, 3, 10, 10), "smoothgrad", n=3, noise_batch=4)
    assert chosen["noisy copies"] == 4


def test_a_chunk_of_one_that_does_not_fit_is_an_error():
    def step(start, stop):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_in_chunks(3, step, device=torch.device("cuda"), chunk=2)


class SmallMemory(TinyCNN):
    """Runs out of 'memory' above four images per call."""

    def forward(self, x):
        if x.shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return super().forward(x)


def test_smoothgrad_retried_chunks_are_counted_once():
    model = seeded(SmallMemory(), 0).eval()
    x = torch.randn(2, 3, 10, 10)
    retried = sal.attribute(model, x, "smoothgrad", n=7, noise_batch=14, reduce="none")
    direct = sal.attribute(model, x, "smoothgrad", n=7, noise_batch=4, reduce="none")
    torch.testing.assert_close(retried, direct, rtol=1e-5, atol=1e-7)


def test_d_rise_retried_chunks_are_counted_once():
    from .test_d_rise import RegionDetector

    class SmallDetector(RegionDetector):
        def forward(self, images):
            if images.shape[0] > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return super().forward(images)

    image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0))
    retried = sal.explain_detections(SmallDetector(), image, num_masks=20, mask_batch=20, score_threshold=0.0)
    direct = sal.explain_detections(SmallDetector(), image, num_masks=20, mask_batch=3, score_threshold=0.0)
    torch.testing.assert_close(retried[0].maps, direct[0].maps, rtol=1e-5, atol=1e-7)
