"""Cost of the oracles in units of ONE autograd loss+gradient of the same net in the same process.

Nets: the toy "large" net (sizes [2, 10, 20, 20, 10, 2, 2], d = 908, n = 100) in float64 and float32, and
an MLP 784-100-10 (d = 79,510) on n = 10,000 random inputs in float32. For each, medians over interleaved
rounds of (time of an operation) / (time of the baseline in the same round):

* ``grad``           MLPOracle.loss_and_grad at a new point (no cached state)
* ``grad+m HVPs``    loss_and_grad(w) then hvps(w, V) with V (d, m): one sampled-QN iteration's oracle work
* ``m HVPs, cold``   hvps(w, V) at a new point (includes the forward/backward pass it needs)
* ``Option I``       grads(W) at m points
* the same for AutogradOracle (objective.py) with its "batched" and "loop" HVP backends and its "vmap" and
  "loop" Option I backends.

Every timed call gets a point it did not see last time (two distinct tensors, alternated and kept alive),
so no oracle can serve it from its per-point cache. ``per HVP`` columns divide the HVP part by m.

    python bench/bench_oracle.py            # full run (a few minutes on 2 cores)
    python bench/bench_oracle.py --quick    # fewer rounds, smaller MLP batch check
"""
from __future__ import annotations

import argparse
import statistics

import torch

from sqn_ray.objective import AutogradOracle
from sqn_ray.problems.mlp import MLPOracle, mlp_loss, param_count
from sqn_ray.problems.toy import TOY_ACTIVATION, toy_data, toy_sizes

from _timing import mean_seconds  # noqa: E402 - bench/ is this script's own folder

CPU = torch.device("cpu")


def interleaved_ratios(baseline, ops: dict, rounds: int, min_time: float) -> tuple[float, dict]:
    """Median baseline seconds and median per-round ratio op/baseline for every op."""
    base_times, ratios = [], {name: [] for name in ops}
    for _ in range(rounds):
        tb = mean_seconds(baseline, CPU, min_time, warmup=True)
        base_times.append(tb)
        for name, fn in ops.items():
            ratios[name].append(mean_seconds(fn, CPU, min_time, warmup=True) / tb)
    return statistics.median(base_times), {k: statistics.median(v) for k, v in ratios.items()}


def alternating(points):
    """A callable returning the given tensors in turn (so consecutive calls never see the same point)."""
    state = {"i": 0}

    def nxt():
        state["i"] ^= 1
        return points[state["i"]]
    return nxt


def make_ops(sizes, X, labels, dtype, m: int, include_autograd: bool):
    """Baseline and timed operations for one net."""
    fun = lambda w: mlp_loss(w, sizes, TOY_ACTIVATION, X, labels)  # noqa: E731 - the reference F
    d = param_count(sizes)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(d, generator=gen, dtype=torch.float64).to(dtype)
    V = torch.randn(d, m, generator=gen, dtype=torch.float64).to(dtype)
    W = (w.unsqueeze(1) + 1e-2 * V).contiguous()  # Option I points w + r·s_i
    nxt = alternating([w.clone(), w.clone()])

    def baseline():
        x = nxt().detach().requires_grad_(True)
        f = fun(x)
        (g,) = torch.autograd.grad(f, x)
        return f, g

    mlp = MLPOracle(sizes, TOY_ACTIVATION, X, labels, dtype)

    def grad_hvps(oracle):
        def run():
            x = nxt()
            oracle.loss_and_grad(x)
            return oracle.hvps(x, V)
        return run

    ops = {
        "MLPOracle grad": lambda: mlp.loss_and_grad(nxt()),
        f"MLPOracle grad+{m} HVPs": grad_hvps(mlp),
        f"MLPOracle {m} HVPs, cold": lambda: mlp.hvps(nxt(), V),
        f"MLPOracle Option I, {m} grads": lambda: mlp.grads(W),
    }
    if include_autograd:
        for backend in ("batched", "loop"):
            ops[f"AutogradOracle[{backend}] grad+{m} HVPs"] = grad_hvps(
                AutogradOracle(fun, d, dtype, hvp_backend=backend))
        for backend in ("vmap", "loop"):
            ops[f"AutogradOracle[{backend}] Option I, {m} grads"] = (
                lambda o=AutogradOracle(fun, d, dtype, grads_backend=backend): o.grads(W))  # noqa: B008 - bound per backend
    return baseline, ops


def report(title: str, base_s: float, ratios: dict, m: int) -> None:
    print(f"\n{title}\n  baseline: autograd loss+grad = {base_s * 1e3:.3f} ms (ratio 1)")
    grad = ratios.get("MLPOracle grad")
    for name, r in ratios.items():
        extra = ""
        if "grad+" in name and grad is not None and name.startswith("MLPOracle"):
            extra = f"   (HVP part per HVP: {(r - grad) / m:.3f})"
        elif "grad+" in name:
            extra = f"   (HVP part per HVP, taking its grad as 1: {(r - 1) / m:.3f})"
        elif "HVPs, cold" in name or "Option I" in name:
            extra = f"   (per vector: {r / m:.3f})"
        print(f"  {name:<42s} {r:7.2f}{extra}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    ap.add_argument("--m", type=int, default=16, help="directions / points per block (default 16)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--skip-toy", action="store_true", help="only the MLP")
    ap.add_argument("--skip-mlp", action="store_true", help="only the toy net")
    ap.add_argument("--mlp-n", type=int, default=10_000, help="MLP batch size (default 10000)")
    ap.add_argument("--mlp-autograd", action=argparse.BooleanOptionalAction, default=True,
                    help="also time AutogradOracle on the MLP (slow)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rounds = 3 if args.quick else 9
    m = args.m
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), m = {m}, {rounds} rounds; "
          "numbers are (time of op) / (time of one autograd loss+grad), medians of interleaved rounds")

    sizes = toy_sizes("large")
    for dtype in () if args.skip_toy else (torch.float64, torch.float32):
        X, labels = toy_data(dtype)
        baseline, ops = make_ops(sizes, X, labels, dtype, m, include_autograd=True)
        base_s, ratios = interleaved_ratios(baseline, ops, rounds, min_time=0.05 if args.quick else 0.1)
        report(f"toy large net {list(sizes)}, d = {param_count(sizes)}, n = {len(X)}, {dtype}", base_s, ratios, m)

    if not args.skip_mlp:
        sizes, n = [784, 100, 10], args.mlp_n
        gen = torch.Generator().manual_seed(1)
        X = torch.randn(n, 784, generator=gen)
        labels = torch.randint(0, 10, (n,), generator=gen)
        baseline, ops = make_ops(sizes, X, labels, torch.float32, m, include_autograd=args.mlp_autograd)
        base_s, ratios = interleaved_ratios(baseline, ops, 3 if args.quick else 7, min_time=0.0)
        report(f"MLP {sizes}, d = {param_count(sizes)}, n = {n}, float32 (sigmoid)", base_s, ratios, m)


if __name__ == "__main__":
    main()
