"""The model-randomisation sanity check (Adebayo et al. 2018, "Sanity Checks
for Saliency Maps", arXiv:1810.03292), cascading.

The model's parameterised layers (modules that own parameters) are taken in
the order they first run in a forward pass, and re-initialised from the
logits backwards, one more at each step, in a copy of the model (the user's
model is never touched). A layer is re-initialised by its own
`reset_parameters()` (what a fresh layer of its kind gets: Kaiming-uniform
convolutions and linear layers, unit normalisation layers with their
running statistics reset); a module without one gets every parameter drawn
from N(0, std of its old values). Layer l's draw is seeded by seed + l, so
the randomised models do not depend on the batch or on the checkpoints.

After selected steps (checkpoints) the map is recomputed for the same class
and compared with the stored map M by Spearman's rank correlation (ties get
their average rank), of M and of |M|. Step 0 (nothing randomised) checks that
the rerun reproduces M. A map that stays similar once the whole model is
random does not depend on what the model learnt: guided backprop and
Guided Grad-CAM are the known cases.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import SaliencyError


def parameterised_layers(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Modules owning parameters, logits first (the reverse of the order in
    which they first run on `example`); modules that never run are left out."""
    owners = {name: m for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, name=name: order.append(name) if name not in order
                                           else None) for name, m in owners.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return [(name, owners[name]) for name in reversed(order)]


def checkpoints(layers: int, steps: int) -> list[int]:
    """How many layers are random at each recorded step: 0, then
    round(j * L / K) for j = 1..K (K = min(steps, L)), halves up."""
    k = min(steps, layers)
    return [0] + sorted({(2 * j * layers + k) // (2 * k) for j in range(1, k + 1)})


def reinitialise(module: nn.Module, seed: int) -> None:
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda), torch.no_grad():  # the caller's random state is kept
        torch.manual_seed(seed)
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
            return
        for p in module.parameters(recurse=False):
            std = float(p.float().std()) if p.numel() > 1 else 1.0
            p.normal_(0.0, std if std > 0 else 1.0)


class Cascade:
    """A copy of the model, randomised step by step (see the module doc)."""

    def __init__(self, model: nn.Module, example: torch.Tensor, *, steps: int, seed: int):
        if not isinstance(model, nn.Module):
            raise SaliencyError("sanity: the model must be a torch.nn.Module to randomise its layers")
        try:
            self.model = copy.deepcopy(model)
        except Exception as exc:
            raise SaliencyError(f"sanity: cannot copy the model to randomise it: {type(exc).__name__}: {exc}") \
                from exc
        self.original = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.layers = parameterised_layers(self.model, example)
        if not self.layers:
            raise SaliencyError("sanity: the model has no layers with parameters to randomise")
        self.marks = checkpoints(len(self.layers), steps)
        self.seed = seed

    def steps(self) -> Iterator[int]:
        """From the original weights, randomise up to each checkpoint in turn,
        yielding the number of random layers (0 first)."""
        self.model.load_state_dict(self.original)
        done = 0
        for mark in self.marks:
            for index in range(done, mark):
                reinitialise(self.layers[index][1], self.seed + index)
            done = mark
            yield mark

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.layers]


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n (float64), tied values sharing their average rank."""
    ordered, order = values.flatten().sort(stable=True)
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks = torch.empty(values.numel(), dtype=torch.float64, device=values.device)
    ranks[order] = mean_rank[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman's rank correlation of two maps; None when one is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = float(ra.norm() * rb.norm())
    return float(ra @ rb) / norm if norm > 0 else None


def correlations(stored: torch.Tensor, recomputed: torch.Tensor) -> tuple[Any, Any]:
    """(Spearman of M, Spearman of |M|) between a stored and a recomputed map."""
    return spearman(stored, recomputed), spearman(stored.abs(), recomputed.abs())
