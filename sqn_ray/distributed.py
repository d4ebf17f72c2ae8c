"""Data-parallel objectives: F(w) = (1/n) Σ_i f_i(w) split into shards, F = Σ_k (n_k / n) F_k.

Two oracles implement the :class:`~sqn_ray.objective.Oracle` protocol over shards, so every optimizer runs on
them unchanged (``sqn_ray.minimize(oracle, w0, ...)``):

* :class:`WeightedSumOracle` — in one process: F = Σ_k c_k F_k over part oracles (chunks of a large data set,
  to bound the memory of batched passes; the in-process reference of the distributed one).
* :class:`DataParallelOracle` — the shards live in k Ray actors (one per GPU on a cluster via
  ``gpus_per_worker=1``, CPU shards here). Every oracle call is ONE round trip: the driver puts the point w
  (and the m directions V, or the m points W) into the object store once, every worker computes its share —
  the loss, the gradient, the m Hessian-vector products ∇²F_k(w) V, or the m gradients ∇F_k(W) — already
  scaled by c_k = n_k / n, and the driver sums the k replies in rank order. A point already sent is not sent
  again (a worker keeps its last point, so "loss_and_grad(w) then hvps(w, V)", the sampled methods' pattern,
  ships w once and hits the worker oracle's cached forward/backward state).

A shard is built *inside* its worker by a picklable ``builder(rank, world, device) -> Shard``: the data can be
read from local disk there (``sqn-ray data fetch`` on every node, or a shared folder) instead of travelling
through the driver. Rows are split in contiguous blocks, :func:`shard_bounds`.

Communication is recorded per call in :attr:`DataParallelOracle.comm` (:class:`CommStats`): values (floats)
sent down to the workers and up to the driver, counted per worker as a point-to-point link would carry them
(w goes to each of k workers: k·d values), round trips, wall time, and the slowest worker's compute time
(wall − compute is the overhead of communication and scheduling). Importing this module does not import Ray.
"""
from __future__ import annotations

import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .collective import RunningTotals
# shards and weighted sums live with the problems (which use them too); their old home re-exports them
from .problems.shards import MLPShards, Shard, ShardBuilder, WeightedSumOracle, chunked_oracle, shard_bounds

__all__ = ["Shard", "WeightedSumOracle", "DataParallelOracle", "CommStats", "shard_bounds", "chunked_oracle",
           "MLPShards"]


# ------------------------------------------------------------------------------------------ communication
@dataclass
class CommStats(RunningTotals):
    """Cumulative communication and time of a :class:`DataParallelOracle` (all calls, all workers).

    ``values_down``/``values_up``: floats carried driver → workers / workers → driver, per worker link
    (broadcasting w of size d to k workers counts k·d). ``compute_seconds``: Σ over calls of the slowest
    worker's compute (wall) time; ``compute_cpu_seconds``: the same with each worker's CPU (thread) time, which
    other processes on the machine do not inflate; ``wall_seconds``: Σ of the calls' wall times seen by the driver.
    """

    calls: int = 0
    round_trips: int = 0
    values_down: int = 0
    values_up: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    points_sent: int = 0
    points_reused: int = 0
    wall_seconds: float = 0.0
    compute_seconds: float = 0.0
    compute_cpu_seconds: float = 0.0
    by_kind: dict = field(default_factory=dict)

    def add(self, kind: str, *, down: int, up: int, itemsize: int, wall: float, compute: float, cpu: float = 0.0,
            reused: bool = False):
        self.calls += 1
        self.round_trips += 1
        self.values_down += down
        self.values_up += up
        self.bytes_down += down * itemsize
        self.bytes_up += up * itemsize
        self.points_sent += not reused
        self.points_reused += reused
        self.wall_seconds += wall
        self.compute_seconds += compute
        self.compute_cpu_seconds += cpu
        k = self.by_kind.setdefault(kind, {"calls": 0, "values_down": 0, "values_up": 0, "wall_seconds": 0.0,
                                           "compute_seconds": 0.0})
        k["calls"] += 1
        k["values_down"] += down
        k["values_up"] += up
        k["wall_seconds"] += wall
        k["compute_seconds"] += compute


# ------------------------------------------------------------------------------------------------ workers
def _as_tensor(payload: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with warnings.catch_warnings():  # object-store arrays are read-only; the oracles never write into inputs
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(payload)
    return t.to(dtype=dtype, device=device)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _scaled(t: torch.Tensor, c: float) -> torch.Tensor:
    """c · t, out of place (an oracle may hand out a tensor it still uses, e.g. a cached gradient)."""
    return t if c == 1.0 else t * c


class _ShardWorker:
    """The Ray actor holding one shard (wrapped with ``ray.remote`` by :class:`DataParallelOracle`)."""

    def __init__(self, builder, rank: int, world: int, threads: int | None, want_gpu: bool):
        if threads:
            torch.set_num_threads(int(threads))
        import ray

        gpu_ids = ray.get_gpu_ids()
        device = "cuda:0" if want_gpu and gpu_ids and torch.cuda.is_available() else "cpu"
        t0 = time.perf_counter()
        self.shard: Shard = builder(rank, world, device)
        self.build_seconds = time.perf_counter() - t0
        self.oracle = self.shard.oracle
        self.device = torch.device(device)
        self.rank, self.world = rank, world
        self.scale = 1.0
        self._w: torch.Tensor | None = None
        self._rows: dict[tuple[int, int], Any] = {}
        self._info = {"rank": rank, "n": int(self.shard.n), "dim": int(self.oracle.dim),
                      "dtype": str(self.oracle.dtype).removeprefix("torch."), "device": device,
                      "hostname": socket.gethostname(), "pid": os.getpid(),
                      "gpu_ids": [str(g) for g in gpu_ids], "threads": torch.get_num_threads(),
                      "build_seconds": self.build_seconds}

    def info(self) -> dict:
        return self._info

    def set_scale(self, scale: float) -> None:
        self.scale = float(scale)

    def _point(self, w_payload) -> torch.Tensor:
        if w_payload is not None:
            self._w = _as_tensor(w_payload, self.oracle.dtype, self.device).clone()
        elif self._w is None:
            raise RuntimeError(f"worker {self.rank}: asked to reuse the last point, but it holds none")
        return self._w

    def loss(self, w_payload, _=None):
        t0, c0 = time.perf_counter(), time.thread_time()
        w = self._point(w_payload)
        f = float(self.oracle.loss(w)) * self.scale
        return f, time.perf_counter() - t0, time.thread_time() - c0

    def loss_and_grad(self, w_payload, _=None):
        t0, c0 = time.perf_counter(), time.thread_time()
        w = self._point(w_payload)
        f, g = self.oracle.loss_and_grad(w)
        out = (float(f) * self.scale, _to_numpy(_scaled(g, self.scale)))
        return out, time.perf_counter() - t0, time.thread_time() - c0

    def hvps(self, w_payload, V_payload):
        t0, c0 = time.perf_counter(), time.thread_time()
        w = self._point(w_payload)
        HV = self.oracle.hvps(w, _as_tensor(V_payload, self.oracle.dtype, self.device))
        return _to_numpy(_scaled(HV, self.scale)), time.perf_counter() - t0, time.thread_time() - c0

    def grads(self, w_payload, W_payload):
        t0, c0 = time.perf_counter(), time.thread_time()
        G = self.oracle.grads(_as_tensor(W_payload, self.oracle.dtype, self.device))
        return _to_numpy(_scaled(G, self.scale)), time.perf_counter() - t0, time.thread_time() - c0

    def minibatch(self, w_payload, lo_hi):
        """(c · F_b(w), c · ∇F_b(w)) on the shard's rows [lo, hi); c = (hi − lo) / global batch, set by the driver."""
        t0, c0 = time.perf_counter(), time.thread_time()
        lo, hi, c = lo_hi
        w = self._point(w_payload)
        if self.shard.rows is None:
            raise RuntimeError("this shard builder gives no row oracles (Shard.rows): no mini-batches")
        oracle = self._rows.get((lo, hi))
        if oracle is None:
            if len(self._rows) > 4096:
                self._rows.clear()
            oracle = self._rows[(lo, hi)] = self.shard.rows(lo, hi)
        f, g = oracle.loss_and_grad(w)
        return (float(f) * c, _to_numpy(_scaled(g, c))), time.perf_counter() - t0, time.thread_time() - c0


# ------------------------------------------------------------------------------------------------ driver
class DataParallelOracle:
    """An :class:`~sqn_ray.objective.Oracle` whose data is sharded over ``num_workers`` Ray actors.

    Parameters
    ----------
    builder : picklable ``builder(rank, world, device) -> Shard``, run once in each worker.
    num_workers : k, the number of shards/actors.
    cpus_per_worker, gpus_per_worker : Ray resources of each actor (``gpus_per_worker=1``: one GPU each; the
        worker then computes on ``cuda:0``, the GPU Ray assigned it).
    threads_per_worker : torch threads in each worker (default: ``cpus_per_worker`` rounded, at least 1).
    device : where the driver returns results (and where the optimizer's vectors live).
    actor_options : extra ``ray.remote`` options (e.g. ``scheduling_strategy="SPREAD"``).
    startup_timeout : seconds to wait for every worker to be scheduled and to build its shard; then a
        RuntimeError names the resources asked for and those available (instead of waiting forever).

    Ray must be initialized (``ray.init``) before construction. Call :meth:`close` (or use ``with``) to stop
    the actors.

    .. note:: When the workers share a machine with the driver, give the driver ONE torch thread
       (``torch.set_num_threads(1)``): its share of an iteration (sampling S, the small Gram/TR algebra, summing
       k replies) is tiny, and a multi-threaded pool spins on the cores the workers compute on. Measured here
       (2 cores, MNIST MLP, S-LSR1 m = 16): driver CPU per iteration 0.25-0.31 s with 2 threads, 0.07 s with 1,
       and the 2-worker iteration went from no faster than 1 worker to 0.53 x.
    """

    def __init__(self, builder: ShardBuilder, num_workers: int, *, cpus_per_worker: float = 1,
                 gpus_per_worker: float = 0, threads_per_worker: int | None = None,
                 device: torch.device | str = "cpu", actor_options: dict | None = None,
                 startup_timeout: float = 600.0):
        import ray

        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be a positive integer, got {num_workers!r}")
        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialized: call ray.init() (or join a cluster) first")
        self._ray = ray
        threads = threads_per_worker or max(1, int(round(cpus_per_worker)))
        remote = ray.remote(_ShardWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                                   **(actor_options or {}))
        self.workers = [remote.remote(builder, rank, num_workers, threads, gpus_per_worker > 0)
                        for rank in range(num_workers)]
        try:
            self.worker_info = ray.get([a.info.remote() for a in self.workers], timeout=startup_timeout)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise RuntimeError(
                f"{num_workers} shard workers (cpu {cpus_per_worker:g}, gpu {gpus_per_worker:g} each) did not start "
                f"within {startup_timeout:g} s; the cluster has {ray.available_resources()} available of "
                f"{ray.cluster_resources()}") from None
        except Exception:
            self.close()
            raise
        dims = {i["dim"] for i in self.worker_info}
        dtypes = {i["dtype"] for i in self.worker_info}
        if len(dims) != 1 or len(dtypes) != 1:
            self.close()
            raise ValueError(f"shards disagree on dim {sorted(dims)} or dtype {sorted(dtypes)}")
        self.num_workers = num_workers
        self.dim = dims.pop()
        self.dtype = getattr(torch, dtypes.pop())
        self.device = torch.device(device)
        self.shard_sizes = [int(i["n"]) for i in self.worker_info]
        self.n = sum(self.shard_sizes)
        if self.n == 0:
            self.close()
            raise ValueError("the shards hold no data")
        ray.get([a.set_scale.remote(nk / self.n) for a, nk in zip(self.workers, self.shard_sizes)])
        self.comm = CommStats()
        self._itemsize = torch.empty((), dtype=self.dtype).element_size()
        self._last_w: torch.Tensor | None = None

    # -- the protocol ----------------------------------------------------------------------------------
    def loss(self, w):
        parts = self._call("loss", w, None, up=1)
        return torch.tensor(_sum_scalars(parts), dtype=self.dtype, device=self.device)

    def loss_and_grad(self, w):
        parts = self._call("loss_and_grad", w, None, up=1 + self.dim)
        f = _sum_scalars([p[0] for p in parts])
        g = _sum_arrays([p[1] for p in parts])
        return torch.tensor(f, dtype=self.dtype, device=self.device), self._tensor(g)

    def hvps(self, w, V):
        if V.dim() == 1:
            return self.hvps(w, V.unsqueeze(1)).squeeze(1)
        parts = self._call("hvps", w, V, up=self.dim * V.shape[1])
        return self._tensor(_sum_arrays(parts))

    def grads(self, W):
        if W.dim() == 1:
            return self.loss_and_grad(W)[1]
        parts = self._call("grads", None, W, up=self.dim * W.shape[1], send_point=False)
        return self._tensor(_sum_arrays(parts))

    # -- mini-batches (data-parallel SG) -------------------------------------------------------------------
    def minibatch_loss_and_grad(self, w, step: int, batch_size: int):
        """Loss and gradient on global mini-batch ``step`` of size ``batch_size``: each worker takes
        ``batch_size / k`` consecutive rows of its shard (wrapping around), the driver sums. One round trip."""
        k = self.num_workers
        per = [batch_size // k + (r < batch_size % k) for r in range(k)]
        args = []
        for nk, b in zip(self.shard_sizes, per):
            if b == 0 or nk == 0:
                args.append((0, 0, 0.0))
                continue
            lo = (step * b) % max(nk - b + 1, 1)
            args.append((lo, min(lo + b, nk), min(b, nk) / batch_size))
        parts = self._call("minibatch", w, args, up=1 + self.dim, per_worker_extra=True)
        f = _sum_scalars([p[0] for p in parts])
        return torch.tensor(f, dtype=self.dtype, device=self.device), self._tensor(_sum_arrays([p[1] for p in parts]))

    # -- plumbing ----------------------------------------------------------------------------------------
    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(dtype=self.dtype, device=self.device)

    def _call(self, kind, w, extra, *, up: int, send_point: bool = True, per_worker_extra: bool = False):
        ray, k = self._ray, self.num_workers
        t0 = time.perf_counter()
        down = 0
        w_ref, reused = None, False
        if send_point:
            w = w.detach()
            if w.shape != (self.dim,):
                raise ValueError(f"w must have shape ({self.dim},), got {tuple(w.shape)}")
            last = self._last_w
            if last is not None and last.dtype == w.dtype and last.device == w.device and torch.equal(last, w):
                reused = True  # every worker holds this point already (e.g. the trial point that was accepted)
            else:
                w_ref = ray.put(np.ascontiguousarray(_to_numpy(w)))
                self._last_w = w.clone()
                down += k * self.dim
        if per_worker_extra:
            futures = [getattr(a, kind).remote(w_ref, x) for a, x in zip(self.workers, extra)]
        else:
            x_ref = None
            if extra is not None:
                x = extra.detach()
                x_ref = ray.put(np.ascontiguousarray(_to_numpy(x)))
                down += k * x.numel()
            futures = [getattr(a, kind).remote(w_ref, x_ref) for a in self.workers]
        try:
            outs = ray.get(futures)
        except Exception:
            self._last_w = None  # workers' points are unknown now: resend next time
            raise
        wall = time.perf_counter() - t0
        self.comm.add(kind, down=down, up=k * up, itemsize=self._itemsize, wall=wall,
                      compute=max(o[1] for o in outs), cpu=max(o[2] for o in outs), reused=reused)
        self.last_compute = [o[1] for o in outs]
        return [o[0] for o in outs]

    def close(self) -> None:
        """Stop the worker actors (idempotent)."""
        for a in getattr(self, "workers", []):
            try:
                self._ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _sum_scalars(parts) -> float:
    total = 0.0
    for p in parts:
        total += p
    return total


def _sum_arrays(parts) -> np.ndarray:
    out = np.array(parts[0], copy=True)
    for p in parts[1:]:
        out += p
    return out
