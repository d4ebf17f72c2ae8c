"""Shards of a data set and sums of oracles over them: F(w) = (1/n) Σ_i f_i(w) = Σ_k (n_k / n) F_k.

* :func:`shard_bounds`, :class:`Shard`, :class:`ShardBuilder`: contiguous blocks of rows and the picklable
  ``builder(rank, world, device) -> Shard`` that builds one where it is used;
* :class:`WeightedSumOracle` and :func:`chunked_oracle`: F = Σ_k c_k F_k in one process (chunks of a large data
  set, bounding the memory of batched passes);
* :class:`MLPShards`: a shard builder for the softmax MLP.

Problems use these (the MNIST ones chunk their data), and so does the Ray-side data-parallel oracle
(:mod:`sqn_ray.distributed`): they live with the problems, below the platform, and import no Ray.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

__all__ = ["Shard", "ShardBuilder", "WeightedSumOracle", "shard_bounds", "chunked_oracle", "MLPShards"]


# ------------------------------------------------------------------------------------------------ shards
def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rows [lo, hi) of shard ``rank`` of ``world``: contiguous blocks whose sizes differ by at most one."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


@dataclass
class Shard:
    """One shard: ``oracle`` for F_k (the MEAN over its ``n`` points), and optionally ``rows(lo, hi)``, an oracle
    for the mean over rows [lo, hi) of the shard (mini-batches, for data-parallel SG)."""

    oracle: Any
    n: int
    rows: Callable[[int, int], Any] | None = None


class ShardBuilder(Protocol):
    def __call__(self, rank: int, world: int, device: str) -> Shard: ...


# --------------------------------------------------------------------------------------- in one process
class WeightedSumOracle:
    """F = Σ_k c_k F_k for part oracles F_k (same dim, dtype, device), summed in part order.

    With c_k = n_k / n and F_k the mean over n_k points this is the mean over all n points; :func:`chunked_oracle`
    builds one from a row range factory.
    """

    def __init__(self, parts: Sequence[Any], weights: Sequence[float]):
        if not parts or len(parts) != len(weights):
            raise ValueError(f"need one weight per part, got {len(parts)} parts and {len(weights)} weights")
        first = parts[0]
        for p in parts[1:]:
            if (p.dim, p.dtype, torch.device(p.device)) != (first.dim, first.dtype, torch.device(first.device)):
                raise ValueError("all parts must share dim, dtype and device")
        self.parts = list(parts)
        self.weights = [float(c) for c in weights]
        self.dim, self.dtype, self.device = first.dim, first.dtype, torch.device(first.device)

    def loss(self, w):
        return sum((c * p.loss(w) for p, c in zip(self.parts, self.weights)), torch.zeros((), dtype=self.dtype,
                                                                                           device=self.device))

    def loss_and_grad(self, w):
        f = torch.zeros((), dtype=self.dtype, device=self.device)
        g = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for p, c in zip(self.parts, self.weights):
            fk, gk = p.loss_and_grad(w)
            f = f + c * fk
            g.add_(gk, alpha=c)
        return f, g

    def hvps(self, w, V):
        out = torch.zeros(self.dim, V.shape[1], dtype=self.dtype, device=self.device)
        for p, c in zip(self.parts, self.weights):
            out.add_(p.hvps(w, V), alpha=c)
        return out

    def grads(self, W):
        out = torch.zeros(self.dim, W.shape[1], dtype=self.dtype, device=self.device)
        for p, c in zip(self.parts, self.weights):
            out.add_(p.grads(W), alpha=c)
        return out


def chunked_oracle(make: Callable[[int, int], Any], n: int, chunk_size: int | None):
    """The oracle of the mean over rows [0, n): ``make(0, n)`` itself, or, with ``chunk_size`` < n, a
    :class:`WeightedSumOracle` over ``make(lo, hi)`` for consecutive chunks (bounds the memory of the batched
    HVP and Option I passes, which grow with rows × m)."""
    if not chunk_size or chunk_size >= n:
        return make(0, n)
    bounds = [(lo, min(lo + chunk_size, n)) for lo in range(0, n, chunk_size)]
    return WeightedSumOracle([make(lo, hi) for lo, hi in bounds], [(hi - lo) / n for lo, hi in bounds])


@dataclass
class MLPShards:
    """Picklable shard builder for a softmax MLP (:class:`~sqn_ray.problems.mlp.MLPOracle`) on given data: shard
    ``rank`` takes the contiguous rows :func:`shard_bounds` gives it; ``chunk_size`` bounds its batched passes."""

    sizes: tuple
    activation: str
    X: np.ndarray
    labels: np.ndarray
    dtype: str = "float64"
    chunk_size: int | None = None

    def __call__(self, rank: int, world: int, device: str = "cpu") -> Shard:
        from .mlp import MLPOracle

        lo, hi = shard_bounds(len(self.labels), world, rank)
        dtype = getattr(torch, self.dtype)
        X = torch.as_tensor(np.ascontiguousarray(self.X[lo:hi]))
        y = torch.as_tensor(np.asarray(self.labels[lo:hi], dtype=np.int64))

        def make(a, b):
            return MLPOracle(self.sizes, self.activation, X[a:b], y[a:b], dtype, device)

        return Shard(oracle=chunked_oracle(make, hi - lo, self.chunk_size), n=hi - lo, rows=make)
