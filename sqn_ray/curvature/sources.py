"""Pair sources: where a method's curvature pairs (S, Y) come from.

The sampled and the classical methods differ only here:

* :class:`SampledPairs` forgets the past and samples m fresh pairs at every iteration (Algorithm 1),
  also after a rejected step;
* :class:`PathPairs` keeps the last m steps of the path, s_k = w_{k+1} − w_k, y_k = ∇F(w_{k+1}) − ∇F(w_k),
  updated only after accepted steps (memory ``None`` keeps all of them).

A source holds no iteration state itself: what it remembers is a *memo* (a dict of tensors and numbers,
see :class:`PairSource`) that the method keeps in its state value and hands back at every call. The one
mutable object is the sampled source's explicit ``torch.Generator``; a method's saved state records its
state (:meth:`sqn_ray.optim.methods.StepMethod.export_state`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from ..objective import Objective
from .sampling import DirectionSampler, sample_pairs, sample_steps


@runtime_checkable
class PairSource(Protocol):
    """Where the pairs come from. ``sampled`` says whether they are drawn afresh (True) or remembered."""

    sampled: bool

    def init_memo(self) -> dict:
        """The memo of a fresh run (and after a restart)."""
        ...

    def pairs(self, objective: Objective, w: torch.Tensor, g: torch.Tensor,
              memo: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, Y), each of shape (d, k), for the iterate w with gradient g."""
        ...

    def observe(self, memo: dict, s: torch.Tensor, y: torch.Tensor) -> dict:
        """The memo after an accepted step s with gradient change y (a new value; the old one is unchanged)."""
        ...


@dataclass
class SampledPairs:
    memory: int
    radius: float
    sampling: str
    normalize: bool
    generator: torch.Generator | None
    directions: DirectionSampler | None = None
    sampled: bool = field(default=True, init=False)

    def init_memo(self) -> dict:
        return {}

    def pairs(self, objective: Objective, w: torch.Tensor, g: torch.Tensor, memo: dict | None = None):
        S = sample_steps(objective.dim, self.memory, self.radius, generator=self.generator,
                         directions=self.directions, normalize=self.normalize, dtype=w.dtype, device=w.device)
        return S, sample_pairs(objective, w, g, S, self.sampling)

    def observe(self, memo: dict, s: torch.Tensor, y: torch.Tensor) -> dict:
        """Sampled methods forget the path."""
        return memo


@dataclass
class PathPairs:
    """The last ``memory`` accepted steps, oldest first, in its memo ``{"s": (s, ...), "y": (y, ...)}``."""

    memory: int | None
    sampled: bool = field(default=False, init=False)

    def init_memo(self) -> dict:
        return {"s": (), "y": ()}

    def pairs(self, objective: Objective, w: torch.Tensor, g: torch.Tensor, memo: dict | None = None):
        memo = memo if memo is not None else self.init_memo()
        s, y = memo["s"], memo["y"]
        if not s:
            empty = w.new_zeros(w.numel(), 0)
            return empty, empty
        return torch.stack(tuple(s), dim=1), torch.stack(tuple(y), dim=1)

    def observe(self, memo: dict, s: torch.Tensor, y: torch.Tensor) -> dict:
        S, Y = (*memo["s"], s), (*memo["y"], y)
        if self.memory is not None and len(S) > self.memory:
            S, Y = S[len(S) - self.memory:], Y[len(Y) - self.memory:]
        return {"s": S, "y": Y}
