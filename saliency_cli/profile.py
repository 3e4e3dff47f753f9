"""Where a run's time went: seconds per phase, from every thread, and the
table `saliency explain --profile` prints.

Phases: decode (reading and decoding photos, in worker processes or in the
main process), transfer (inputs to the device), attribution (the methods,
the maps back to the host), render (overlays), encode (PNG), write (files,
renames, manifest), idle (the main thread waiting for decoded images or for
the writer). Decoding, rendering, encoding and writing run in other
processes or threads, several at once (beside the model on a GPU, between
its batches on the CPU: loading.ThreadedLoader), so the shares can sum past
100% of the wall time. On a GPU the host only queues work: device time
shows up where the host waits for it (the maps' copy back, in attribution).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

PHASES = ("decode", "transfer", "attribution", "render", "encode", "write", "idle")


class Profile:
    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._lock = threading.Lock()

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:
            self.seconds[phase] += seconds

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)

    def table(self, wall: float, notes: dict[str, str] | None = None) -> str:
        """The phases as seconds and share of `wall`, one line each."""
        notes = notes or {}
        lines = [f"where the time went ({wall:.1f} s wall; decoding, rendering and writing run on several "
                 "threads or processes, so shares can sum past 100%):"]
        for phase in PHASES:
            seconds = self.seconds[phase]
            share = 100 * seconds / wall if wall > 0 else 0.0
            note = f"  {notes[phase]}" if phase in notes else ""
            lines.append(f"  {phase:12s}{seconds:9.2f} s {share:5.0f}%{note}")
        return "\n".join(lines)
