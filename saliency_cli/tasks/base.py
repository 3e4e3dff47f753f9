"""What a task is: the one protocol between the run loop and a kind of model.

The loop (pipeline.py) discovers images, plans what each still needs, loads
the model, streams decoded batches and closes; it names no task and no
method parameter. A task answers everything in between:

    planning   expected_files(key, method)   files known before a method runs
               units(methods)                 progress units one image costs
    loading    prepare(model)                 eval, frozen, on the device
               check(model, methods)          the methods that can explain it
               num_classes(model)             for `labels: auto`
               dataset(items, keep_original)  how a photo becomes an input
               batch_size                     images per batch
    streaming  explain(batch, run)            compute the maps, submit one
                                              Record (with the task's own
                                              fields) and its file jobs per image

A task is created per run, with the run's config and device; `Run` holds
the rest of what `explain` works with.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from tqdm import tqdm

from .. import device_decode
from ..data import Batch, ImageDataset
from ..discovery import InputItem
from ..errors import NotApplicable, SaliencyError
from ..figures import Figures
from ..methods.registry import Method
from ..outputs import npy_path, png_path
from ..plan import Work
from ..profile import Profile
from ..records import Files, Record
from ..render import shown_size
from ..runtime import prepare_model
from ..writer import Writer

log = logging.getLogger("saliency")


@dataclass(frozen=True)
class Bound:
    """A method with its parameters for this run (validated once, by the config)."""

    method: Method
    params: Any
    optional: bool = False  # brought by `-m all`: skipped, not an error, where it cannot explain the model

    @property
    def name(self) -> str:
        return self.method.name

    def units(self) -> int:
        return self.method.units(self.params)

    def layer(self) -> str | None:
        return self.method.layer(self.params)


class Progress:
    """The progress bar (shown only when asked) and its count of units."""

    def __init__(self, total: int, unit: str, show: bool):
        self.count = 0
        self.bar = tqdm(total=total, unit=unit, unit_scale=unit != "img", disable=not show,
                        file=sys.stderr, dynamic_ncols=True)

    def __call__(self, units: int) -> None:
        self.count += units
        self.bar.update(units)

    def reach(self, count: int) -> None:
        """Advance to `count` (units of images that failed or were cut short)."""
        if count > self.count:
            self(count - self.count)

    def close(self) -> None:
        self.bar.close()


@dataclass
class Run:
    """What a task's `explain` works with during one run."""

    model: Any  # as the task prepared it
    methods: dict[str, Bound]
    labels: list[str] | None
    target: int | None  # a class index, or None: each image's top-1
    work: list[Work]  # indexed by a decoded item's "index"
    writer: Writer
    figures: Figures
    progress: Progress
    profile: Profile


class Task:
    name: ClassVar[str]
    unit: ClassVar[str] = "img"  # what the progress bar counts
    default_run: ClassVar[tuple[str, ...]] = ()  # methods when neither -m nor the config's `run` names any

    def __init__(self, cfg: Any, device: torch.device):
        self.cfg, self.device = cfg, device

    # -- planning: before the model loads

    def expected_files(self, key: str, method: str) -> Files:
        """The files a method writes for one image, known before it runs."""
        out = self.cfg.output
        return Files(npy=npy_path(key, method) if out.npy else None, pngs=[png_path(key, method)] if out.png else [])

    def units(self, methods: Sequence[Bound]) -> int:
        """Progress units of one image that needs `methods`."""
        return 1

    # -- loading

    def prepare(self, model: Any) -> Any:
        return prepare_model(model, self.device)

    def check(self, model: Any, methods: dict[str, Bound]) -> dict[str, Bound]:
        """The methods that can explain `model`, said before any image is read
        (each method's `check_applies`, on one blank image at the input size):
        one that cannot is an error when named and skipped, with one line
        saying why, when `-m all` brought it. A misspelt layer is an error."""
        image = torch.zeros(1, 3, *self.cfg.preprocess.size, device=self.device)
        usable = {}
        for name, bound in methods.items():
            try:
                bound.method.check_applies(model, image, bound.params)
            except NotApplicable as exc:
                if not bound.optional:
                    raise
                log.info("skipping %s: %s", name, str(exc).removeprefix(f"{name}: "))
                continue
            except SaliencyError:
                raise
            except Exception as exc:  # the model fails on the probe image: every image would fail alike
                raise SaliencyError(f"the model cannot run on a {'x'.join(map(str, image.shape))} input "
                                    f"(preprocess.size): {type(exc).__name__}: {exc}") from exc
            usable[name] = bound
        if not usable:
            raise SaliencyError(f"none of {', '.join(methods)} applies to this model")
        return usable

    def num_classes(self, model: Any) -> int | None:
        return None

    def dataset(self, items: Sequence[InputItem], keep_original: bool) -> ImageDataset:
        return ImageDataset(items, self.cfg.preprocess, keep_original=keep_original,
                            max_side=self.cfg.output.png_max_side, device=self.decode_device)

    @property
    def decode_device(self) -> torch.device | None:
        """Where JPEGs are decoded when not in the workers (runtime.decode)."""
        decode = self.cfg.runtime.decode
        if (self.cfg.preprocess.interpolation or "bilinear") not in device_decode.INTERPOLATIONS:
            return None
        return self.device if decode == "device" or (decode == "auto" and self.device.type == "cuda") else None

    @property
    def batch_size(self) -> int:
        return self.cfg.runtime.batch_size

    # -- streaming

    def explain(self, batch: Batch, run: Run) -> None:
        raise NotImplementedError

    def explain_safely(self, batch: Batch, run: Run) -> None:
        """Record the batch's undecodable images, explain the others; an
        unexpected failure is recorded against its images (one odd image
        must not end a long run), except with --debug. The progress bar
        ends the batch at its full count whatever happened."""
        due = run.progress.count + sum(self.units([run.methods[n] for n in run.work[it["index"]].methods])
                                       for it in [*batch.ok, *batch.failed])
        for it in batch.failed:
            self._fail(run, it, it["error"])
        try:
            if batch.ok:
                self.explain(batch, run)
        except (SaliencyError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if log.isEnabledFor(logging.DEBUG):
                raise
            for it in batch.ok:
                self._fail(run, it, f"explaining failed: {type(exc).__name__}: {exc}")
        run.progress.reach(due)

    @staticmethod
    def _fail(run: Run, it: dict, error: str) -> None:
        item = run.work[it["index"]].item
        run.writer.submit(Record(input=item.path, key=item.key, status="error", error=error))

    def new_record(self, work: Work, it: dict) -> Record:
        """An image's record before its maps: outputs and settings kept from earlier runs."""
        size = list(it["size"])
        shown = list(shown_size(it["size"], self.cfg.output.png_max_side))
        return Record(input=work.item.path, key=work.item.key, size=size,
                      png_size=shown if shown != size and self.cfg.output.png else None,
                      outputs=dict(work.previous), settings=dict(work.settings),
                      seconds={"decode": round(it["decode_seconds"], 5)})

    @staticmethod
    def photo_bytes(it: dict) -> int:
        """Memory of the decoded photo an item carries for its overlays."""
        return 0 if it["original"] is None else it["original"].numel()

