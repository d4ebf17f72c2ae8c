"""Data-parallel oracles over a torch.distributed process group: F = Σ_k (n_k / n) F_k, one all-reduce per call.

Every rank of a process group (Ray Train's workers set it up: gloo on CPUs, NCCL on GPUs) holds one shard of the
data and an oracle F_k for the mean over its n_k rows. :class:`AllReduceOracle` wraps it: each call computes this
rank's share already scaled by c_k = n_k / n and sums the shares of all ranks with ONE
``torch.distributed.all_reduce`` (the loss rides along with the gradient in one buffer), so every rank gets F,
∇F, the m Hessian-vector products ∇²F V (Option II) or the m gradients ∇F(W) (Option I) of the whole data set.

The optimizer runs *replicated*: every rank calls ``minimize`` with the same seed, draws the same directions and
gets the same (all-reduced) values, so every rank holds the same iterate; nothing else is sent. An all-reduce
delivers the same bits to every rank, so the replicas cannot drift; :func:`replicas_agree` checks it. What is
not deterministic across ranks (a wall-time budget, a stop asked for by Tune) is decided on rank 0 and
broadcast once per iteration (:func:`agree_on_stop`), so every rank stops at the same iterate.

:class:`CollectiveStats` records the communication as :class:`~sqn_ray.distributed.CommStats` does for the actor
path: collectives, values all-reduced per rank, and the time spent in them (the device synchronised first, so
the time is the collective's, not the compute queued before it). Importing this module imports neither Ray
nor a process group: it works with any initialised ``torch.distributed`` group.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields

import torch
import torch.distributed as dist

__all__ = ["AllReduceOracle", "CollectiveStats", "RunningTotals", "weighted_mean", "agree_on_stop", "replicas_agree"]


class RunningTotals:
    """:meth:`snapshot` and :meth:`delta` of a dataclass of running totals with a ``by_kind`` breakdown (the
    communication records of both data-parallel engines: this module's and :mod:`sqn_ray.distributed`'s)."""

    def snapshot(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "by_kind"}
        out["by_kind"] = {k: dict(v) for k, v in self.by_kind.items()}
        return out

    @staticmethod
    def delta(after: dict, before: dict) -> dict:
        """Totals between two :meth:`snapshot` calls (``by_kind`` left out)."""
        return {k: after[k] - before[k] for k in after if k != "by_kind"}


@dataclass
class CollectiveStats(RunningTotals):
    """Cumulative communication of an :class:`AllReduceOracle` on one rank.

    ``collectives``: all-reduce calls; ``values``: floats each rank contributed (and received) in them;
    ``seconds``: wall time inside them, after the device finished the compute queued before; ``by_kind``: the
    same per oracle method (``loss``, ``loss_and_grad``, ``hvps``, ``grads``).
    """

    collectives: int = 0
    values: int = 0
    bytes: int = 0
    seconds: float = 0.0
    by_kind: dict = field(default_factory=dict)

    def add(self, kind: str, values: int, itemsize: int, seconds: float) -> None:
        self.collectives += 1
        self.values += values
        self.bytes += values * itemsize
        self.seconds += seconds
        k = self.by_kind.setdefault(kind, {"collectives": 0, "values": 0, "seconds": 0.0})
        k["collectives"] += 1
        k["values"] += values
        k["seconds"] += seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class AllReduceOracle:
    """The :class:`~sqn_ray.objective.Oracle` of F = Σ_k c_k F_k on one rank of a process group.

    Parameters
    ----------
    oracle : this rank's shard oracle (F_k, the mean over its ``n_k`` rows).
    n_local : n_k, the rows of this rank's shard.
    n_total : n = Σ_k n_k (the caller knows it from the shard bounds; :func:`total_rows` all-reduces it).
    group : the process group (None: the default group).

    Every method is one all-reduce of one contiguous buffer: ``loss`` 1 value, ``loss_and_grad`` d + 1,
    ``hvps`` d·m, ``grads`` d·m. The results are the same on every rank. ``batch_fraction`` is the shard
    oracle's (a full-batch shard: 1, one pass over the whole data set per call, shared by the ranks).
    """

    def __init__(self, oracle, n_local: int, n_total: int, *, group=None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("AllReduceOracle needs an initialised torch.distributed process group "
                               "(Ray Train's workers have one; or torch.distributed.init_process_group)")
        if not 0 <= n_local <= n_total or n_total < 1:
            raise ValueError(f"need 0 <= n_local <= n_total and n_total >= 1, got n_local={n_local}, "
                             f"n_total={n_total}")
        self.oracle, self.group = oracle, group
        self.dim, self.dtype, self.device = oracle.dim, oracle.dtype, torch.device(oracle.device)
        self.weight = n_local / n_total
        self.n_local, self.n_total = int(n_local), int(n_total)
        self.batch_fraction = getattr(oracle, "batch_fraction", 1.0)
        self.comm = CollectiveStats()
        self._itemsize = torch.empty((), dtype=self.dtype).element_size()

    def _all_reduce(self, kind: str, buf: torch.Tensor) -> torch.Tensor:
        buf = buf.contiguous()
        _sync(self.device)
        t0 = time.perf_counter()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        _sync(self.device)
        self.comm.add(kind, buf.numel(), self._itemsize, time.perf_counter() - t0)
        return buf

    def loss(self, w):
        f = self.oracle.loss(w).reshape(1) * self.weight
        return self._all_reduce("loss", f.to(self.dtype))[0]

    def loss_and_grad(self, w):
        f, g = self.oracle.loss_and_grad(w)
        buf = torch.cat([g.reshape(-1), f.reshape(1).to(g.dtype)]) * self.weight  # a new buffer: g may be cached
        buf = self._all_reduce("loss_and_grad", buf)
        return buf[-1], buf[:-1]

    def hvps(self, w, V):
        if V.dim() == 1:
            return self.hvps(w, V.unsqueeze(1)).squeeze(1)
        return self._all_reduce("hvps", self.oracle.hvps(w, V) * self.weight)

    def grads(self, W):
        if W.dim() == 1:
            return self.loss_and_grad(W)[1]
        return self._all_reduce("grads", self.oracle.grads(W) * self.weight)

    def mean(self, value: float) -> float:
        """Σ_k c_k value_k: a per-shard mean (a shard's accuracy, its loss) made the mean over all rows."""
        return weighted_mean(value, self.weight, device=self.device, dtype=torch.float64, group=self.group)


def weighted_mean(value: float, weight: float, *, device="cpu", dtype=torch.float64, group=None) -> float:
    """Σ_k weight_k · value_k over the ranks (one all-reduce of one value); NaN anywhere gives NaN."""
    buf = torch.tensor([float(value) * weight], dtype=dtype, device=device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    return float(buf[0])


def agree_on_stop(stop: bool, *, device="cpu", group=None) -> bool:
    """Rank 0's decision, on every rank (one broadcast of one value): what only rank 0 can decide the same way
    every time (a wall-time budget, a stop Tune asked for) must stop every replica at the same iterate."""
    buf = torch.tensor([1.0 if stop else 0.0], device=device)
    dist.broadcast(buf, src=0, group=group)
    return bool(buf[0] > 0)


def replicas_agree(x: torch.Tensor, *, group=None) -> bool:
    """Whether every rank holds the same bits of ``x`` (its float64 sum and sum of squares, min and max over the
    ranks: two all-reduces of two values)."""
    x64 = x.detach().to(torch.float64)
    probe = torch.stack([x64.sum(), (x64 * x64).sum()])
    lo, hi = probe.clone(), probe.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
    return bool(((lo == hi) | (lo.isnan() & hi.isnan())).all())
