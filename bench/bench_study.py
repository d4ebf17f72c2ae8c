"""Benchmark: a Ray Tune study vs the same trials one after another in one process.

    python bench/bench_study.py [--trials 24] [--seconds 2.5] [--num-cpus 2] [--method gd] [--problem toy-large]

The trials: ``--method`` on ``--problem`` with ``--trials`` seeds, no stop rule, a fixed number of iterations
calibrated so that one trial takes about ``--seconds`` (accuracy evaluated every iteration, as a study does).
The default, gradient descent on the toy net, never converges early, so every trial does the same work.

* serial: the same trials in this process, one thread, one after another (problem built once, as an actor does),
  half of them before the study and half after, so that a machine drifting in speed (a shared VM does, by ±10 %
  within minutes) biases neither side;
* study: ``run_study`` on an embedded Ray with ``--num-cpus`` CPUs, wall time from before ``ray.init`` to after
  ``ray.shutdown`` (Ray start included), Parquet written as usual.

First the machine's parallel capacity is measured (the same trial in one process, then in ``--num-cpus`` processes
at once): on a shared VM two "cores" may give far less than twice the throughput, which bounds any ratio.

Printed: both wall times and their ratio (goal ≤ 0.65 on 2 cores), and the platform's per-trial overhead:
the mean idle gap between consecutive trials on the same actor (scheduling, reset, reporting; goal < 0.5 s),
plus the all-in figure (study wall × CPUs − Σ trial time) / trials, which also charges Ray start and actor start-up
to the trials.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_trial(problem, method, seed, iters):
    import sqn_ray

    def callback(x=None, record=None):
        problem.accuracy(x)
        return False

    return sqn_ray.minimize(problem.oracle, problem.init(seed), method, max_iters=iters, callback=callback, seed=seed)


PROBE = """
import sys, time, torch
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
torch.set_num_threads(1)
from bench_study import run_trial
from sqn_ray.problems import get_problem
p = get_problem({problem!r})
run_trial(p, {method!r}, 0, 20)
t = time.perf_counter(); run_trial(p, {method!r}, 0, {iters}); print(time.perf_counter() - t)
"""


def parallel_capacity(problem: str, method: str, iters: int, n: int) -> tuple[float, float]:
    """(one trial alone, the same trial in n processes at once): seconds each."""
    import subprocess

    code = PROBE.format(root=str(Path(__file__).resolve().parents[1]), bench=str(Path(__file__).parent),
                        problem=problem, method=method, iters=iters)

    def launch(k):
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(k)]
        return [float(p.communicate()[0]) for p in procs]

    alone = launch(1)[0]
    together = launch(n)
    return alone, sum(together) / len(together)


def run_serial(problem, method, seeds, iters):
    t0 = time.perf_counter()
    times = []
    for seed in seeds:
        t = time.perf_counter()
        run_trial(problem, method, seed, iters)
        times.append(time.perf_counter() - t)
    return time.perf_counter() - t0, times


def run_ray(study, num_cpus):
    import pandas as pd

    from sqn_ray.study.runner import run_study

    with tempfile.TemporaryDirectory() as out:
        t, t_wall0 = time.perf_counter(), time.time()
        outcome = run_study(study, out, progress=False, num_cpus=num_cpus)
        wall = time.perf_counter() - t
        trials = pd.read_parquet(Path(out) / "trials.parquet")
    assert outcome.done == len(trials) == study.num_trials, outcome
    outcome.extra["first_trial_after"] = trials["started_at"].min() - t_wall0
    return wall, outcome, trials


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=2.5, help="target length of one trial")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--method", default="gd")
    ap.add_argument("--problem", default="toy-large")
    ap.add_argument("--iters", type=int, help="iterations per trial (default: calibrated to --seconds)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat probe, serial and study; report medians")
    args = ap.parse_args(argv)

    import torch

    from sqn_ray.problems import get_problem
    from sqn_ray.study.spec import parse_study

    torch.set_num_threads(1)
    problem = get_problem(args.problem)
    iters = args.iters
    if iters is None:  # calibrate: a short probe, then scale (trials must be >= 2 s)
        run_trial(problem, args.method, 0, 20)
        t = time.perf_counter()
        run_trial(problem, args.method, 0, 200)
        per_iter = (time.perf_counter() - t) / 200
        iters = max(50, math.ceil(args.seconds / per_iter))
    print(f"{args.trials} trials: {args.method} on {args.problem}, {iters} iterations each, seeds 0..{args.trials - 1}")
    study = parse_study({
        "name": "bench", "problems": [args.problem], "methods": {args.method: {}}, "seeds": args.trials,
        "budget": {"iterations": iters}, "resources": {"cpu": 1}, "report_interval": 1.0,
    }, source="bench")
    ratios, gaps_all = [], []
    for r in range(args.rounds):
        if args.rounds > 1:
            print(f"-- round {r + 1}/{args.rounds}")
        alone, together = parallel_capacity(args.problem, args.method, iters, args.num_cpus)
        capacity = args.num_cpus * alone / together
        print(f"machine: one trial alone {alone:.2f} s, {args.num_cpus} at once {together:.2f} s each -> "
              f"{args.num_cpus} processes give {capacity:.2f}x the throughput of one (ideal {args.num_cpus})")
        half = args.trials // 2
        before, before_times = run_serial(problem, args.method, range(half), iters)
        wall, outcome, trials = run_ray(study, args.num_cpus)
        after, after_times = run_serial(problem, args.method, range(half, args.trials), iters)
        serial, serial_times = before + after, before_times + after_times
        print(f"serial, one process, 1 thread: {serial:7.2f} s  (trial min/median/max "
              f"{min(serial_times):.2f}/{statistics.median(serial_times):.2f}/{max(serial_times):.2f} s; "
              f"{half} trials before the study, {args.trials - half} after)")
        gaps = []
        for _, g in trials.sort_values("started_at").groupby(["node_id", "pid"]):
            gaps += list(g["started_at"].to_numpy()[1:] - g["finished_at"].to_numpy()[:-1])
        gap = sum(gaps) / len(gaps) if gaps else float("nan")
        all_in = (wall * args.num_cpus - trials["trial_time"].sum()) / args.trials
        print(f"Ray study, {args.num_cpus} CPUs:          {wall:7.2f} s  (Ray start {outcome.ray_start_time:.2f} s; "
              f"first trial after {outcome.extra['first_trial_after']:.2f} s; trial min/median/max "
              f"{trials.trial_time.min():.2f}/{trials.trial_time.median():.2f}/{trials.trial_time.max():.2f} s; "
              f"actors {trials.groupby(['node_id', 'pid']).ngroups})")
        print(f"ratio study / serial:           {wall / serial:7.3f}   (goal <= 0.65; with this machine's "
              f"parallel throughput the bound is ~{1 / capacity:.2f} before start-up)")
        print(f"per-trial overhead, gap between trials on an actor: {gap:.3f} s (goal < 0.5 s; mean of {len(gaps)})")
        print(f"all-in overhead per trial, (wall x CPUs - sum trial time) / trials: {all_in:.3f} s "
              "(charges Ray and actor start-up to the trials)")
        ratios.append(wall / serial)
        gaps_all.append(gap)
    if args.rounds > 1:
        print(f"== median over {args.rounds} rounds: ratio {statistics.median(ratios):.3f}, "
              f"per-trial overhead {statistics.median(gaps_all):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
