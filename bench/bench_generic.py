"""The generic oracle (:class:`~sqn_ray.objective.AutogradOracle` on a user's ``fun(w)``), side by side with the
hand-batched toy oracle, in units of ONE autograd loss+gradient of the same ``fun`` in the same process.

(a) Whole run, Option II: ``minimize(fun, w0, "s-lsr1", memory=16, sampling="hvp", max_iters=60)`` wall time
    (probes and set-up included) / its iterations / one gradient, on the toy large net (d = 908, float32)
    written as a user writes it (slices of w into weight matrices, ``a @ W + b``, ``torch.sigmoid``,
    ``F.cross_entropy``), the same net as an ``nn.Module`` through ``module_objective_fun``, and the
    hand-batched oracle ``get_problem("toy-large", dtype=torch.float32).oracle``; one row per HVP backend.
(b) Per HVP on the 784-100-10 sigmoid MLP as an ``nn.Module`` (random data, n = 10,000, float32, m = 16):
    (gradient + 16 HVPs at a new point − one gradient) / 16 / one gradient, one row per backend.
(c) Whole run, Option I (``sampling="grad-diff"``) as in (a), one row per ``grads_backend``.
(d) Why (a) stops where it does, and what compiling would buy: aten operations dispatched by one gradient, the
    create_graph gradient and the 16-vector batched double backward of the user fun (eager autograd is bound
    by their count on a net this small, not by FLOPs), and ``torch.compile`` of gradient + 16 HVPs
    (``torch.func``: ``grad`` and ``vmap`` of ``jvp(grad)``): seconds to compile (in a fresh inductor cache
    unless ``--warm-cache``), the compiled call's cost, and the run length from which it would pay. Opt-in
    (``--only d``): the compile takes about a minute on 2 cores.

Each figure is the median over seeds/rounds; gradients are timed around every run (their mean over 0.3 s before
and after it), so machine noise hits both alike.

    python bench/bench_generic.py            # all three (a few minutes on 2 cores)
    python bench/bench_generic.py --quick    # fewer seeds and rounds
    python bench/bench_generic.py --only a   # one part (a, b or c; d only when asked for)
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from sqn_ray import minimize, module_objective_fun
from sqn_ray.objective import FUNCTION_HVP_BACKENDS, AutogradOracle
from sqn_ray.problems import get_problem
from sqn_ray.problems.mlp import MLPOracle
from sqn_ray.problems.toy import toy_user_fun
from sqn_ray.problems.toy import toy_data, toy_sizes

from _timing import mean_seconds, seconds, sync  # noqa: E402 - bench/ is this script's own folder

#: seconds of gradients timed before and after each whole run: the unit averages over a stretch comparable to the
#: run's own (a 60-iteration run takes about half a second here)
UNIT_WINDOW = 0.3


def gradient_call(fun, w):
    """One autograd loss + gradient of ``fun`` at w (the unit)."""
    def call():
        x = w.detach().requires_grad_(True)
        torch.autograd.grad(fun(x), x)
    return call


# ----------------------------------------------------------------------------------------------- models
def user_toy_fun(dtype, device="cpu"):
    """The toy large net as a user writes it: slices of w, ``a @ W + b``, sigmoid, cross-entropy."""
    return toy_user_fun("large", dtype, device)


def sigmoid_net(sizes) -> torch.nn.Sequential:
    layers = []
    for p, q in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(p, q), torch.nn.Sigmoid()]
    return torch.nn.Sequential(*layers[:-1])


def module_toy_fun(dtype, device="cpu"):
    X, labels = toy_data(dtype, device)
    net = sigmoid_net(toy_sizes("large")).to(dtype=dtype, device=device)
    return module_objective_fun(net, F.cross_entropy, X, labels)[0]


# --------------------------------------------------------------------------------------------- (a), (c)
def whole_run(fun, unit_fun, w0, sampling: str, iters: int, device, **backend) -> tuple[float, float, int]:
    """(seconds per iteration of one whole minimize call of ``fun``, seconds per gradient of ``unit_fun``
    around it, iterations)."""
    grad = gradient_call(unit_fun, w0)
    before = mean_seconds(grad, device, UNIT_WINDOW, warmup=True)
    sync(device)
    t0 = time.perf_counter()
    result = minimize(fun, w0, "s-lsr1", memory=16, sampling=sampling, max_iters=iters, **backend)
    sync(device)
    run = time.perf_counter() - t0
    after = mean_seconds(grad, device, UNIT_WINDOW)
    return run / max(result.nit, 1), (before + after) / 2, result.nit


def part_whole_run(sampling: str, backends: list[str], seeds: int, iters: int, device) -> None:
    dtype = torch.float32
    problem = get_problem("toy-large", dtype=dtype, device=device)
    user, module = user_toy_fun(dtype, device), module_toy_fun(dtype, device)
    key = "hvp_backend" if sampling == "hvp" else "grads_backend"
    # (name, what minimize gets, the fun whose gradient is the unit, backend keyword); the hand-batched oracle's
    # unit is the user-style fun of the same F
    rows = [("hand-batched oracle", problem.oracle, user, {})]
    rows += [(f"user fun, {key}={b}", user, user, {key: b}) for b in backends]
    rows += [(f"nn.Module, {key}=auto", module, module, {key: "auto"})]
    for _ in range(2):  # warm-up: first-call costs of the library, not of a run
        minimize(user, problem.init(0), "s-lsr1", memory=16, sampling=sampling, max_iters=3)
    print(f"\n({'a' if sampling == 'hvp' else 'c'}) whole S-LSR1 run, m = 16, sampling={sampling!r}, "
          f"{iters} iterations, toy large d = {problem.dim}, float32, {torch.get_num_threads()} thread(s); "
          f"median over {seeds} seeds")
    print(f"| {'case':40s} | iteration / gradient | gradient ms | iterations |")
    print(f"|{'-' * 42}|---------------------:|------------:|-----------:|")
    for name, fun, unit_fun, kw in rows:
        ratios, grad_ms, nits = [], [], []
        for seed in range(seeds):
            per_iter, grad, nit = whole_run(fun, unit_fun, problem.init(seed), sampling, iters, device, **kw)
            ratios.append(per_iter / grad)
            grad_ms.append(1e3 * grad)
            nits.append(nit)
        print(f"| {name:40s} | {statistics.median(ratios):20.2f} | {statistics.median(grad_ms):11.3f} | "
              f"{statistics.median(nits):10.0f} |", flush=True)


# -------------------------------------------------------------------------------------------------- (b)
def part_per_hvp(backends: list[str], rounds: int, n: int, m: int, device) -> None:
    dtype = torch.float32
    sizes = (784, 100, 10)
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(n, 784, generator=gen).to(device)
    labels = torch.randint(0, 10, (n,), generator=gen).to(device)
    torch.manual_seed(0)
    net = sigmoid_net(sizes).to(device)
    fun, w = module_objective_fun(net, F.cross_entropy, X, labels)
    d = w.numel()
    V = torch.randn(d, m, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    points = [w.clone(), w.clone()]
    state = {"i": 0}

    def fresh():  # a point the oracle did not see last call (so no cache serves it)
        state["i"] ^= 1
        return points[state["i"]]

    def grad_hvps(oracle):
        def call():
            x = fresh()
            oracle.loss_and_grad(x)
            oracle.hvps(x, V)
        return call

    oracles = {f"nn.Module, hvp_backend={b}": AutogradOracle(fun, d, dtype, device, hvp_backend=b) for b in backends}
    oracles["hand-batched MLPOracle (flat layout)"] = MLPOracle(sizes, "sigmoid", X, labels, dtype, device)
    unit = gradient_call(fun, w)
    for oracle in oracles.values():  # warm-up (and 'auto' probes) outside the timings
        grad_hvps(oracle)()
    ratios = {name: [] for name in oracles}
    base = []
    for _ in range(rounds):
        g = seconds(unit, device, 3)
        base.append(g)
        for name, oracle in oracles.items():
            ratios[name].append((seconds(grad_hvps(oracle), device, 2) - g) / m / g)
    print(f"\n(b) per HVP, 784-100-10 sigmoid MLP as nn.Module, n = {n}, d = {d}, m = {m}, float32, "
          f"{torch.get_num_threads()} thread(s); (gradient + {m} HVPs − gradient) / {m} / gradient, "
          f"median of {rounds} rounds; gradient = {1e3 * statistics.median(base):.1f} ms")
    print(f"| {'case':44s} | per HVP | picked |")
    print(f"|{'-' * 46}|--------:|--------|")
    for name, oracle in oracles.items():
        picked = getattr(oracle, "hvp_backend", "-")
        print(f"| {name:44s} | {statistics.median(ratios[name]):7.2f} | {picked} |", flush=True)


# -------------------------------------------------------------------------------------------------- (d)
def aten_ops(fn) -> int:
    """How many aten operations one call of ``fn`` dispatches (torch.profiler, CPU)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def part_bound_and_compile(m: int, rounds: int, warm_cache: bool, device) -> None:
    dtype = torch.float32
    problem = get_problem("toy-large", dtype=dtype, device=device)
    fun, w = user_toy_fun(dtype, device), problem.init(0)
    V = torch.randn(problem.dim, m, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    VT = V.T.contiguous()
    unit = gradient_call(fun, w)

    def graph():
        x = w.detach().requires_grad_(True)
        return x, torch.autograd.grad(fun(x), x, create_graph=True)[0]

    x, g = graph()

    def double_backward():
        torch.autograd.grad(g, x, grad_outputs=VT, retain_graph=True, is_grads_batched=True)

    def eager_block():  # what hvp_backend="batched" does at a new point
        x, g = graph()
        torch.autograd.grad(g, x, grad_outputs=VT, is_grads_batched=True)

    grad_fn = torch.func.grad(fun)

    def block(w, V):
        hvp = torch.func.vmap(lambda v: torch.func.jvp(grad_fn, (w,), (v,))[1], in_dims=1, out_dims=1)
        return grad_fn(w), hvp(V)

    print(f"\n(d) the bound, toy large d = {problem.dim} as a user fun, m = {m}, float32, "
          f"{torch.get_num_threads()} thread(s)")
    print("| call | aten ops | / gradient's | ms | / gradient |")
    print("|---|---:|---:|---:|---:|")
    g_ms, base = 1e3 * seconds(unit, device, 30, warmup=True), aten_ops(unit)
    print(f"| gradient (the unit) | {base} | 1.00 | {g_ms:.2f} | 1.00 |")
    for name, fn in [("create_graph gradient", graph),
                     (f"batched double backward, {m} vectors", double_backward),
                     (f"create_graph gradient + {m} HVPs (eager, batched)", eager_block)]:
        ms = 1e3 * seconds(fn, device, 30, warmup=True)
        ops = aten_ops(fn)
        print(f"| {name} | {ops} | {ops / base:.2f} | {ms:.2f} | {ms / g_ms:.2f} |", flush=True)
    cache = None if warm_cache else tempfile.mkdtemp(prefix="sqn-ray-inductor-")
    if cache is not None:  # a cold compile, as a user's first run (or a fresh Ray worker) pays it
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    compiled = torch.compile(block, dynamic=False)
    t0 = time.perf_counter()
    compiled(w, V)
    sync(device)
    compile_s = time.perf_counter() - t0
    eager, fast, units = [], [], []
    for _ in range(rounds):
        unit_s = seconds(unit, device, 15)
        eager.append(seconds(eager_block, device, 15) / unit_s)
        fast.append(seconds(lambda: compiled(w, V), device, 15) / unit_s)
        units.append(unit_s)
    eager_r, fast_r = statistics.median(eager), statistics.median(fast)
    saved_s = (eager_r - fast_r) * statistics.median(units)
    pays = f"{compile_s / saved_s:,.0f}" if saved_s > 0 else "never"
    print(f"\ntorch.compile of gradient + {m} HVPs ({'warm' if warm_cache else 'fresh'} inductor cache): "
          f"{compile_s:.1f} s to compile; a call costs {fast_r:.2f} gradients against {eager_r:.2f} eager "
          f"(median of {rounds} rounds); it pays from about {pays} iterations of one run")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer seeds and rounds")
    ap.add_argument("--only", choices=("a", "b", "c", "d"), action="append", help="run only these parts")
    ap.add_argument("--warm-cache", action="store_true", help="(d): keep inductor's cache (default: a fresh one)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--mlp-n", type=int, default=10_000)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    parts = args.only or ["a", "b", "c"]
    backends = list(FUNCTION_HVP_BACKENDS)
    print(f"torch {torch.__version__}, device {device}")
    if "a" in parts:
        part_whole_run("hvp", backends, 3 if args.quick else 5, args.iters, device)
    if "b" in parts:
        part_per_hvp([b for b in backends if b != "auto"] + ["auto"], 3 if args.quick else 5, args.mlp_n, 16, device)
    if "c" in parts:
        part_whole_run("grad-diff", ["auto", "vmap", "loop"], 3 if args.quick else 5, args.iters, device)
    if "d" in parts:
        part_bound_and_compile(16, 3 if args.quick else 5, args.warm_cache, device)


if __name__ == "__main__":
    main()
