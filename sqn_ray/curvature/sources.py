"""Pair sources: where a method's curvature pairs (S, Y) come from.

The sampled and the classical methods differ only here:

* :class:`SampledPairs` forgets the past and samples m fresh pairs at every iteration (Algorithm 1),
  also after a rejected step;
* :class:`PathPairs` keeps the last m steps of the path, s_k = w_{k+1} − w_k, y_k = ∇F(w_{k+1}) − ∇F(w_k),
  updated only after accepted steps (memory ``None`` keeps all of them).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from ..objective import Objective
from .sampling import DirectionSampler, sample_pairs, sample_steps


@dataclass
class SampledPairs:
    memory: int
    radius: float
    sampling: str
    normalize: bool
    generator: torch.Generator | None
    directions: DirectionSampler | None = None
    sampled: bool = field(default=True, init=False)

    def pairs(self, objective: Objective, w: torch.Tensor, g: torch.Tensor):
        S = sample_steps(objective.dim, self.memory, self.radius, generator=self.generator,
                         directions=self.directions, normalize=self.normalize, dtype=w.dtype, device=w.device)
        return S, sample_pairs(objective, w, g, S, self.sampling)

    def observe(self, s: torch.Tensor, y: torch.Tensor) -> None:
        """Sampled methods forget the path."""

    def reset(self) -> None:
        """Nothing is stored between iterations."""


@dataclass
class PathPairs:
    memory: int | None
    _s: deque = field(default_factory=deque, init=False)
    _y: deque = field(default_factory=deque, init=False)
    sampled: bool = field(default=False, init=False)

    def pairs(self, objective: Objective, w: torch.Tensor, g: torch.Tensor):
        if not self._s:
            empty = w.new_zeros(w.numel(), 0)
            return empty, empty
        return torch.stack(tuple(self._s), dim=1), torch.stack(tuple(self._y), dim=1)

    def observe(self, s: torch.Tensor, y: torch.Tensor) -> None:
        self._s.append(s)
        self._y.append(y)
        if self.memory is not None and len(self._s) > self.memory:
            self._s.popleft()
            self._y.popleft()

    def reset(self) -> None:
        self._s.clear()
        self._y.clear()
