"""Where and how a run computes: the device, the shard, the model's
preparation, autocast, per-method timing, and signals during the last flush."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .errors import SaliencyError

log = logging.getLogger("saliency")


def resolve_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    """--shard K/N, else torchrun's RANK / WORLD_SIZE, else no sharding."""
    if shard is not None:
        k, n = shard
        if not 0 <= k < n:
            raise SaliencyError(f"--shard K/N needs 0 <= K < N, got {k}/{n}")
        return shard if n > 1 else None
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is not None and world is not None and int(world) > 1:
        return int(rank), int(world)
    return None


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> bool:
    """Let memory freed after one batch serve the next (runtime.reuse_memory).

    glibc's malloc gives each large block (a batch's activations and
    gradients) its own fresh mmap and unmaps it when freed, so every batch
    faults all of its memory in again, page by page, zeroed by the kernel.
    This serves large blocks from the heap instead and keeps freed memory
    for reuse (no mmap, no trimming): on 2 CPU cores, Grad-CAM on
    EfficientNet-Lite0 ran 1.6x faster, the gradient 1.3x, and the kernel's
    share of the CPU time fell from 29% to 10%; peak memory rose 7-19%
    (BENCHMARKS.md).
    The memory a run held is kept by the process until it exits.

    Process-wide and for the rest of the process, so the CLI calls it, not
    the library. Linux with glibc only; returns whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
    except (OSError, AttributeError):
        return False
    applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    if applied:
        log.debug("freed memory is kept for the next batch (runtime.reuse_memory)")
    return applied


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        local = os.environ.get("LOCAL_RANK")  # under torchrun each process takes its own GPU
        return torch.device("cuda", int(local) % torch.cuda.device_count() if local else 0)
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise SaliencyError(f"--device: expected auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SaliencyError(f"--device {spec}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SaliencyError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise SaliencyError(f"--device: expected auto, cpu, cuda or cuda:N, got {spec!r}")
    return device


def prepare_model(model: Any, device: torch.device, channels_last: bool = False) -> Any:
    """The CLI owns this model: eval mode and frozen weights once, for good;
    channels-last weights when asked (benchmarks: faster or equal on every
    convnet measured)."""
    if not isinstance(model, nn.Module):
        return model
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def amp_context(device: torch.device, enabled: bool):
    """--amp: autocast to bfloat16 (float16 on GPUs without bfloat16). It
    changes maps slightly: see benchmarks/amp_fidelity.py and the README."""
    dtype = torch.bfloat16
    if enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


class StopWatch:
    """Seconds per method within one batch, without stalling the device.

    On CUDA, an event is recorded on the stream after each method and the
    events are read once, after the batch's maps were copied to the host (a
    copy that waits for the stream anyway): synchronising after every method
    would make the host wait for the device between methods. On the CPU the
    work is synchronous and the wall clock is exact.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.laps: list[tuple[str | None, Any]] = [(None, self._mark())]

    def _mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))  # the model's GPU, not the current one (cuda:1)
        return event

    def lap(self, name: str) -> None:
        """The work queued since the previous lap was method `name`'s."""
        self.laps.append((name, self._mark()))

    def seconds(self) -> dict[str, float]:
        """Each lap's seconds (call after the results reached the host)."""
        if self.cuda:
            self.laps[-1][1].synchronize()  # already done: the maps were copied
        times = {}
        for (_, start), (name, stop) in zip(self.laps, self.laps[1:]):
            times[name] = start.elapsed_time(stop) / 1000.0 if self.cuda else stop - start
        return times


@contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Record SIGINT / SIGTERM instead of raising, for the duration of the
    block (only possible in the main thread; elsewhere a no-op)."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {sig: signal.signal(sig, lambda number, frame: caught.append(number))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
