"""Cost of one sampled quasi-Newton iteration, as a ratio to one gradient measured in the same process.

    python bench/bench_iteration.py [--quick] [--device cuda]

Baseline: one autograd loss + gradient of the problem's plain definition (``problem.fun``), the unit the
performance notes use. Iterations are timed one by one on a real trajectory (toy large net, d = 908, from
seed 0), interleaved with baseline gradients so machine noise hits both alike; medians are reported, split
into the phases the optimizer records (pairs, model + TR/direction, trial evaluation, new gradient).
Rejected trust-region steps skip the new gradient, so accepted and rejected iterations are reported apart.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from sqn_ray import get_method, validate_options
from sqn_ray.objective import Objective
from sqn_ray.problems import get_problem


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def autograd_gradient(problem, w):
    x = w.detach().requires_grad_(True)
    f = problem.fun(x)
    torch.autograd.grad(f, x)


def bench_method(problem, method: str, options: dict, iters: int, device) -> dict:
    objective = Objective(problem.oracle)
    runner = get_method(method).build(validate_options(method, **options), objective)
    state = runner.start(objective, problem.init(0))
    w_grad = problem.init(1)
    for _ in range(5):  # warm-up: probes, allocator, caches
        autograd_gradient(problem, w_grad)
    state = runner.advance(objective, state).state
    accepted, rejected, base, phases = [], [], [], {"t_pairs": [], "t_model": [], "t_search": [], "t_grad": []}
    for _ in range(iters):
        base.append(time_call(lambda: autograd_gradient(problem, w_grad), device))
        holder = {}
        dt = time_call(lambda: holder.update(out=runner.advance(objective, state)), device)  # noqa: B023 - called at once
        state, fields, _ = holder["out"]
        (accepted if fields["accepted"] else rejected).append(dt)
        for k in phases:
            phases[k].append(fields[k])
    g = statistics.median(base)
    every = accepted + rejected
    return {"gradient_ms": 1e3 * g,
            "iteration_all": statistics.median(every) / g,
            "iteration_accepted": statistics.median(accepted) / g if accepted else float("nan"),
            "iteration_rejected": statistics.median(rejected) / g if rejected else float("nan"),
            "accepted_fraction": len(accepted) / len(every),
            **{k: statistics.median(v) / g for k, v in phases.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (CI-sized)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (toy nets are fastest on one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    iters = 40 if args.quick else 200
    cases = [("s-lsr1", {"memory": 16, "sampling": "hvp"}), ("s-lsr1", {"memory": 16, "sampling": "grad-diff"}),
             ("s-lsr1", {"memory": 16, "sampling": "hvp", "tr_solver": "exact"}),
             ("s-lbfgs", {"memory": 16, "sampling": "hvp"}), ("lsr1", {"memory": 16}), ("lbfgs", {"memory": 16})]
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), {iters} iterations each")
    print(f"{'problem':10s} {'dtype':8s} {'method':8s} {'options':34s} {'grad ms':>8s} {'iter':>6s} "
          f"{'accepted':>8s} {'rejected':>8s} {'pairs':>6s} {'model':>6s} {'trial':>6s} {'grad':>6s}"
          "   (ratios to one autograd gradient)")
    for dtype in (torch.float64, torch.float32):
        problem = get_problem("toy-large", dtype=dtype, device=device)
        for method, options in cases:
            r = bench_method(problem, method, options, iters, device)
            opts = ",".join(f"{k}={v}" for k, v in options.items())
            print(f"{'toy-large':10s} {str(dtype).removeprefix('torch.'):8s} {method:8s} {opts:34s} "
                  f"{r['gradient_ms']:8.3f} {r['iteration_all']:6.2f} {r['iteration_accepted']:8.2f} "
                  f"{r['iteration_rejected']:8.2f} {r['t_pairs']:6.2f} {r['t_model']:6.2f} {r['t_search']:6.2f} "
                  f"{r['t_grad']:6.2f}", flush=True)


if __name__ == "__main__":
    main()
