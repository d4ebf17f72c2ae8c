"""The generic oracle (AutogradOracle on a user's fun(w)): every HVP backend gives ∇²F V for a function written as
a user writes it and for an nn.Module through module_objective_fun, in float32 and float64; chunked blocks
(max_hvp_batch) equal unchunked ones; Option I's vmap equals the loop; the backend probe runs once per oracle and
the counters do not see it. No timing assertions."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sqn_ray
import sqn_ray.objective as objective_module
from sqn_ray.objective import (FUNCTION_HVP_BACKENDS, AutogradOracle, Objective, OptionError, hvps_through_graph,
                               module_objective_fun)
from sqn_ray.problems.mlp import plain_sigmoid_net_fun

F64, F32 = torch.float64, torch.float32
SIZES = (2, 5, 4, 3)  # a small sigmoid net with 3 classes: d = 15 + 20 + 15 = 50
D = sum((p + 1) * q for p, q in zip(SIZES[:-1], SIZES[1:]))


def _data(dtype):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(30, SIZES[0], dtype=F64, generator=gen).to(dtype)
    return X, torch.randint(0, SIZES[-1], (30,), generator=gen)


def user_fun(dtype):
    """The net as a user writes it: slices of w into weight matrices, x @ W + b, sigmoid, cross-entropy."""
    return plain_sigmoid_net_fun(SIZES, *_data(dtype))


def module_fun(dtype):
    X, labels = _data(dtype)
    torch.manual_seed(0)
    layers = []
    for p, q in zip(SIZES[:-1], SIZES[1:]):
        layers += [torch.nn.Linear(p, q), torch.nn.Sigmoid()]
    net = torch.nn.Sequential(*layers[:-1]).to(dtype)
    return module_objective_fun(net, F.cross_entropy, X, labels)[0]


MAKERS = {"user-fun": user_fun, "nn.Module": module_fun}


def _point(dtype, seed=1):
    return torch.randn(D, dtype=F64, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _block(dtype, m=6, seed=2):
    return torch.randn(D, m, dtype=F64, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _reference(kind, w, V):
    """∇²F V in float64 from the dense Hessian."""
    fun = MAKERS[kind](F64)
    return torch.autograd.functional.hessian(fun, w.to(F64)) @ V.to(F64)


TOL = {F64: {"rtol": 1e-10, "atol": 1e-12}, F32: {"rtol": 2e-4, "atol": 2e-5}}


# ------------------------------------------------------------------------------------------------ Option II
@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", list(MAKERS))
@pytest.mark.parametrize("backend", FUNCTION_HVP_BACKENDS)
def test_every_backend_gives_the_dense_hessian_times_v(backend, kind, dtype):
    w, V = _point(dtype), _block(dtype)
    oracle = AutogradOracle(MAKERS[kind](dtype), D, dtype, hvp_backend=backend)
    HV = oracle.hvps(w, V)
    assert HV.dtype == dtype and HV.shape == V.shape
    torch.testing.assert_close(HV.to(F64), _reference(kind, w, V), **TOL[dtype])
    torch.testing.assert_close(oracle.hvps(w, V), HV, rtol=0, atol=0)  # the same point again: the same products
    assert oracle.hvp_backend != "auto"  # decided on the first block and kept


@pytest.mark.parametrize("kind", list(MAKERS))
def test_gradients_are_the_same_whatever_the_backend(kind):
    w = _point(F64)
    ref = AutogradOracle(MAKERS[kind](F64), D, F64).loss_and_grad(w)
    for backend in FUNCTION_HVP_BACKENDS:
        oracle = AutogradOracle(MAKERS[kind](F64), D, F64, hvp_backend=backend)
        oracle.hvps(_point(F64, seed=5), _block(F64))  # HVPs in use: the gradient may come from a graph
        f, g = oracle.loss_and_grad(w)
        torch.testing.assert_close(f, ref[0], rtol=1e-14, atol=0)
        torch.testing.assert_close(g, ref[1], rtol=1e-12, atol=1e-14)


def test_the_jvp_backend_builds_no_create_graph_gradient():
    oracle = AutogradOracle(user_fun(F64), D, F64, hvp_backend="jvp")
    w = _point(F64)
    oracle.hvps(w, _block(F64))
    oracle.loss_and_grad(_point(F64, seed=3))
    assert oracle._graph is None  # plain gradients: forward-over-reverse needs no graph of the gradient


def test_a_closure_oracle_has_no_jvp_backend():
    net = torch.nn.Linear(SIZES[0], 1).double()
    with pytest.raises(ValueError, match="hvp_backend"):
        sqn_ray.SQNOptimizer(net.parameters(), hvp_backend="jvp")


# ------------------------------------------------------------------------------------------ max_hvp_batch
def _record_blocks(monkeypatch):
    """Widths of the blocks each batched backward pass gets (through the module's hvps_through_graph)."""
    widths, real = [], hvps_through_graph

    def spy(backend, leaves, g, V, max_batch=None):
        if backend == "batched" and (max_batch is None or V.shape[1] <= max_batch):
            widths.append(V.shape[1])
        return real(backend, leaves, g, V, max_batch)
    monkeypatch.setattr(objective_module, "hvps_through_graph", spy)
    return widths


@pytest.mark.parametrize("backend", ["batched", "jvp"])
@pytest.mark.parametrize("kind", list(MAKERS))
def test_a_chunked_block_equals_the_unchunked_one(backend, kind, monkeypatch):
    w, V = _point(F64), _block(F64, m=8)
    whole = AutogradOracle(MAKERS[kind](F64), D, F64, hvp_backend=backend, max_hvp_batch=8).hvps(w, V)
    widths = _record_blocks(monkeypatch)
    chunked = AutogradOracle(MAKERS[kind](F64), D, F64, hvp_backend=backend, max_hvp_batch=3).hvps(w, V)
    torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=1e-15)
    if backend == "batched":
        assert widths == [3, 3, 2]


def test_auto_chunks_when_the_block_would_not_fit(monkeypatch):
    w, V = _point(F64), _block(F64, m=8)
    whole = AutogradOracle(user_fun(F64), D, F64, hvp_backend="batched").hvps(w, V)
    oracle = AutogradOracle(user_fun(F64), D, F64, hvp_backend="batched")
    oracle.loss_and_grad(w)
    oracle._graph_at(w)  # the graph is measured once: bytes per vector
    monkeypatch.setattr(objective_module, "batch_memory_budget", lambda device: 3 * oracle._bytes_per_vector)
    widths = _record_blocks(monkeypatch)
    torch.testing.assert_close(oracle.hvps(w, V), whole, rtol=1e-13, atol=1e-15)
    assert oracle.max_hvp_batch == 3 and widths == [3, 3, 2]


def test_auto_does_not_chunk_a_small_model():
    oracle = AutogradOracle(user_fun(F32), D, F32)
    oracle.hvps(_point(F32), _block(F32, m=16))
    assert oracle.max_hvp_batch >= 16


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "big", None])
def test_max_hvp_batch_is_validated_before_any_evaluation(bad):
    calls = []

    def fun(w):
        calls.append(1)
        return (w ** 2).sum()
    with pytest.raises(OptionError, match="max_hvp_batch"):
        AutogradOracle(fun, 3, F64, max_hvp_batch=bad)
    with pytest.raises(ValueError, match="max_hvp_batch"):
        sqn_ray.minimize(fun, torch.ones(3, dtype=F64), "s-lsr1", max_iters=2, max_hvp_batch=bad)
    assert calls == []


# ---------------------------------------------------------------------------------------------- Option I
@pytest.mark.parametrize("kind", list(MAKERS))
def test_option_one_vmap_equals_the_loop_and_chunks(kind):
    w = _point(F64)
    W = w[:, None] + 0.1 * _block(F64, m=7)
    loop = AutogradOracle(MAKERS[kind](F64), D, F64, grads_backend="loop").grads(W)
    for max_batch in ("auto", 3):
        for backend in ("vmap", "auto"):
            G = AutogradOracle(MAKERS[kind](F64), D, F64, grads_backend=backend, max_hvp_batch=max_batch).grads(W)
            torch.testing.assert_close(G, loop, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------- the probe and the counters
def test_the_probe_runs_once_per_oracle_and_returns_the_real_products(monkeypatch):
    calls, real = [], objective_module.probe_batched_or_loop

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(objective_module, "probe_batched_or_loop", spy)
    oracle = AutogradOracle(user_fun(F64), D, F64)
    for seed in range(3):
        w, V = _point(F64, seed=10 + seed), _block(F64, seed=20 + seed)
        HV = oracle.hvps(w, V)
        x, _, g = oracle._graph_at(w)
        torch.testing.assert_close(HV, hvps_through_graph("batched", [x], g, V), rtol=1e-13, atol=1e-15)
    assert calls == [1] and oracle.hvp_backend in ("batched", "loop")
    W = _point(F64)[:, None] + 0.1 * _block(F64)
    for _ in range(3):
        oracle.grads(W)
    assert calls == [1, 1] and oracle.grads_backend in ("vmap", "loop")


def test_the_probe_leaves_the_global_random_stream_alone():
    state = torch.get_rng_state()
    oracle = AutogradOracle(user_fun(F64), D, F64)
    oracle.hvps(_point(F64), _block(F64))
    oracle.grads(_point(F64)[:, None] + _block(F64))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("sampling", ["hvp", "grad-diff"])
def test_counts_and_iterates_do_not_depend_on_the_backend(sampling):
    fun, w0 = user_fun(F64), _point(F64)
    key = "hvp_backend" if sampling == "hvp" else "grads_backend"
    backends = FUNCTION_HVP_BACKENDS if sampling == "hvp" else ("auto", "vmap", "loop")
    runs = {b: sqn_ray.minimize(fun, w0, "s-lsr1", memory=4, sampling=sampling, max_iters=6, seed=3, **{key: b})
            for b in backends}
    ref = runs["loop"].history
    counters = ["n_fun", "n_grad", "n_hvp", "grad_equivalents", "epochs"]
    for b, run in runs.items():
        assert run.history[counters].equals(ref[counters]), b
        torch.testing.assert_close(run.x, runs["loop"].x, rtol=1e-8, atol=1e-10)


def test_the_objective_counts_a_block_once_whatever_the_chunks():
    obj = Objective(AutogradOracle(user_fun(F64), D, F64, hvp_backend="batched", max_hvp_batch=2))
    obj.hvp(_point(F64), _block(F64, m=5))
    assert obj.counters.n_hvp == 5 and obj.counters.n_grad == 0


# ------------------------------------------------------------------------------------------- bench/gpu_check.py
_WITHOUT_PANDAS_OR_RAY = """
import runpy, sys
for name in ('pandas', 'pyarrow', 'ray'):  # not on the device machine: importing them raises ImportError
    sys.modules[name] = None
sys.argv = ['bench/gpu_check.py', '--device', 'cpu', '--quick']
runpy.run_path('bench/gpu_check.py', run_name='__main__')
"""


@pytest.mark.slow
def test_the_gpu_check_runs_on_a_cpu_with_torch_alone():
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _WITHOUT_PANDAS_OR_RAY], cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    for model in ("toy large", "MNIST-MLP", "MNIST-CNN", "ResNet-18"):
        assert sum(model in row for row in rows) == 3, (model, out.stdout)  # m = 1, 4 and the iteration
    assert "one S-LSR1 iteration" in out.stdout
