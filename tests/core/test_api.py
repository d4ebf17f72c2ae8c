"""What a user of ``minimize``, the torch.optim adapter and the objective sees: records, errors, counters."""
import math

import numpy as np
import pytest
import torch

import sqn_ray

from sqn_ray import METHODS, SQNOptimizer, method_options, minimize, module_objective_fun, validate_options
from sqn_ray.objective import AutogradOracle, Objective
from sqn_ray.optim.minimize import RECORD_FIELDS

D = 6


def fun(w):
    return torch.sum((w - 1.0) ** 2 * (1 + 0.1 * torch.arange(w.numel(), dtype=w.dtype))) + 0.1 * torch.sum(w ** 4)


def w0(dtype=torch.float64):
    return torch.linspace(-1, 1, D, dtype=dtype)


@pytest.mark.parametrize("method", METHODS)
def test_history_has_every_field_and_starts_at_the_initial_point(method):
    res = minimize(fun, w0(), method=method, max_iters=4, seed=0)
    assert list(res.history.columns[:len(RECORD_FIELDS)]) == list(RECORD_FIELDS)
    first = res.history.iloc[0]
    assert first.iteration == 0 and first.loss == pytest.approx(float(fun(w0())), rel=1e-15)
    assert first.grad_equivalents == 1 and first.n_fun == 1 and first.n_grad == 1
    assert (np.diff(res.history.iteration) == 1).all()
    assert (np.diff(res.history.n_fun) >= 0).all() and (np.diff(res.history.wall_time) >= 0).all()
    assert res.status in ("max_iters", "converged", "stalled")
    assert torch.equal(res.x, res.x.to(torch.float64)) and res.x.shape == (D,)


@pytest.mark.parametrize("method", METHODS)
def test_bad_options_are_rejected_before_any_evaluation(method):
    calls = []

    def counting(w):
        calls.append(1)
        return fun(w)

    with pytest.raises(ValueError, match="bogus_option"):
        minimize(counting, w0(), method=method, bogus_option=3)
    for name, default in method_options(method).items():
        bad = {bool: "yes", int: -3, float: -1.5, str: "no-such-choice"}.get(type(default))
        if bad is None:
            continue
        with pytest.raises(ValueError, match=name):
            minimize(counting, w0(), method=method, **{name: bad})
    assert not calls


def test_error_messages_name_the_value_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'newton'.*s-lsr1.*adam"):
        minimize(fun, w0(), method="newton")
    with pytest.raises(ValueError, match=r"tr_solver='dogleg' is not one of \('cg-steihaug', 'exact'\)"):
        validate_options("s-lsr1", tr_solver="dogleg")
    with pytest.raises(ValueError, match=r"radius.*not-a-number|radius must be a finite number > 0, got 'x'"):
        validate_options("s-lbfgs", radius="x")
    with pytest.raises(ValueError, match=r"valid options: \['lr', 'seed'\]"):
        validate_options("gd", memory=3)


def test_w0_shape_and_dtype_errors_are_clear():
    with pytest.raises(ValueError, match="flat 1-D"):
        minimize(fun, w0().reshape(2, 3))
    with pytest.raises(ValueError, match="float32 or float64"):
        minimize(fun, torch.arange(D))
    with pytest.raises(TypeError, match="torch.Tensor"):
        minimize(fun, [0.0] * D)
    oracle = AutogradOracle(fun, D, torch.float64)
    with pytest.raises(ValueError, match="dimension 6"):
        minimize(oracle, torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="computes in torch.float64"):
        minimize(oracle, torch.zeros(D, dtype=torch.float32))


@pytest.mark.parametrize("method", ["s-lsr1", "s-lbfgs", "lbfgs", "gd", "adam", "scipy-lbfgsb", "torch-lbfgs"])
def test_non_finite_loss_stops_with_status_diverged(method):
    def blows_up(w):
        return fun(w) if float(w.detach()[0]) < 5 else fun(w) * math.inf

    res = minimize(blows_up, w0(), method=method, max_iters=50, seed=0,
                   **({"lr": 10.0} if method in ("gd", "adam") else {}))
    assert res.status in ("diverged", "max_iters", "converged", "stalled")
    nan_res = minimize(lambda w: fun(w) * math.nan, w0(), method=method, max_iters=5, seed=0)
    assert nan_res.status == "diverged" and "non-finite" in nan_res.message
    gd = minimize(lambda w: (w ** 4).sum(), w0(), method="gd", lr=10.0, max_iters=20)
    assert gd.status == "diverged"
    assert not np.isfinite(gd.history.loss.iloc[-1]) or not np.isfinite(gd.history.grad_norm.iloc[-1])


def test_callback_sees_every_iterate_and_can_stop():
    seen = []

    def cb(x, record):
        seen.append((x.clone(), dict(record)))
        return record["iteration"] == 3

    res = minimize(fun, w0(), method="s-lsr1", max_iters=20, seed=0, callback=cb)
    assert res.status == "callback" and len(res.history) == 4 == len(seen)
    assert [r["iteration"] for _, r in seen] == [0, 1, 2, 3]
    torch.testing.assert_close(seen[-1][0], res.x)


def test_objective_counters_and_cost_axes():
    obj = Objective(AutogradOracle(fun, D, torch.float64), batch_fraction=0.25)
    w = w0()
    obj.value(w)
    obj.value_and_grad(w)
    obj.hvp(w, torch.eye(D, dtype=torch.float64)[:, :4])
    obj.grads_at(torch.zeros(D, 3, dtype=torch.float64))
    c = obj.counters
    assert (c.n_fun, c.n_grad, c.n_hvp) == (2, 4, 4)
    assert c.grad_equivalents == 4 + 4 + 0.5
    assert c.data_passes == pytest.approx(0.25 * (1 + 1 + 4 + 3))


@pytest.mark.parametrize("backend", ["batched", "loop", "auto"])
def test_autograd_oracle_backends_agree_with_the_dense_hessian(backend):
    oracle = AutogradOracle(fun, D, torch.float64, hvp_backend=backend, grads_backend="auto")
    w = w0()
    H = torch.autograd.functional.hessian(fun, w)
    V = torch.randn(D, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(oracle.hvps(w, V), H @ V)
    W = w[:, None] + V
    expected = torch.stack([torch.func.grad(fun)(W[:, i]) for i in range(3)], 1)
    torch.testing.assert_close(oracle.grads(W), expected)
    assert oracle.hvp_backend in ("batched", "loop")


def test_module_objective_and_torch_optim_adapter_agree_with_minimize():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    X = torch.randn(20, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (20,))
    loss_fn = torch.nn.functional.cross_entropy
    f, w_init = module_objective_fun(net, loss_fn, X, y)
    with torch.no_grad():
        assert float(f(w_init)) == pytest.approx(float(loss_fn(net(X), y)), rel=1e-14)
    reference = minimize(f, w_init, method="s-lsr1", memory=4, max_iters=10, seed=2)

    w0 = [p.detach().clone() for p in net.parameters()]
    for backend in ("auto", "batched", "loop"):
        with torch.no_grad():
            for p, p0 in zip(net.parameters(), w0):
                p.copy_(p0)
        opt = SQNOptimizer(net.parameters(), method="s-lsr1", memory=4, seed=2, hvp_backend=backend)
        for _ in range(10):
            opt.step(lambda: loss_fn(net(X), y))
        np.testing.assert_allclose(opt.history.loss, reference.history.loss, rtol=1e-10)
        assert list(opt.history.columns) == list(reference.history.columns)
        assert [r["loss"] for r in opt.records] == opt.history.loss.tolist()
        w_net = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        torch.testing.assert_close(w_net, reference.x)
        assert opt.history.n_hvp.iloc[-1] == reference.history.n_hvp.iloc[-1]
    with pytest.raises(ValueError, match="hvp_backend='fast' is not one of"):
        SQNOptimizer(net.parameters(), method="s-lsr1", hvp_backend="fast")


def test_adapter_accepts_backward_closures_for_gradient_methods_and_explains_hvp_needs():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1).double()
    gen = torch.Generator().manual_seed(0)
    X, y = (torch.randn(10, 3, dtype=torch.float64, generator=gen),
            torch.randn(10, 1, dtype=torch.float64, generator=gen))

    def closure():
        loss = ((net(X) - y) ** 2).mean()
        loss.backward()
        return loss

    opt = SQNOptimizer(net.parameters(), method="lbfgs", trial_step="unit")
    losses = [opt.step(closure) for _ in range(15)]
    assert losses[-1].dtype == torch.float64  # the loss comes back in the model's precision
    X1 = torch.cat([X, torch.ones(10, 1, dtype=torch.float64)], 1)
    best = float(((X1 @ torch.linalg.lstsq(X1, y).solution - y) ** 2).mean())  # least-squares optimum
    assert float(losses[-1]) == pytest.approx(best, rel=1e-10)
    opt = SQNOptimizer(net.parameters(), method="s-lsr1")
    with pytest.raises(ValueError, match="without calling backward"):
        opt.step(closure)
    with pytest.raises(ValueError, match="cannot be used step by step"):
        SQNOptimizer(net.parameters(), method="scipy-bfgs")


@pytest.mark.parametrize("batching", ["works", "unsupported"])
def test_adapter_hvps_match_the_dense_hessian_batched_or_not(batching, monkeypatch):
    """The closure oracle computes Option II's m products in one batched backward pass, and falls back to one
    pass per vector (for good) when the model's graph cannot be batched; both give H V."""
    from sqn_ray.optim.adapter import ClosureOracle

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(12, 3, dtype=torch.float64, generator=gen), torch.randint(0, 2, (12,), generator=gen)
    loss_fn = torch.nn.functional.cross_entropy
    f, w = module_objective_fun(net, loss_fn, X, y)
    H = torch.autograd.functional.hessian(f, w)
    if batching == "unsupported":  # as for an op without a vmap rule in the model's double-backward graph
        grad = torch.autograd.grad

        def no_batching(*args, is_grads_batched=False, **kwargs):
            if is_grads_batched:
                raise RuntimeError("Batching rule not implemented for aten::some_op")
            return grad(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", no_batching)
    V = torch.randn(w.numel(), 5, dtype=torch.float64, generator=gen)
    for backend in ("auto", "batched", "loop"):
        oracle = ClosureOracle(list(net.parameters()), lambda: loss_fn(net(X), y), hvp_backend=backend)
        torch.testing.assert_close(oracle.hvps(w, V), H @ V)
        if batching == "unsupported":
            assert oracle.hvp_backend == "loop"
        else:
            assert oracle.hvp_backend == (backend if backend != "auto" else oracle.hvp_backend) in ("batched", "loop")
    torch.testing.assert_close(oracle.hvps(w, V[:, :2]), H @ V[:, :2])  # the choice sticks
    with pytest.raises(ValueError, match=r"hvp_backend='vmap' is not one of \('auto', 'batched', 'loop'\)"):
        ClosureOracle(list(net.parameters()), lambda: loss_fn(net(X), y), hvp_backend="vmap")


def test_every_method_has_one_family_in_the_registry_and_the_analysis_uses_it():
    from analysis import load as L
    from sqn_ray.optim.registry import FAMILIES, REGISTRY, method_family, methods_of

    assert {spec.family for spec in REGISTRY.values()} == set(FAMILIES)
    assert sum(len(methods_of(f)) for f in FAMILIES) == len(sqn_ray.METHODS)
    assert sqn_ray.SAMPLED_METHODS == methods_of("sampled QN") == L.SAMPLED == ("s-lsr1", "s-lbfgs")
    assert all(L.family(m) == method_family(m) == REGISTRY[m].family for m in sqn_ray.METHODS)
    assert L.family("my-own-method") == "other" and L.METHOD_ORDER == sqn_ray.METHODS
    with pytest.raises(ValueError, match="unknown method family 'quasi'"):
        methods_of("quasi")
