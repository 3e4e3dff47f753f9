"""Splitting a long job (SmoothGrad's noisy copies, D-RISE's masks) into model
calls that fit the device.

Rule for the automatic size:
- CUDA: the first call runs `probe` items and measures its peak memory; the
  following calls take as many items as fit in 70% of the memory then free.
- CPU: a fixed number of items per call (`CPU_CHUNK` = 8). Measured on 2
  cores with `python benchmarks/chunk_size.py` (ms per image, forward +
  backward to the input, 224x224; BENCHMARKS.md): EfficientNet-Lite0 40.3
  at 4 images per call, 48.4 at 8, 57.0 at 16, 77.9 at 32; ResNet-50 140.6
  at 4, 126.1 at 8, 141.6 at 16, 193.4 at 32. Past a few images per call the
  activations fall out of the CPU caches, so bigger calls only cost time and
  memory.
- Any CUDA out-of-memory error halves the call size and retries the same
  items (logged once), down to a single item.

`chosen` keeps the size each kind of job last ran at (`--debug` logs it when
it changes; benchmarks/chunk_size.py --auto compares it with fixed sizes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger("saliency")

CPU_CHUNK = 8
_CUDA_BUDGET = 0.7

chosen: dict[str, int] = {}  # `what` -> items per call at the end of its last run


def available(device: torch.device) -> int:
    """Bytes a chunk may take on a CUDA device: the driver's free memory plus
    what PyTorch's allocator holds in its cache unused (mem_get_info counts
    that as taken, so sizes would shrink after any large call before)."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def run_in_chunks(
    total: int,
    step: Callable[[int, int], None],
    *,
    device: torch.device,
    chunk: int | None = None,
    probe: int = 8,
    what: str = "items",
) -> None:
    """Call `step(start, stop)` over [0, total) in consecutive ranges.

    `step` must only commit its result once its model call succeeded, so that
    a range can be retried after an out-of-memory error.
    """
    cuda = device.type == "cuda"
    size = chunk or (min(probe, total) if cuda else CPU_CHUNK)
    measure = cuda and chunk is None
    warned = False
    start = 0
    while start < total:
        stop = min(total, start + size)
        try:
            if measure:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            step(start, stop)
        except torch.cuda.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            measure = False
            torch.cuda.empty_cache()
            if not warned:
                log.warning("CUDA out of memory: retrying with %d %s per call", size, what)
                warned = True
            continue
        if measure:
            peak = torch.cuda.max_memory_allocated(device) - before
            free = available(device)
            per_item = max(1, peak // (stop - start))
            size = max(1, int(free * _CUDA_BUDGET // per_item))
            measure = False
            if chosen.get(what) != size:
                log.debug("%d %s per call: %.1f MiB each, %.0f MiB free", size, what, per_item / 2**20, free / 2**20)
        start = stop
    chosen[what] = size
