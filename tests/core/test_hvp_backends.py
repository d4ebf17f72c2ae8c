"""One HVP implementation and one backend policy for both autograd oracles (AutogradOracle on a flat point,
ClosureOracle on a model's parameters): both backends give ∇²F V, a graph that cannot be batched falls back to
the loop for good, and the counters do not see the probe."""
from __future__ import annotations

import pytest
import torch

import sqn_ray
from sqn_ray.objective import (AutogradOracle, Objective, choose_hvp_backend, hvps_by_backend, hvps_through_graph,
                               module_objective_fun)
from sqn_ray.optim.adapter import ClosureOracle

D = 7
F64 = torch.float64


def _data(n=25, d=D, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, dtype=F64, generator=gen), (torch.rand(n, generator=gen) > 0.5).to(F64)


X, Y = _data()


def logistic(w):
    return torch.nn.functional.binary_cross_entropy_with_logits(X @ w, Y) + 0.01 * (w ** 2).sum()


def quadratic(w):
    A = torch.arange(1.0, D + 1, dtype=F64)
    return 0.5 * (A * w ** 2).sum() + 0.25 * w[0] * w[1] * w[2]


def _point(seed=1):
    return torch.randn(D, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _block(m=4, seed=2):
    return torch.randn(D, m, dtype=F64, generator=torch.Generator().manual_seed(seed))


class _CubeGrad(torch.autograd.Function):
    """The gradient of x ** 3, whose own backward calls .item(): no batching rule (aten::item) under
    ``is_grads_batched``, while one backward pass per vector works."""

    @staticmethod
    def forward(ctx, x, go):
        ctx.save_for_backward(x, go)
        return 3 * x ** 2 * go

    @staticmethod
    def backward(ctx, gg):
        x, go = ctx.saved_tensors
        scale = 6.0 if gg.abs().sum().item() >= 0 else 0.0
        return scale * x * go * gg, 3 * x ** 2 * gg


class _Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, go):
        (x,) = ctx.saved_tensors
        return _CubeGrad.apply(x, go)


def unbatchable(w):
    return logistic(w) + 0.1 * _Cube.apply(w).sum()


def _dense_hessian(fun, w):
    return torch.autograd.functional.hessian(fun, w)


# ------------------------------------------------------------------------------------------ AutogradOracle
@pytest.mark.parametrize("fun", [logistic, quadratic], ids=["logistic", "quadratic"])
@pytest.mark.parametrize("backend", ["batched", "loop", "auto"])
def test_autograd_oracle_backends_give_the_dense_hessian_times_v(fun, backend):
    w, V = _point(), _block()
    oracle = AutogradOracle(fun, D, F64, hvp_backend=backend)
    torch.testing.assert_close(oracle.hvps(w, V), _dense_hessian(fun, w) @ V)
    assert oracle.hvp_backend in ("batched", "loop")  # 'auto' is decided once and kept


def test_one_leaf_does_exactly_the_autograd_calls_of_the_flat_oracle():
    """Bit for bit what AutogradOracle computed before the helper was shared."""
    w, V = _point(), _block(5)
    x = w.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(logistic(x), x, create_graph=True)
    (HV,) = torch.autograd.grad(g, x, grad_outputs=V.T.contiguous(), retain_graph=True, is_grads_batched=True)
    assert torch.equal(hvps_through_graph("batched", [x], g, V), HV.T)
    cols = [torch.autograd.grad(g, x, grad_outputs=V[:, i], retain_graph=True)[0] for i in range(V.shape[1])]
    assert torch.equal(hvps_through_graph("loop", [x], g, V), torch.stack(cols, dim=1))
    for backend in ("batched", "loop"):
        assert torch.equal(AutogradOracle(logistic, D, F64, hvp_backend=backend).hvps(w, V),
                           hvps_through_graph(backend, [x], g, V))
    with pytest.raises(ValueError, match="backend='auto' is not one of"):
        hvps_through_graph("auto", [x], g, V)


def test_several_leaves_concatenate_their_rows():
    w, V = _point(), _block(3)
    a, b = w[:3].clone().requires_grad_(True), w[3:].clone().requires_grad_(True)
    unused = torch.zeros(2, dtype=F64, requires_grad=True)  # a leaf the loss does not use: zero rows
    (ga, gb, gu) = torch.autograd.grad(logistic(torch.cat([a, b])), [a, b, unused], create_graph=True,
                                       materialize_grads=True)
    g = torch.cat([ga, gb, gu])
    Vu = torch.cat([V, torch.ones(2, 3, dtype=F64)])
    H = _dense_hessian(logistic, w)
    for backend in ("batched", "loop"):
        HV = hvps_through_graph(backend, [a, b], torch.cat([ga, gb]), V)
        torch.testing.assert_close(HV, H @ V)
    HV = hvps_through_graph("loop", [a, b, unused], g, Vu)
    assert HV.shape == (D + 2, 3)
    torch.testing.assert_close(HV[:D], H @ V)
    assert torch.equal(HV[D:], torch.zeros(2, 3, dtype=F64))
    # batched, autograd materializes an unused leaf's gradient without the batch dimension: a RuntimeError,
    # which the backend policy answers with the loop (as ClosureOracle always has)
    with pytest.raises(RuntimeError):
        hvps_through_graph("batched", [a, b, unused], g, Vu)
    backend, HV2 = hvps_by_backend("batched", [a, b, unused], g, Vu, torch.device("cpu"))
    assert backend == "loop" and torch.equal(HV2, HV)


def test_the_probe_picks_a_backend_without_touching_the_global_random_stream():
    w, V = _point(), _block()
    x = w.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(logistic(x), x, create_graph=True)
    state = torch.get_rng_state()
    assert choose_hvp_backend([x], g, V, torch.device("cpu")) in ("batched", "loop")
    assert torch.equal(torch.get_rng_state(), state)
    x = w.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(unbatchable(x), x, create_graph=True)
    assert choose_hvp_backend([x], g, V, torch.device("cpu")) == "loop"


# ------------------------------------------------------------------------------------------- ClosureOracle
def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(D, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)).double()


class _CubeNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(D, 1).double()
        self.c = torch.nn.Parameter(torch.linspace(-1, 1, 3, dtype=F64))

    def forward(self, X):
        return self.lin(X).squeeze(1) + 0.1 * _Cube.apply(self.c).sum()


def _bce(net):
    return lambda: torch.nn.functional.binary_cross_entropy_with_logits(net(X).reshape(-1), Y)


@pytest.mark.parametrize("backend", ["batched", "loop", "auto"])
@pytest.mark.parametrize("model", ["tanh-net", "cube-net"])
def test_closure_oracle_backends_give_the_dense_hessian_times_v(backend, model):
    net = _net() if model == "tanh-net" else _CubeNet()
    fun, w = module_objective_fun(net, lambda out, y: torch.nn.functional.binary_cross_entropy_with_logits(
        out.reshape(-1), y), X, Y)
    V = torch.randn(w.numel(), 4, dtype=F64, generator=torch.Generator().manual_seed(3))
    oracle = ClosureOracle(list(net.parameters()), _bce(net), hvp_backend=backend)
    torch.testing.assert_close(oracle.hvps(w, V), _dense_hessian(fun, w) @ V)
    if model == "cube-net":  # aten::item has no batching rule: the loop, from now on
        assert oracle.hvp_backend == "loop"
    else:
        assert oracle.hvp_backend == (backend if backend != "auto" else oracle.hvp_backend) in ("batched", "loop")


def test_closure_and_flat_oracles_agree():
    net = _net()
    loss = lambda out, y: torch.nn.functional.binary_cross_entropy_with_logits(out.reshape(-1), y)  # noqa: E731
    fun, w = module_objective_fun(net, loss, X, Y)
    V = torch.randn(w.numel(), 3, dtype=F64, generator=torch.Generator().manual_seed(4))
    for backend in ("batched", "loop"):
        flat = AutogradOracle(fun, w.numel(), F64, hvp_backend=backend).hvps(w, V)
        closure = ClosureOracle(list(net.parameters()), _bce(net), hvp_backend=backend).hvps(w, V)
        torch.testing.assert_close(closure, flat, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------ fallback and the counters
@pytest.mark.parametrize("backend", ["batched", "auto"])
def test_flat_oracle_falls_back_to_the_loop_and_counts_are_unchanged(backend):
    w, V = _point(), _block(5)
    obj = Objective(AutogradOracle(unbatchable, D, F64, hvp_backend=backend))
    ref = Objective(AutogradOracle(unbatchable, D, F64, hvp_backend="loop"))
    HV = obj.hvp(w, V)
    assert obj.oracle.hvp_backend == "loop"
    assert torch.equal(HV, ref.hvp(w, V))
    torch.testing.assert_close(HV, _dense_hessian(unbatchable, w) @ V)
    assert obj.counters.snapshot() == ref.counters.snapshot() and obj.counters.n_hvp == 5


def test_minimize_and_the_optimizer_count_alike_whatever_the_backend():
    w0 = _point()
    runs = {b: sqn_ray.minimize(unbatchable, w0, method="s-lsr1", memory=3, max_iters=5, seed=1, hvp_backend=b)
            for b in ("batched", "auto", "loop")}
    for b in ("batched", "auto"):
        assert torch.equal(runs[b].x, runs["loop"].x)
        assert list(runs[b].history.n_hvp) == list(runs["loop"].history.n_hvp)
        assert list(runs[b].history.loss) == list(runs["loop"].history.loss)

    histories = {}
    for b in ("batched", "loop"):
        net = _CubeNet()
        opt = sqn_ray.SQNOptimizer(net.parameters(), method="s-lsr1", memory=3, seed=1, hvp_backend=b)
        for _ in range(4):
            opt.step(_bce(net))
        histories[b] = [(float(r["loss"]), int(r["n_hvp"])) for r in opt.history.to_dict("records")]
    assert histories["batched"] == histories["loop"] and histories["loop"][-1][1] > 0


