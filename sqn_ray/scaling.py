"""``sqn-ray scaling FILE``: the poster's distributed-computing measurements, as tidy Parquet (and figures).

Two experiments, declared in a small YAML file (``studies/scaling.yaml``):

1. **Throughput** (one device, one process): samples per second against batch size b for ``loss``,
   ``gradient`` (loss and gradient), ``hvp-batch`` (m Hessian-vector products at a point whose gradient is
   known: the sampled methods' pattern) and ``grad-batch`` (Option I: gradients at m points). Each timing is the
   median of ``repeats`` calls at fresh points after one warm-up call. Writes ``DIR/throughput.parquet``.
2. **Workers** (data parallel over k Ray actors, :class:`~sqn_ray.distributed.DataParallelOracle`): for each k,
   the time of one S-LSR1 iteration (Option II, memory m; the median over ``iterations`` timed iterations of a
   real run) and of one epoch of mini-batch SG (batch ``sg_batch_size`` split over the k workers; ``sg_steps``
   timed steps extrapolated to a full epoch when set). Every row carries the communication (values sent down
   and up, round trips) and the split of the wall time into the slowest worker's compute and the rest
   (communication and scheduling). Writes ``DIR/workers.parquet``.

File format::

    name: scaling
    description: ...
    problems: [mnist-mlp, mnist-cnn]   # mnist-mlp, mnist-cnn (cached data), synthetic-mlp (random data, no download)
    n_train: null                # use only the first rows of the training set (null: all)
    dtype: float32
    device: cpu                  # throughput device: cpu, cuda or auto
    throughput: {batch_sizes: [64, 256, 1024], operations: [loss, gradient, hvp-batch], memory: 16,
                 repeats: 5, threads: 1}
    workers: {problems: [mnist-mlp], counts: [1, 2], memory: 16, iterations: 3, sg_batch_size: 128,
              sg_steps: 200, cpus_per_worker: 1, gpus_per_worker: 0, seed: 0}   # problems: default all
    smoke: {...}                 # overrides applied by --smoke

Either experiment may be left out. Nothing here downloads: MNIST must be in the cache (``sqn-ray data fetch``).
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .options import OptionError, choice, nonneg_float, nonneg_int, positive_float, positive_int
from .study.spec import deep_merge

__all__ = ["ScalingSpec", "load_scaling_spec", "parse_scaling_spec", "run_scaling", "measure_throughput",
           "measure_workers", "add_scaling_command", "SyntheticShards", "OPERATIONS", "plot_scaling"]

OPERATIONS = ("loss", "gradient", "hvp-batch", "grad-batch")
PROBLEMS = ("mnist-mlp", "mnist-cnn", "synthetic-mlp")
TOP_KEYS = ("name", "description", "problems", "problem", "n_train", "dtype", "device", "throughput", "workers",
            "smoke", "data_dir")
THROUGHPUT_KEYS = ("batch_sizes", "operations", "memory", "repeats", "threads", "chunk_size")
WORKERS_KEYS = ("problems", "counts", "memory", "iterations", "sg_batch_size", "sg_steps", "sg_lr", "cpus_per_worker",
                "gpus_per_worker", "threads_per_worker", "seed", "chunk_size", "paths")
#: the data-parallel engines measured side by side: the hand-written Ray actors with a star gather into the
#: driver (sqn_ray.distributed.DataParallelOracle), and Ray Train's workers with a torch.distributed all-reduce
#: (sqn_ray.collective.AllReduceOracle, what a study's data-parallel trial runs)
PATHS = ("actors", "train")
THROUGHPUT_DEFAULTS = {"batch_sizes": [64, 256, 1024, 4096], "operations": list(OPERATIONS[:3]), "memory": 16,
                       "repeats": 5, "threads": 1, "chunk_size": None}
WORKERS_DEFAULTS = {"problems": None, "counts": [1, 2], "memory": 16, "iterations": 3, "sg_batch_size": 128,
                    "sg_steps": None, "sg_lr": 0.1, "cpus_per_worker": 1, "gpus_per_worker": 0,
                    "threads_per_worker": None, "seed": 0, "chunk_size": 10_000, "paths": list(PATHS)}
SYNTHETIC_N = 10_000


class ScalingSpecError(OptionError):
    """A scaling file is invalid; the message names the file and the field. As an
    :class:`~sqn_ray.options.OptionError` it carries ``option`` (the field path, ``workers.counts[0]``),
    ``value`` (the value found there) and ``allowed`` (a description, or the tuple of allowed values)."""


@dataclass(frozen=True)
class ScalingSpec:
    name: str
    description: str
    problems: tuple
    problem: str  # the one being measured (the first of ``problems`` until run_scaling walks them)
    n_train: int | None
    dtype: str
    device: str
    data_dir: str | None
    throughput: dict | None
    workers: dict | None
    source: str
    smoke: bool

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("name", "description", "problems", "n_train", "dtype", "device",
                                              "data_dir", "throughput", "workers", "source", "smoke")}


def load_scaling_spec(path: str | os.PathLike, *, smoke: bool = False) -> ScalingSpec:
    """Read and validate a scaling file, with the study files' YAML reader (``1e-3`` is a float, duplicate
    keys and alias bombs are refused, the same size limits)."""
    from .study.spec import read_yaml_file

    data, _ = read_yaml_file(path, error=ScalingSpecError)
    return parse_scaling_spec(data, source=str(path), smoke=smoke)


def parse_scaling_spec(data: Any, *, source: str = "<scaling>", smoke: bool = False) -> ScalingSpec:
    def fail(path, msg, *, value=None, allowed=None):
        raise ScalingSpecError(f"{source}: {path}: {msg}", option=path, value=value, allowed=allowed)

    def check(checker, v, path):
        """``v`` judged by one of the :mod:`sqn_ray.options` checkers (kept as given, not normalised)."""
        try:
            checker(path, v)
        except OptionError as e:
            if isinstance(e.allowed, tuple):
                fail(path, f"unknown value {v!r}; allowed: {', '.join(e.allowed)}", value=v, allowed=e.allowed)
            fail(path, f"expected {e.allowed}, got {v!r}", value=v, allowed=e.allowed)
        return v

    def keys(value, path, allowed):
        if not isinstance(value, dict):
            fail(path, f"expected a mapping, got {value!r}", value=value, allowed="a mapping")
        for k in value:
            if k not in allowed:
                fail(f"{path}.{k}" if path != "(top level)" else k, f"unknown key; allowed: {', '.join(allowed)}",
                     value=value[k], allowed=tuple(allowed))
        return value

    def pos_int(v, path, none_ok=False):
        if v is None and none_ok:
            return None
        return check(positive_int, v, path)

    def int_list(v, path):
        if not isinstance(v, list) or not v:
            fail(path, f"expected a non-empty list of positive integers, got {v!r}", value=v,
                 allowed="a non-empty list of positive integers")
        return [pos_int(x, f"{path}[{i}]") for i, x in enumerate(v)]

    raw = keys(data if data is not None else {}, "(top level)", TOP_KEYS)
    if smoke and raw.get("smoke") is not None:
        raw = deep_merge({k: v for k, v in raw.items() if k != "smoke"},
                         keys(raw["smoke"], "smoke", tuple(k for k in TOP_KEYS if k != "smoke")))
    if "problem" in raw and "problems" in raw:
        fail("problems", "give 'problems' (or its alias 'problem'), not both", value=raw["problems"])
    key = "problem" if "problem" in raw else "problems"
    problems = raw.get(key, ["synthetic-mlp"])
    problems = [problems] if isinstance(problems, str) else problems
    if not isinstance(problems, list) or not problems:
        fail(key, f"expected a problem name or a non-empty list of them, got {problems!r}", value=problems,
             allowed=PROBLEMS)
    for i, problem in enumerate(problems):
        check(choice(*PROBLEMS), problem, f"{key}[{i}]")
    dtype = check(choice("float32", "float64"), raw.get("dtype", "float32"), "dtype")
    device = check(choice("cpu", "cuda", "auto"), raw.get("device", "cpu"), "device")
    tp = wk = None
    if raw.get("throughput") is not None:
        tp = deep_merge(THROUGHPUT_DEFAULTS, keys(raw["throughput"], "throughput", THROUGHPUT_KEYS))
        tp["batch_sizes"] = int_list(tp["batch_sizes"], "throughput.batch_sizes")
        ops = tp["operations"]
        if not isinstance(ops, list) or not ops or any(o not in OPERATIONS for o in ops):
            fail("throughput.operations", f"expected a list from {', '.join(OPERATIONS)}, got {ops!r}", value=ops,
                 allowed=OPERATIONS)
        for k in ("memory", "repeats", "threads"):
            pos_int(tp[k], f"throughput.{k}")
        pos_int(tp["chunk_size"], "throughput.chunk_size", none_ok=True)
    if raw.get("workers") is not None:
        wk = deep_merge(WORKERS_DEFAULTS, keys(raw["workers"], "workers", WORKERS_KEYS))
        wk["counts"] = int_list(wk["counts"], "workers.counts")
        # a subset of the top-level problems (full-batch CNN iterations are slow on CPUs)
        if wk["problems"] is not None:
            sub = [wk["problems"]] if isinstance(wk["problems"], str) else wk["problems"]
            if not isinstance(sub, list) or not sub or any(x not in problems for x in sub):
                fail("workers.problems", f"expected a non-empty subset of {problems}, got {wk['problems']!r}",
                     value=wk["problems"], allowed=tuple(problems))
            wk["problems"] = list(sub)
        for k in ("memory", "iterations", "sg_batch_size"):
            pos_int(wk[k], f"workers.{k}")
        pos_int(wk["sg_steps"], "workers.sg_steps", none_ok=True)
        pos_int(wk["threads_per_worker"], "workers.threads_per_worker", none_ok=True)
        pos_int(wk["chunk_size"], "workers.chunk_size", none_ok=True)
        check(positive_float, wk["sg_lr"], "workers.sg_lr")
        check(positive_float, wk["cpus_per_worker"], "workers.cpus_per_worker")
        check(nonneg_float, wk["gpus_per_worker"], "workers.gpus_per_worker")
        check(nonneg_int, wk["seed"], "workers.seed")
        paths = wk["paths"]
        if (not isinstance(paths, list) or not paths or any(p not in PATHS for p in paths)
                or len(set(paths)) < len(paths)):
            fail("workers.paths", f"expected a list of distinct values from {', '.join(PATHS)}, got {paths!r}",
                 value=paths, allowed=PATHS)
    if tp is None and wk is None:
        fail("(top level)", "nothing to measure: give 'throughput', 'workers' or both")
    return ScalingSpec(name=str(raw.get("name") or Path(source).stem), description=str(raw.get("description", "")),
                       problems=tuple(problems), problem=problems[0],
                       n_train=pos_int(raw.get("n_train"), "n_train", none_ok=True), dtype=dtype,
                       device=device, data_dir=raw.get("data_dir"), throughput=tp, workers=wk, source=source,
                       smoke=smoke)


# ----------------------------------------------------------------------------------------- problems
@dataclass
class SyntheticShards:
    """Shard builder of ``synthetic-mlp``: the MNIST MLP (784-100-10, tanh) on n Gaussian inputs with random
    labels, generated from ``seed`` (every worker makes only its own rows; no download, no data shipped)."""

    n: int = SYNTHETIC_N
    dtype: str = "float32"
    seed: int = 0
    chunk_size: int | None = 10_000

    def data(self, lo: int, hi: int):
        gen = np.random.default_rng(self.seed)
        X = gen.standard_normal((self.n, 784), dtype=np.float32)  # the same stream in every worker
        y = gen.integers(0, 10, self.n)
        return X[lo:hi], y[lo:hi]

    def __call__(self, rank: int, world: int, device: str = "cpu"):
        from .distributed import Shard, chunked_oracle, shard_bounds
        from .problems.mlp import MLPOracle
        from .problems.mnist import ACTIVATION, MLP_SIZES

        lo, hi = shard_bounds(self.n, world, rank)
        Xn, yn = self.data(lo, hi)
        dtype = getattr(torch, self.dtype)
        X = torch.from_numpy(Xn).to(dtype=dtype, device=device)
        y = torch.from_numpy(yn).to(device)

        def rows(a, b):
            return MLPOracle(MLP_SIZES, ACTIVATION, X[a:b], y[a:b], dtype, device)

        return Shard(oracle=chunked_oracle(rows, hi - lo, self.chunk_size), n=hi - lo, rows=rows)


def _builder(spec: ScalingSpec, chunk_size: int | None):
    if spec.problem == "synthetic-mlp":
        return SyntheticShards(n=spec.n_train or SYNTHETIC_N, dtype=spec.dtype, chunk_size=chunk_size)
    from .problems.mnist import MNISTShards

    return MNISTShards(name=spec.problem, dtype=spec.dtype, data_dir=spec.data_dir, chunk_size=chunk_size,
                       n_train=spec.n_train)


def _init(problem: str, dtype: str, seed: int) -> torch.Tensor:
    from .problems.mnist import lecun_init

    return lecun_init("cnn" if problem == "mnist-cnn" else "mlp", getattr(torch, dtype), "cpu")(seed)


def _device(want: str) -> str:
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda, but torch sees no CUDA device")
    return want


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------- throughput
def measure_throughput(spec: ScalingSpec, log: Callable[[str], None] = print) -> list[dict]:
    """Rows of the throughput experiment (see the module docstring)."""
    cfg = spec.throughput
    device = _device(spec.device)
    torch.set_num_threads(int(cfg["threads"]))
    sizes = sorted(cfg["batch_sizes"])
    builder = _builder(spec, cfg["chunk_size"])
    shard = builder(0, 1, device)  # every row, on this process's device
    if max(sizes) > shard.n:
        raise ValueError(f"throughput.batch_sizes: {max(sizes)} exceeds the {shard.n} training rows of {spec.problem}")
    m = int(cfg["memory"])
    w0 = _init(spec.problem, spec.dtype, 0).to(device)
    gen = torch.Generator().manual_seed(1)
    V = (torch.randn(w0.numel(), m, generator=gen, dtype=torch.float64) * 1e-2).to(w0.dtype).to(device)
    rows = []
    for b in sizes:
        oracle = shard.rows(0, b) if not cfg["chunk_size"] else _chunked_rows(shard, b, cfg["chunk_size"])
        for op in cfg["operations"]:
            times = []
            for rep in range(int(cfg["repeats"]) + 1):  # the first call warms up (allocations, probes)
                w = w0 + (rep + 1) * 1e-3  # a fresh point: nothing cached from the last call
                if op == "hvp-batch":
                    oracle.loss_and_grad(w)
                _sync(device)
                t0 = time.perf_counter()
                if op == "loss":
                    oracle.loss(w)
                elif op == "gradient":
                    oracle.loss_and_grad(w)
                elif op == "hvp-batch":
                    oracle.hvps(w, V)
                else:
                    oracle.grads(w[:, None] + V)
                _sync(device)
                if rep:
                    times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            vectors = m if op in ("hvp-batch", "grad-batch") else 1
            rows.append({"problem": spec.problem, "operation": op, "batch_size": b, "memory": vectors,
                         "seconds": t, "seconds_min": min(times), "repeats": len(times),
                         "samples_per_second": b / t, "sample_vectors_per_second": b * vectors / t,
                         "dtype": spec.dtype, "device": device, "threads": torch.get_num_threads(),
                         "host": socket.gethostname()})
            log(f"  throughput {spec.problem} {op:10s} b={b:<6d} {t * 1e3:9.2f} ms  {b / t:12.0f} samples/s")
        del oracle
    return rows


def _chunked_rows(shard, b, chunk_size):
    from .distributed import chunked_oracle

    return chunked_oracle(shard.rows, b, chunk_size)


# ----------------------------------------------------------------------------------------- workers
def measure_workers(spec: ScalingSpec, log: Callable[[str], None] = print) -> list[dict]:
    """Rows of the workers experiment (Ray must be initialized)."""
    cfg = spec.workers
    builder = _builder(spec, cfg["chunk_size"])
    m, B = int(cfg["memory"]), int(cfg["sg_batch_size"])
    rows = []
    threads = torch.get_num_threads()
    # the driver's share (sampling S, Gram matrices, TR solve, summing replies) is small; a multi-threaded pool
    # here would spin on the cores the local workers compute on
    torch.set_num_threads(1)
    try:
        for k in cfg["counts"]:
            for path in cfg["paths"]:
                measure = _measure_k if path == "actors" else _measure_k_train
                rows += [{**row, "path": path} for row in measure(spec, builder, k, m, B, log)]
    finally:
        torch.set_num_threads(threads)
    return rows


def _measure_k_train(spec: ScalingSpec, builder, k: int, m: int, B: int, log) -> list[dict]:
    """The same two rows as :func:`_measure_k`, on k Ray Train workers joined by torch.distributed: the optimizer
    replicated on every rank over :class:`~sqn_ray.collective.AllReduceOracle` (one all-reduce per oracle call),
    the SG baseline all-reducing each mini-batch gradient (as DDP does)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue
    import shutil
    import tempfile

    cfg = spec.workers
    out = Queue(actor_options={"num_cpus": 0})
    gpu = float(cfg["gpus_per_worker"])
    storage = tempfile.mkdtemp(prefix="sqn-ray-scaling-")
    config = {"spec": spec, "builder": builder, "m": m, "B": B, "out": out,
              "threads": cfg["threads_per_worker"] or max(1, int(round(cfg["cpus_per_worker"])))}
    trainer = TorchTrainer(
        _train_worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=k, use_gpu=gpu > 0,
                                     resources_per_worker={"CPU": float(cfg["cpus_per_worker"]),
                                                           **({"GPU": gpu} if gpu > 0 else {})}),
        run_config=RunConfig(name=f"scaling-{spec.problem}-{k}", storage_path=storage,
                             failure_config=FailureConfig(max_failures=0)))
    try:
        trainer.fit()
        rows = out.get(timeout=60)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    for row in rows:
        what = "s-lsr1 iteration" if row["task"] == "s-lsr1-iteration" else "sg epoch"
        log(f"  workers (train) {spec.problem} k={k} {what} {row['seconds']:.3f} s (all-reduce "
            f"{row['overhead_seconds']:.3f} s, {row['collectives']:.1f} collectives, "
            f"{row['values_allreduced'] / 1e6:.2f} M values per rank)")
    return rows


def _train_worker(config: dict) -> None:
    """One rank of :func:`_measure_k_train`; rank 0 puts the rows in the queue."""
    import ray.train
    import torch.distributed as dist

    import sqn_ray
    from .collective import AllReduceOracle, CollectiveStats

    spec, m, B = config["spec"], config["m"], config["B"]
    cfg = spec.workers
    context = ray.train.get_context()
    rank, k = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(int(config["threads"]))
    device = str(ray.train.torch.get_device()) if float(cfg["gpus_per_worker"]) > 0 else "cpu"
    shard = config["builder"](rank, k, device)
    sizes = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(k)]
    dist.all_gather(sizes, torch.tensor([float(shard.n)], dtype=torch.float64, device=device))
    sizes = [int(x[0]) for x in sizes]
    n = sum(sizes)
    oracle = AllReduceOracle(shard.oracle, shard.n, n)
    common = {"problem": spec.problem, "workers": k, "n": n, "dim": oracle.dim, "dtype": spec.dtype, "device": device,
              "threads_per_worker": torch.get_num_threads(), "host": socket.gethostname(),
              "values_down": None, "values_up": None, "round_trips": None, "compute_cpu_seconds": None}
    rows = []
    snaps = []
    w0 = _init(spec.problem, spec.dtype, cfg["seed"]).to(device)
    res = sqn_ray.minimize(oracle, w0, "s-lsr1", memory=m, sampling="hvp", seed=cfg["seed"],
                           max_iters=int(cfg["iterations"]) + 1,
                           callback=lambda x, record: snaps.append((record["wall_time"], oracle.comm.snapshot(),
                                                                    bool(record["accepted"]))) and False)
    per = [(t1 - t0, CollectiveStats.delta(c1, c0), acc)
           for (t0, c0, _), (t1, c1, acc) in zip(snaps[1:], snaps[2:])]  # iteration 1 is the warm-up
    if not per:
        raise RuntimeError(f"S-LSR1 ran {len(snaps) - 1} iteration(s) ({res.message}); need at least 2")
    secs = [p[0] for p in per]
    d = {key: sum(p[1][key] for p in per) / len(per) for key in per[0][1]}
    rows.append({**common, "task": "s-lsr1-iteration", "seconds": statistics.median(secs), "seconds_min": min(secs),
                 "repeats": len(secs), "memory": m, "sg_batch_size": None, "steps": None, "extrapolated": False,
                 "accepted_fraction": sum(p[2] for p in per) / len(per),
                 "compute_seconds": statistics.median(secs) - d["seconds"], "overhead_seconds": d["seconds"],
                 "collectives": d["collectives"], "values_allreduced": d["values"], "samples": n * (1 + m)})
    # one SG epoch, data parallel as DDP does it: every rank its B/k rows of the global batch, one all-reduce
    per_epoch = max(1, n // B)
    steps = per_epoch if cfg["sg_steps"] is None else min(int(cfg["sg_steps"]), per_epoch)
    b = B // k + (rank < B % k)
    c = min(b, shard.n) / B
    row_oracles: dict = {}
    sg = CollectiveStats()

    def minibatch(w, step):
        lo = (step * b) % max(shard.n - b + 1, 1)
        part = row_oracles.get(lo)
        if part is None:
            part = row_oracles[lo] = shard.rows(lo, min(lo + b, shard.n))
        f, g = part.loss_and_grad(w)
        buf = torch.cat([g.reshape(-1), f.reshape(1).to(g.dtype)]) * c
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        _sync(device)
        sg.add("minibatch", buf.numel(), buf.element_size(), time.perf_counter() - t0)
        return buf[-1], buf[:-1]

    w = w0.clone()
    minibatch(w, 0)  # warm-up: row oracles, buffers
    sg = CollectiveStats()
    dist.barrier()
    t0 = time.perf_counter()
    for step in range(steps):
        _, g = minibatch(w, step)
        w = w - cfg["sg_lr"] * g
    _sync(device)
    wall = time.perf_counter() - t0
    scale = per_epoch / steps
    rows.append({**common, "task": "sg-epoch", "seconds": wall * scale, "seconds_min": wall * scale, "repeats": 1,
                 "memory": None, "sg_batch_size": B, "steps": steps, "extrapolated": steps < per_epoch,
                 "accepted_fraction": None, "compute_seconds": (wall - sg.seconds) * scale,
                 "overhead_seconds": sg.seconds * scale, "collectives": sg.collectives * scale,
                 "values_allreduced": sg.values * scale, "samples": per_epoch * B})
    if rank == 0:
        config["out"].put(rows)


def _measure_k(spec: ScalingSpec, builder, k: int, m: int, B: int, log) -> list[dict]:
    """The S-LSR1-iteration row and the SG-epoch row for k workers."""
    import sqn_ray
    from .distributed import CommStats, DataParallelOracle

    cfg = spec.workers
    rows = []
    with DataParallelOracle(builder, k, cpus_per_worker=cfg["cpus_per_worker"],
                            gpus_per_worker=cfg["gpus_per_worker"],
                            threads_per_worker=cfg["threads_per_worker"]) as dp:
        common = {"problem": spec.problem, "workers": k, "n": dp.n, "dim": dp.dim, "dtype": spec.dtype,
                  "device": dp.worker_info[0]["device"], "threads_per_worker": dp.worker_info[0]["threads"],
                  "hosts": len({i["hostname"] for i in dp.worker_info}), "host": socket.gethostname()}
        # one S-LSR1 iteration: a real run, the first iteration a warm-up
        snaps = []
        w0 = _init(spec.problem, spec.dtype, cfg["seed"])
        res = sqn_ray.minimize(dp, w0, "s-lsr1", memory=m, sampling="hvp", seed=cfg["seed"],
                               max_iters=int(cfg["iterations"]) + 1,
                               callback=lambda x, record: snaps.append((record["wall_time"], dp.comm.snapshot(),
                                                                        bool(record["accepted"]))) and False)
        per = []
        for (t0, c0, _), (t1, c1, acc) in zip(snaps[1:], snaps[2:]):  # skip iteration 1 (warm-up)
            per.append((t1 - t0, CommStats.delta(c1, c0), acc))
        if not per:
            raise RuntimeError(f"S-LSR1 ran {len(snaps) - 1} iteration(s) ({res.message}); need at least 2")
        secs = [p[0] for p in per]
        d = {k2: sum(p[1][k2] for p in per) / len(per) for k2 in per[0][1]}
        rows.append({**common, "task": "s-lsr1-iteration", "seconds": statistics.median(secs),
                     "seconds_min": min(secs), "repeats": len(secs), "memory": m, "sg_batch_size": None,
                     "steps": None, "extrapolated": False,
                     "accepted_fraction": sum(p[2] for p in per) / len(per),
                     "compute_seconds": d["compute_seconds"], "compute_cpu_seconds": d["compute_cpu_seconds"],
                     "overhead_seconds": d["wall_seconds"] - d["compute_seconds"],
                     "values_down": d["values_down"], "values_up": d["values_up"], "round_trips": d["round_trips"],
                     "samples": dp.n * (1 + m)})
        log(f"  workers {spec.problem} k={k} s-lsr1 iteration {rows[-1]['seconds']:.3f} s "
            f"(compute {d['compute_seconds']:.3f} s, {d['round_trips']:.1f} round trips, "
            f"{(d['values_down'] + d['values_up']) / 1e6:.2f} M values)")
        # one SG epoch: n/B steps of data-parallel mini-batch SG (timed steps extrapolated if sg_steps is set)
        per_epoch = max(1, dp.n // B)
        steps = per_epoch if cfg["sg_steps"] is None else min(int(cfg["sg_steps"]), per_epoch)
        w = w0.clone()
        dp.minibatch_loss_and_grad(w, 0, B)  # warm-up: row oracles, buffers
        c0 = dp.comm.snapshot()
        t0 = time.perf_counter()
        for step in range(steps):
            _, g = dp.minibatch_loss_and_grad(w, step, B)
            w = w - cfg["sg_lr"] * g
        wall = time.perf_counter() - t0
        d = CommStats.delta(dp.comm.snapshot(), c0)
        scale = per_epoch / steps
        rows.append({**common, "task": "sg-epoch", "seconds": wall * scale, "seconds_min": wall * scale,
                     "repeats": 1, "memory": None, "sg_batch_size": B, "steps": steps,
                     "extrapolated": steps < per_epoch, "accepted_fraction": None,
                     "compute_seconds": d["compute_seconds"] * scale,
                     "compute_cpu_seconds": d["compute_cpu_seconds"] * scale,
                     "overhead_seconds": (d["wall_seconds"] - d["compute_seconds"]) * scale,
                     "values_down": d["values_down"] * scale, "values_up": d["values_up"] * scale,
                     "round_trips": d["round_trips"] * scale, "samples": per_epoch * B})
        log(f"  workers {spec.problem} k={k} sg epoch {rows[-1]['seconds']:.3f} s ({per_epoch} steps of {B}"
            f"{f', {steps} timed' if steps < per_epoch else ''}; compute {rows[-1]['compute_seconds']:.3f} s)")
    return rows


# ----------------------------------------------------------------------------------------- run
def _versions() -> dict:
    import ray

    return {"torch": torch.__version__, "ray": ray.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "host": socket.gethostname(), "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run_scaling(spec: ScalingSpec, out_dir: str | os.PathLike, *, address: str | None = None,
                num_cpus: int | None = None, num_gpus: int | None = None, figures: bool = True,
                log: Callable[[str], None] = print) -> dict[str, Path]:
    """Run the experiments of ``spec``; returns the written files (``throughput``, ``workers``, figures)."""
    import pandas as pd

    from .io import write_parquet_atomic

    out = Path(out_dir)
    meta = {"sqn_ray.scaling": spec.to_json()}
    written: dict[str, Path] = {}
    if spec.throughput is not None:
        rows = []
        for problem in spec.problems:
            log(f"scaling '{spec.name}': throughput of {problem} ({spec.dtype}, {spec.device})")
            rows += measure_throughput(replace(spec, problem=problem), log)
        written["throughput"] = write_parquet_atomic(pd.DataFrame(rows), out / "throughput.parquet",
                                                     metadata={**meta, "sqn_ray.versions": _versions()})
    if spec.workers is not None:
        from . import ray_session

        # Ray runs workers 15 nice levels below the driver; here they are the measured computation
        os.environ.setdefault("RAY_worker_niceness", "0")
        owned = ray_session.connect(address, num_cpus=num_cpus, num_gpus=num_gpus,
                                    object_store_memory=200 * 1024**2)
        try:
            rows = []
            for problem in spec.workers["problems"] or spec.problems:
                log(f"scaling '{spec.name}': data-parallel workers {spec.workers['counts']} on {problem}")
                rows += measure_workers(replace(spec, problem=problem), log)
        finally:
            if owned:
                ray_session.shutdown()
        written["workers"] = write_parquet_atomic(pd.DataFrame(rows), out / "workers.parquet",
                                                  metadata={**meta, "sqn_ray.versions": _versions()})
    if figures:
        written.update(plot_scaling(out))
    return written


def plot_scaling(out_dir: str | os.PathLike) -> dict[str, Path]:
    """``throughput.png`` (samples/s against batch size, one line per operation) and ``workers.png`` (time of one
    SG epoch and one S-LSR1 iteration against workers, with the ideal 1/k line) from the Parquet in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    out, written = Path(out_dir), {}
    if (out / "throughput.parquet").exists():
        df = pd.read_parquet(out / "throughput.parquet")
        fig, ax = plt.subplots(figsize=(7.5, 4))
        several = df["problem"].nunique() > 1
        for (prob, op), g in df.groupby(["problem", "operation"]):
            g = g.sort_values("batch_size")
            label = f"{op} (m = {int(g['memory'].iloc[0])})" if op.endswith("batch") else op
            label = f"{prob}: {label}" if several else label
            ax.plot(g["batch_size"], g["samples_per_second"], marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="samples / second",
               title=f"one {df['device'].iloc[0]} device, {df['dtype'].iloc[0]}, "
                     f"{int(df['threads'].iloc[0])} thread(s)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
        written["throughput_figure"] = _save(plt, fig, out / "throughput.png")
    if (out / "workers.parquet").exists():
        df = pd.read_parquet(out / "workers.parquet")
        fig, ax = plt.subplots(figsize=(5, 3.6))
        several = df["problem"].nunique() > 1
        if "path" not in df:  # written before the Ray Train path was measured
            df["path"] = "actors"
        for (prob, path, task), g in df.groupby(["problem", "path", "task"]):
            g = g.sort_values("workers")
            label = f"{task} ({path})"
            ax.plot(g["workers"], g["seconds"], marker="o" if path == "train" else "s",
                    ls="-" if path == "train" else "--", label=f"{prob}: {label}" if several else label)
            base = g[g["workers"] == g["workers"].min()]
            if len(base):
                k0, t0 = int(base["workers"].iloc[0]), float(base["seconds"].iloc[0])
                ax.plot(g["workers"], t0 * k0 / g["workers"], ls=":", color="grey")
        ax.set(xscale="log", yscale="log", xlabel="workers (one shard each)", ylabel="seconds",
               title="SG epoch vs S-LSR1 iteration (dotted: 1/k)\nactors: star gather; train: all-reduce")
        ax.set_xticks(sorted(df["workers"].unique()), labels=[str(k) for k in sorted(df["workers"].unique())])
        ax.legend(fontsize=8)
        written["workers_figure"] = _save(plt, fig, out / "workers.png")
    return written


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------- CLI
def add_scaling_command(subparsers) -> argparse.ArgumentParser:
    """Add ``scaling`` to an argparse subparsers object (handler in ``handler``)."""
    from .ray_session import add_connect_arguments

    p = subparsers.add_parser(
        "scaling", help="throughput vs batch size, and SG epoch vs S-LSR1 iteration vs workers -> Parquet",
        description="Measure the poster's distributed-computing figures from a scaling file (studies/scaling.yaml): "
                    "DIR/throughput.parquet, DIR/workers.parquet and their figures.")
    p.add_argument("file", help="scaling file, e.g. studies/scaling.yaml")
    p.add_argument("--out", metavar="DIR", help="output folder (default: results/<name>)")
    p.add_argument("--smoke", action="store_true", help="apply the file's smoke: overrides (seconds)")
    add_connect_arguments(p)
    p.add_argument("--validate", action="store_true", help="check the file and stop")
    p.add_argument("--no-figures", action="store_true", help="write only the Parquet files")
    p.set_defaults(handler=cmd_scaling)
    return p


def cmd_scaling(args) -> int:
    spec = load_scaling_spec(args.file, smoke=args.smoke)  # ScalingSpecError is a ValueError: one line
    if args.validate:
        print(f"{args.file}: OK: '{spec.name}'{' (smoke)' if spec.smoke else ''} on {', '.join(spec.problems)}: "
              f"throughput {spec.throughput['batch_sizes'] if spec.throughput else '-'}, "
              f"workers {spec.workers['counts'] if spec.workers else '-'}")
        return 0
    out = Path(args.out) if args.out else Path("results") / spec.name
    written = run_scaling(spec, out, address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                          figures=not args.no_figures)
    for path in written.values():
        print(path)
    return 0

