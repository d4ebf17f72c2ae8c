"""One prepared device check: gradient + m HVPs, as a ratio to one gradient, on four models, plus one S-LSR1 iteration.

    python bench/gpu_check.py                       # on the GPU (under 5 minutes on one H200)
    python bench/gpu_check.py --device cpu --quick  # the CPU smoke run (under a minute)

Needs only torch (numpy optional): it runs from the repository root without the package installed and without
pandas or Ray, importing only ``sqn_ray.objective`` and the method registry (no problem library: the models and
their random data are built here, no downloads).

Models (float32, random data): the toy large net written as a plain ``fun(w)`` (d = 908, n = 100), the MNIST MLP
784-100-10 (sigmoid, n = 10,000), the MNIST CNN of ``mnist-cnn`` (n = 10,000) and a ResNet-18 (CIFAR-style stem,
11.2M parameters, batch 128 of 3×32×32) — all but the toy through ``module_objective_fun``.

For each model and m ∈ {1, 4, 16, 64}: (time of loss + gradient + m HVPs at a new point) / (time of one plain
autograd loss + gradient), for the generic oracle's backends ``batched`` (one batched double backward,
chunked by ``max_hvp_batch="auto"``), ``loop`` (m backward passes over one graph) and ``jvp`` (vmap of
forward-over-reverse). Then one S-LSR1 iteration (m = 16, Option II, ``hvp_backend="auto"``; median of a few
iterations after one, so the probe is excluded) / one gradient. Medians of synchronised timings.
The poster's claim to check: on a GPU the m HVPs run "simultaneously"; goal: gradient + 16 HVPs ≤ 3 gradients
on the ResNet-sized model.
"""
from __future__ import annotations

import argparse
import importlib
import pathlib
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _import_core():
    """sqn_ray.objective and the registry, without running sqn_ray/__init__ (which needs pandas) when it fails."""
    sys.path.insert(0, str(ROOT))
    try:
        importlib.import_module("sqn_ray")
    except ImportError:  # no pandas here: a bare package object, so only the torch-only submodules load
        for name in [n for n in sys.modules if n == "sqn_ray" or n.startswith("sqn_ray.")]:
            del sys.modules[name]
        package = types.ModuleType("sqn_ray")
        package.__path__ = [str(ROOT / "sqn_ray")]
        sys.modules["sqn_ray"] = package
    objective = importlib.import_module("sqn_ray.objective")
    registry = importlib.import_module("sqn_ray.optim.registry")
    return objective, registry, importlib.import_module("sqn_ray.problems.toy")


objective_module, registry, toy = _import_core()
AutogradOracle, Objective = objective_module.AutogradOracle, objective_module.Objective
module_objective_fun = objective_module.module_objective_fun


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # bench/, also when run through runpy
from _timing import seconds, sync  # noqa: E402


def seconds_warm(fn, device, repeats: int) -> float:
    return seconds(fn, device, repeats, warmup=True)


# --------------------------------------------------------------------------------------------------- models
def toy_fun(device, dtype):
    """The toy large net as a user writes it (sqn_ray.problems.toy.toy_user_fun) and a seeded w0."""
    fun = toy.toy_user_fun("large", dtype, device)
    sizes = toy.toy_sizes("large")
    d = sum((p + 1) * q for p, q in zip(sizes[:-1], sizes[1:]))
    w0 = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype=dtype, device=device)
    return fun, w0


class BasicBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = torch.nn.BatchNorm2d(cout)
        self.c2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = torch.nn.BatchNorm2d(cout)
        self.short = torch.nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                             torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(out)) + self.short(x))


def resnet18(width=64, classes=10):
    """ResNet-18 (CIFAR stem: 3×3 conv, no max-pool): [2, 2, 2, 2] basic blocks of width, 2w, 4w, 8w."""
    layers, cin = [torch.nn.Conv2d(3, width, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(width), torch.nn.ReLU()], width
    for i, stride in enumerate((1, 2, 2, 2)):
        cout = width * 2 ** i
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(cin, classes)]
    return torch.nn.Sequential(*layers)


def module_case(net, shape, n, device, dtype):
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(n, *shape, generator=gen).to(dtype=dtype, device=device)
    labels = torch.randint(0, 10, (n,), generator=gen).to(device)
    return module_objective_fun(net.to(dtype=dtype, device=device), F.cross_entropy, X, labels)


def models(device, dtype, quick: bool):
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(784, 100), torch.nn.Sigmoid(), torch.nn.Linear(100, 10))
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 5, stride=2), torch.nn.Tanh(), torch.nn.Conv2d(8, 16, 5, stride=2),
                              torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(256, 10))
    yield "toy large (user fun)", toy_fun(device, dtype)
    yield "MNIST-MLP 784-100-10", module_case(mlp, (784,), 256 if quick else 10_000, device, dtype)
    yield "MNIST-CNN", module_case(cnn, (1, 28, 28), 64 if quick else 10_000, device, dtype)
    if quick:  # the same layout, narrow and on small images: a smoke run
        yield "ResNet-18 layout (width 4, 4 × 3×8×8)", module_case(resnet18(4), (3, 8, 8), 4, device, dtype)
    else:
        yield "ResNet-18 (11.2M, 128 × 3×32×32)", module_case(resnet18(), (3, 32, 32), 128, device, dtype)


# ------------------------------------------------------------------------------------------------- measures
def gradient(fun, w):
    def call():
        x = w.detach().requires_grad_(True)
        torch.autograd.grad(fun(x), x)
    return call


def grad_and_hvps(fun, w, V, backend, device):
    """A callable doing loss + gradient + m HVPs at a new point with one backend (None: it cannot run)."""
    oracle = AutogradOracle(fun, w.numel(), w.dtype, device, hvp_backend=backend)
    points = [w.clone(), w.clone()]
    state = {"i": 0}

    def call():
        state["i"] ^= 1
        x = points[state["i"]]
        oracle.loss_and_grad(x)
        oracle.hvps(x, V)
    try:
        call()
    except RuntimeError as error:  # e.g. an op without a batching rule, or out of memory
        return None, f"{type(error).__name__}: {str(error)[:60]}"
    if backend == "batched" and oracle.hvp_backend != "batched":
        return None, "fell back to the loop"
    return call, oracle


def one_iteration(fun, w0, device, iters: int) -> float:
    """Median seconds of S-LSR1 iterations (m = 16, Option II, auto backend) after the first (the probe)."""
    objective = Objective(AutogradOracle(fun, w0.numel(), w0.dtype, device))
    runner = registry.get_method("s-lsr1").build(registry.validate_options("s-lsr1", memory=16, sampling="hvp"),
                                                 objective)
    state = runner.advance(objective, runner.start(objective, w0)).state
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        state = runner.advance(objective, state).state
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), objective.oracle


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small models, m ∈ {1, 4}: a CPU smoke run")
    ap.add_argument("--m", type=int, nargs="*", default=None, help="block sizes (default 1 4 16 64)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (default 1)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    ms = args.m or ([1, 4] if args.quick else [1, 4, 16, 64])
    repeats, iters = (1, 2) if args.quick else (5, 5)
    dtype = torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}, float32; ratios to one loss + gradient (median of {repeats})")
    print(f"| {'model':40s} | {'d':>10s} | grad ms | {'m':>3s} | batched | loop | jvp | "
          f"batch limit |")
    print(f"|{'-' * 42}|{'-' * 12}|--------:|----:|--------:|-----:|----:|------------:|")
    summary = []
    t_start = time.perf_counter()
    for title, (fun, w) in models(device, dtype, args.quick):
        d = w.numel()
        g = seconds_warm(gradient(fun, w), device, repeats)
        for m in ms:
            V = torch.randn(d, m, generator=torch.Generator().manual_seed(2)).to(dtype=dtype, device=device)
            cells, limit = {}, "-"
            for backend in ("batched", "loop", "jvp"):
                call, info = grad_and_hvps(fun, w, V, backend, device)
                if call is None:
                    cells[backend] = "n/a"
                    print(f"  ({title}, m = {m}, {backend}: {info})")
                    continue
                cells[backend] = f"{seconds_warm(call, device, repeats) / g:.2f}"
                if backend == "batched":
                    limit = str(info.max_hvp_batch)
                del call, info
            print(f"| {title:40s} | {d:10,d} | {1e3 * g:7.2f} | {m:3d} | {cells['batched']:>7s} | "
                  f"{cells['loop']:>4s} | {cells['jvp']:>3s} | {limit:>11s} |", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        t_iter, oracle = one_iteration(fun, w, device, iters)
        summary.append((title, t_iter / g, oracle.hvp_backend))
    print("\none S-LSR1 iteration (m = 16, Option II, hvp_backend='auto', probe excluded) / one gradient")
    print(f"| {'model':40s} | iteration | picked |")
    print(f"|{'-' * 42}|----------:|--------|")
    for title, ratio, picked in summary:
        print(f"| {title:40s} | {ratio:9.2f} | {picked} |")
    print(f"\ntotal {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
