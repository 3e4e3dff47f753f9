"""Which loader brings the batches: DataLoader worker processes, threads of
the main process (ThreadedLoader), or the main thread alone; measured
choices for the CPU and the GPU (BENCHMARKS.md, benchmarks/workers.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import torch

from .data import Batch, ImageDataset, collate


def default_workers(device_type: str) -> int:
    """Decoding processes when `runtime.workers` is null.

    With a GPU the CPU is free to decode while the model runs: up to 4
    workers. On the CPU, torch's threads already take the cores and workers
    would compete with them (on 2 cores, 2 workers made `saliency explain`
    slower than decoding in the main process: `python benchmarks/workers.py`,
    table in BENCHMARKS.md), so only cores that torch leaves idle get a worker;
    the main process then decodes each batch on threads (ThreadedLoader)."""
    cores = os.cpu_count() or 1
    if device_type == "cuda":
        return min(4, cores)
    return min(4, max(0, cores - torch.get_num_threads()))


def decode_threads(images: int, *, batch_size: int, workers: int | None, device_type: str) -> int:
    """Threads of the main process that decode each batch (ThreadedLoader):
    one per core, at most 8 and at most a batch, where the model is on the
    CPU and no worker process decodes; 0 where a DataLoader does (worker
    processes, a GPU, or one core)."""
    if workers is None:
        workers = default_workers(device_type)
    threads = min(8, batch_size, images, os.cpu_count() or 1)
    return threads if min(workers, images) == 0 and device_type == "cpu" and threads > 1 else 0


def make_loader(dataset: ImageDataset, *, batch_size: int, workers: int | None, device_type: str,
                pool: Executor | None = None) -> torch.utils.data.DataLoader | ThreadedLoader:
    """The batches of `dataset`. Where they decode on threads (decode_threads),
    on those of `pool` if given (the writer's: see ThreadedLoader)."""
    threads = decode_threads(len(dataset), batch_size=batch_size, workers=workers, device_type=device_type)
    if threads:
        return ThreadedLoader(dataset, batch_size, threads, pool)
    workers = min(default_workers(device_type) if workers is None else workers, len(dataset))
    pin_memory = device_type == "cuda"
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        # each worker keeps 2 batches ready (PyTorch's default): 8 batches ahead of the device with
        # 4 workers, all in shared memory, which a container often limits to 64 MB
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )


class ThreadedLoader:
    """The batches of `dataset`, in order, each decoded by a pool of threads
    of this process while the main thread waits for it (Pillow releases the
    GIL while it decodes and resizes).

    For a model on the CPU, where decoding overlapping the model only slows
    torch's threads down (worker processes, or a thread decoding ahead: both
    measured slower on 2 cores), but a batch's images need not decode one
    after another on one core: on 2 cores `saliency explain -m grad-cam`
    ran 13% faster with PNGs, 22% with `.npy` only (BENCHMARKS.md).

    The run passes the writer's pool: its threads then render and write the
    batch just explained, then decode the next one (the pool takes jobs in
    order), all while the model waits, instead of a writer thread competing
    with the model's threads for the cores (BENCHMARKS.md). A pool passed in
    stays open; its owner shuts it down."""

    num_workers = 0  # no worker processes: the main process decodes

    def __init__(self, dataset: ImageDataset, batch_size: int, threads: int, pool: Executor | None = None):
        self.dataset, self.batch_size, self.threads = dataset, batch_size, threads
        self.pool = pool

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        pool = self.pool or ThreadPoolExecutor(self.threads, thread_name_prefix="saliency-decode")
        futures: list[Future] = []
        try:
            for start in range(0, len(self.dataset), self.batch_size):
                indices = range(start, min(len(self.dataset), start + self.batch_size))
                futures = [pool.submit(self.dataset.__getitem__, i) for i in indices]
                yield collate([future.result() for future in futures])
        finally:  # also when the run stops early (an interruption, --fail-fast): no decoding is left queued
            for future in futures:
                future.cancel()
            if self.pool is None:  # and no thread of its own is left behind
                pool.shutdown(wait=True, cancel_futures=True)
