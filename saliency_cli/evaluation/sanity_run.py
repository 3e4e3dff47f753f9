"""The sanity check for a batch of classifier maps: recompute each method's
maps on the randomised copies of the model (sanity.Cascade), for the same
classes, and correlate them with the stored maps."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..methods import registry
from .metrics import Options
from .sanity import Cascade, correlations

if TYPE_CHECKING:
    from .classifier import Maps
    from .loading import Loaded


def run_sanity(loaded: Loaded, maps: Maps, options: Options) -> None:
    """Fill `sanity` (per randomisation step) and the `sanity` metric (the
    Spearman correlation of |M| once every layer is random) of the maps
    that need it."""
    index = maps.which(("sanity",))
    cascade = _cascade(loaded, maps.inputs[:1], options)
    groups: dict[tuple[str, str], list[int]] = {}
    for i in index:
        job = maps.outcomes[i].job
        groups.setdefault((job.method, job.source.digest), []).append(i)
    signed: dict[int, list] = {i: [] for i in index}
    absolute: dict[int, list] = {i: [] for i in index}
    x = maps.inputs
    if loaded.cfg.runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in cascade.steps():
        for (method, _digest), rows in groups.items():
            spec, params = registry.get(method), maps.outcomes[rows[0]].job.source.params
            chosen = torch.tensor(rows, device=x.device)
            new = spec.run(cascade.model, x[maps.image_of[chosen]], maps.targets[chosen], params).maps.detach()
            if new.dim() == 4:  # reduce: none keeps channels; the stored map was read as max-abs
                new = new.abs().amax(dim=1)
            for row, i in enumerate(rows):
                s, a = correlations(maps.values[i], new[row].float())
                signed[i].append(s)
                absolute[i].append(a)
    for i in index:
        result = maps.outcomes[i].maps[0]
        result.sanity = {"random_layers": list(cascade.marks), "spearman": signed[i], "spearman_abs": absolute[i]}
        if absolute[i][-1] is None:
            result.apart["sanity"] = "the map of the randomised model is constant"
        else:
            result.metrics["sanity"] = absolute[i][-1]


def _cascade(loaded: Loaded, example: torch.Tensor, options: Options) -> Cascade:
    """One randomisable copy per model, made at its first use."""
    if loaded.cascade is None:
        if loaded.cfg.runtime.channels_last:
            example = example.contiguous(memory_format=torch.channels_last)
        loaded.cascade = Cascade(loaded.model, example, steps=options.sanity_steps, seed=options.seed)
    return loaded.cascade
