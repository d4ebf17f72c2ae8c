"""One S-LSR1 iteration (m = 16, Option II) on the 60k MNIST training set: 2 Ray workers vs 1 worker.

The objective is ``mnist-mlp`` (784-100-10, tanh, d = 79,510, float32 by default) as a
:class:`sqn_ray.distributed.DataParallelOracle`: the 60,000 training images split into contiguous shards, one
per Ray actor, each actor one CPU and one torch thread, each building its shard from the local MNIST cache.
The driver uses one torch thread (its share of an iteration is small; more threads would spin on
the workers' cores). Both configurations stay up side by side (a local Ray with 3 logical CPUs; only one computes
at a time) and are timed in interleaved rounds: in each round both run the same ``sqn_ray.minimize(..., "s-lsr1",
memory=16, sampling="hvp")`` from the same point with the same seed (same trajectory), and the time per iteration is
the mean over the timed iterations (the initial gradient at w0 is not part of an iteration). Reported: median
seconds per iteration for each configuration, the median of the per-round ratios t(2 workers) / t(1 worker)
(target ≤ 0.65), the slowest worker's compute time and the rest (communication, scheduling, driver), and the
values sent per iteration.

    python bench/bench_distributed.py             # 3 rounds of 2 iterations (~2 minutes on 2 cores)
    python bench/bench_distributed.py --quick     # 2 rounds of 1 iteration
    python bench/bench_distributed.py --synthetic # random 60k x 784 data instead of MNIST (no cache needed)

Needs MNIST in the cache (``sqn-ray data fetch mnist``) unless --synthetic.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
# Ray runs worker processes 15 nice levels below the driver by default; here they ARE the computation, so give
# them the driver's priority (otherwise any other process on the machine starves the 2-worker configuration)
os.environ.setdefault("RAY_worker_niceness", "0")

import torch  # noqa: E402

import sqn_ray  # noqa: E402
from sqn_ray.distributed import CommStats, DataParallelOracle  # noqa: E402


def timed_run(dp, w0, iterations: int, memory: int, seed: int):
    """Seconds per S-LSR1 iteration (mean over ``iterations``), and the per-iteration compute/comm deltas."""
    snaps = []

    def cb(x, record):
        snaps.append((time.perf_counter(), dp.comm.snapshot(), bool(record["accepted"]), time.process_time()))

    sqn_ray.minimize(dp, w0.clone(), "s-lsr1", memory=memory, sampling="hvp", seed=seed, max_iters=iterations,
                     callback=cb)
    (t0, c0, _, p0), (t1, c1, _, p1) = snaps[0], snaps[-1]
    d = CommStats.delta(c1, c0)
    n = len(snaps) - 1
    d["driver_cpu_seconds"] = p1 - p0
    return (t1 - t0) / n, {k: v / n for k, v in d.items()}, sum(s[2] for s in snaps[1:]) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 1 iteration")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--iterations", type=int, default=None, help="timed S-LSR1 iterations per run")
    ap.add_argument("--memory", type=int, default=16)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--synthetic", action="store_true", help="random data of MNIST's shape (no cache needed)")
    ap.add_argument("--chunk-size", type=int, default=10_000)
    args = ap.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 3)
    iterations = args.iterations or (1 if args.quick else 2)

    if args.synthetic:
        from sqn_ray.scaling import SyntheticShards

        builder = SyntheticShards(n=60_000, dtype=args.dtype, chunk_size=args.chunk_size)
        data = "synthetic 60,000 x 784 Gaussian inputs, random labels"
    else:
        from sqn_ray.data import verify
        from sqn_ray.problems.mnist import MNISTShards

        if set(verify("mnist").values()) != {"ok"}:
            print("MNIST is not in the cache: run `sqn-ray data fetch mnist` (or use --synthetic)", file=sys.stderr)
            return 2
        builder = MNISTShards(name="mnist-mlp", dtype=args.dtype, chunk_size=args.chunk_size)
        data = "MNIST 60,000 training images"


    # The driver's own work per iteration (sampling S, Gram matrices, the TR solve) is small; with torch's default
    # of one thread per core its thread pool would spin on the very cores the two workers compute on.
    torch.set_num_threads(1)
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    from sqn_ray import ray_session

    ray_session.connect(num_cpus=3, object_store_memory=200 * 1024**2)  # embedded: loopback, token auth
    try:
        dps = {k: DataParallelOracle(builder, k, cpus_per_worker=1, threads_per_worker=1) for k in (1, 2)}
        from sqn_ray.problems.mnist import lecun_init

        w0 = lecun_init("mlp", getattr(torch, args.dtype), "cpu")(0)
        print(f"mnist-mlp d = {dps[1].dim}, {data}, {args.dtype}; S-LSR1 m = {args.memory}, Option II; "
              f"{rounds} rounds x {iterations} timed iteration(s); workers: 1 CPU, 1 thread each")
        for k, dp in dps.items():
            print(f"  {k} worker(s): shards {dp.shard_sizes}, built in "
                  f"{max(i['build_seconds'] for i in dp.worker_info):.1f} s")
        timed_run(dps[2], w0, 1, args.memory, 0)  # warm-up: buffers, allocator
        timed_run(dps[1], w0, 1, args.memory, 0)
        times, cpu = {1: [], 2: []}, {1: [], 2: []}
        ratios, cpu_ratios, detail = [], [], {}
        for r in range(rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            got, got_cpu = {}, {}
            for k in order:
                got[k], detail[k], acc = timed_run(dps[k], w0, iterations, args.memory, 0)
                # the iteration's critical path in CPU time: slowest worker per call + the driver's own CPU time
                got_cpu[k] = detail[k]["compute_cpu_seconds"] + detail[k]["driver_cpu_seconds"]
                times[k].append(got[k])
                cpu[k].append(got_cpu[k])
            ratios.append(got[2] / got[1])
            cpu_ratios.append(got_cpu[2] / got_cpu[1])
            print(f"  round {r + 1}: 1 worker {got[1]:.2f} s/iter, 2 workers {got[2]:.2f} s/iter, ratio "
                  f"{ratios[-1]:.3f}  (CPU-time critical path {got_cpu[1]:.2f} / {got_cpu[2]:.2f} s, ratio "
                  f"{cpu_ratios[-1]:.3f})")
        for k in (1, 2):
            d = detail[k]
            print(f"  {k} worker(s): median {statistics.median(times[k]):.2f} s/iter, best {min(times[k]):.2f}; "
                  f"last round: slowest-worker compute {d['compute_seconds']:.2f} s wall / "
                  f"{d['compute_cpu_seconds']:.2f} s CPU, driver CPU {d['driver_cpu_seconds']:.2f} s, "
                  f"calls' other time {d['wall_seconds'] - d['compute_seconds']:.3f} s; {d['round_trips']:.0f} round "
                  f"trips, {d['values_down'] / 1e6:.2f} M values down, {d['values_up'] / 1e6:.2f} M up per iteration")
        ratio = statistics.median(ratios)
        best = min(times[2]) / min(times[1])
        print(f"  load average before / after: {load0} / {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
              f"(other processes on the machine compete for its {os.cpu_count()} cores)")
        print(f"ratio t(2 workers) / t(1 worker): best rounds {best:.3f}, median of per-round ratios {ratio:.3f}, "
              f"CPU-time critical path {statistics.median(cpu_ratios):.3f} (target <= 0.65)")
        for dp in dps.values():
            dp.close()
    finally:
        ray_session.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
