"""Sub-sampled objectives: F_B, the mean over a mini-batch B that moves on at every accepted iterate.

Used by the MNIST ``-b<N>`` problems and by :class:`~sqn_ray.problems.ModuleProblem` with a ``batch_size``;
:class:`SharedBackends` lets the oracles of one problem's batches (or chunks) share one backend probe.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..objective import AutogradOracle


class SubsampledOracle:
    """F_B(w): the mean over a mini-batch B that moves on when a gradient is asked at a new point.

    ``make(indices) -> Oracle`` builds the oracle of the mean over the given rows. See the module docstring for
    the batch schedule; :meth:`reseed` restarts the batch stream. ``samples_seen`` counts the data points
    touched by every evaluation (loss, gradient, each HVP, each Option I gradient), ``batch_fraction`` is
    |B| / n for a counted :class:`~sqn_ray.objective.Objective`'s epochs axis.
    """

    def __init__(self, make: Callable[[torch.Tensor], Any], n: int, batch_size: int, *, dim: int, dtype, device,
                 curvature_batch_size: int | None = None, seed: int = 0):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= n:
            raise ValueError(f"batch_size must be an integer in [1, {n}], got {batch_size!r}")
        c = batch_size if curvature_batch_size is None else curvature_batch_size
        if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= batch_size:
            raise ValueError(f"curvature_batch_size must be an integer in [1, batch_size={batch_size}], got {c!r}")
        self.make, self.n, self.batch_size, self.curvature_batch_size = make, n, batch_size, c
        self.dim, self.dtype, self.device = dim, dtype, torch.device(device)
        self.batch_fraction = batch_size / n
        self.batches_per_epoch = n // batch_size
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the batch stream from ``seed`` (``problem.init(seed)`` calls this)."""
        self._gen = torch.Generator().manual_seed(int(seed) + 7919)  # a stream apart from init's N(0, ·) draws
        self._perm = None
        self._next = 0
        self._anchor = None
        self._batch = self._curv = None
        self.batches_drawn = 0
        self.samples_seen = 0

    def state_dict(self) -> dict:
        """Where the batch stream stands, as plain tensors and numbers (``minimize`` saves it with a run's state,
        so that a continued run draws the batches the unsplit run would have)."""
        return {"generator": self._gen.get_state(), "permutation": self._perm, "next": self._next,
                "anchor": self._anchor, "batch": self.batch_indices, "batches_drawn": self.batches_drawn,
                "samples_seen": self.samples_seen}

    def load_state_dict(self, saved: dict) -> None:
        """Put the batch stream where :meth:`state_dict` found it (the current batch's oracle rebuilt)."""
        self._gen.set_state(saved["generator"])
        self._perm, self._next, self._anchor = saved["permutation"], int(saved["next"]), saved["anchor"]
        self._batch = self._curv = None
        if saved["batch"] is not None:
            idx = saved["batch"]
            oracle = self.make(idx)
            c = self.curvature_batch_size
            self._batch, self._curv = (idx, oracle), oracle if c == self.batch_size else self.make(idx[:c])
        self.batches_drawn, self.samples_seen = int(saved["batches_drawn"]), int(saved["samples_seen"])

    @property
    def batch_indices(self) -> torch.Tensor | None:
        """The rows of the current mini-batch B (None before the first evaluation)."""
        return None if self._batch is None else self._batch[0]

    def _advance(self) -> None:
        if self._perm is None or self._next >= self.batches_per_epoch:
            self._perm = torch.randperm(self.n, generator=self._gen)
            self._next = 0
        idx = self._perm[self._next * self.batch_size:(self._next + 1) * self.batch_size]
        self._next += 1
        self.batches_drawn += 1
        oracle = self.make(idx)
        self._batch = (idx, oracle)
        c = self.curvature_batch_size
        self._curv = oracle if c == self.batch_size else self.make(idx[:c])

    def _current(self):
        if self._batch is None:
            self._advance()
        return self._batch[1]

    def loss(self, w):
        self.samples_seen += self.batch_size
        return self._current().loss(w)

    def loss_and_grad(self, w):
        anchor = self._anchor
        if self._batch is None or anchor is None or anchor.shape != w.shape or not torch.equal(anchor, w):
            self._advance()
            self._anchor = w.detach().clone()
        self.samples_seen += self.batch_size
        return self._batch[1].loss_and_grad(w)

    def hvps(self, w, V):
        self._current()
        self.samples_seen += self.curvature_batch_size * (V.shape[1] if V.dim() > 1 else 1)
        return self._curv.hvps(w, V)

    def grads(self, W):
        self.samples_seen += self.batch_size * (W.shape[1] if W.dim() > 1 else 1)
        return self._current().grads(W)


class SharedBackends:
    """An AutogradOracle whose probed backends are kept in ``backends`` (a dict shared by the oracles of one problem:
    its chunks or mini-batches), so that the timing probe runs once per problem, not once per chunk or batch."""

    def __init__(self, oracle: AutogradOracle, backends: dict):
        self._o, self._backends = oracle, backends
        self.dim, self.dtype, self.device = oracle.dim, oracle.dtype, oracle.device

    def loss(self, w):
        return self._o.loss(w)

    def loss_and_grad(self, w):
        return self._o.loss_and_grad(w)

    def hvps(self, w, V):
        if self._o.hvp_backend == "auto":  # another chunk/batch may have probed already: take its choice
            self._o.hvp_backend = self._backends["hvp_backend"]
        out = self._o.hvps(w, V)
        self._backends["hvp_backend"] = self._o.hvp_backend
        return out

    def grads(self, W):
        if self._o.grads_backend == "auto":
            self._o.grads_backend = self._backends["grads_backend"]
        out = self._o.grads(W)
        self._backends["grads_backend"] = self._o.grads_backend
        return out
