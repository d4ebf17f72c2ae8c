"""ModuleProblem: a user's nn.Module, loss and data as a problem: the oracle is F's autograd derivatives, init is
the module's own seeded initialisation, sub-sampling, Datasets, dtypes, recipes and pickling, bad input."""
from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sqn_ray
from sqn_ray.problems import ModuleProblem, ProblemError, ProblemProtocol, check_problem

F64 = torch.float64


def net():
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))


def data(n=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=gen)
    return X, (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()


def problem(**kw):
    X, y = data()
    return ModuleProblem("tiny", net, F.cross_entropy, X, y, **{"dtype": F64, **kw})


def _flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def test_it_is_a_problem_whose_oracle_is_the_autograd_derivatives_of_the_module_loss():
    p = problem()
    assert isinstance(p, ProblemProtocol) and check_problem(p, "tiny") is p
    assert (p.dim, p.n_samples, p.dtype, p.target_accuracy, p.metrics) == (5 * 6 + 6 + 6 * 3 + 3, 40, F64, None, None)
    w = p.init(3)
    X, y = data()
    reference = net().double()
    f, g = p.oracle.loss_and_grad(w)
    x = w.clone().requires_grad_(True)
    params = {n: c.view(q.shape) for (n, q), c in zip(reference.named_parameters(),
                                                      torch.split(x, [q.numel() for q in reference.parameters()]))}
    expected = F.cross_entropy(torch.func.functional_call(reference, params, (X.double(),)), y)
    (g_ref,) = torch.autograd.grad(expected, x)
    assert float(f) == pytest.approx(float(expected.detach()), rel=1e-14)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-14)
    H = torch.autograd.functional.hessian(lambda v: p.fun(v), w)
    V = torch.randn(p.dim, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(p.oracle.hvps(w, V), H @ V, rtol=1e-10, atol=1e-12)


def test_init_is_the_modules_own_seeded_initialisation_and_leaves_the_global_stream_alone():
    p = problem()
    torch.manual_seed(7)
    expected = _flat(net()).double()
    state = torch.random.get_rng_state()
    assert torch.equal(p.init(7), expected)
    assert torch.equal(torch.random.get_rng_state(), state)  # init forked the generator
    assert not torch.equal(p.init(8), expected)
    assert torch.equal(problem(dtype=torch.float32).init(7), expected.float())  # one seed, one point


def test_accuracy_metrics_and_a_target():
    X, y = data()
    Xt, yt = data(20, seed=1)
    p = ModuleProblem("tiny", net, F.cross_entropy, X, y, test=(Xt, yt), target_accuracy=0.9, dtype=F64)
    w = p.init(0)
    module = net().double()
    torch.nn.utils.vector_to_parameters(w, module.parameters())
    with torch.no_grad():
        assert p.accuracy(w) == pytest.approx(float((module(X.double()).argmax(1) == y).double().mean()))
        m = p.metrics(w)
        assert m["test_loss"] == pytest.approx(float(F.cross_entropy(module(Xt.double()), yt)), rel=1e-12)
        assert m["test_accuracy"] == pytest.approx(float((module(Xt.double()).argmax(1) == yt).double().mean()))
    regression = ModuleProblem("reg", lambda: nn.Linear(5, 1), F.mse_loss, X, X[:, :1] * 2.0, dtype=F64)
    assert math.isnan(regression.accuracy(regression.init(0)))
    with pytest.raises(ProblemError, match="target_accuracy needs an accuracy"):
        ModuleProblem("reg", lambda: nn.Linear(5, 1), F.mse_loss, X, X[:, :1], target_accuracy=0.5)


def test_a_dataset_and_the_tensors_give_one_problem():
    X, y = data()
    a = ModuleProblem("tiny", net, F.cross_entropy, X, y, dtype=F64)
    b = ModuleProblem("tiny", net, F.cross_entropy, torch.utils.data.TensorDataset(X, y), dtype=F64)
    w = a.init(0)
    assert float(a.oracle.loss(w)) == float(b.oracle.loss(w))


def test_build_gives_the_same_problem_in_another_dtype_and_pickling_ships_the_recipe():
    p = problem(dtype=torch.float32)
    q = p.build(dtype=F64, device="cpu")
    assert q.dtype == F64 and p.build(dtype=torch.float32, device="cpu") is p
    w = q.init(2)
    assert float(q.oracle.loss(w)) == pytest.approx(float(p.oracle.loss(w.float())), rel=1e-5)
    p.oracle.hvps(p.init(0), torch.ones(p.dim, 2))  # fill the oracle's graph cache: it must not be pickled
    back = pickle.loads(pickle.dumps(p))
    assert back.dim == p.dim and float(back.oracle.loss(p.init(0))) == float(p.oracle.loss(p.init(0)))


def test_minibatches_move_on_at_accepted_iterates_and_runs_continue_from_their_state():
    p = problem(batch_size=10, hvp_backend="loop")  # a fixed backend: both halves take the same products
    assert p.oracle.batch_fraction == 0.25
    whole = sqn_ray.minimize(p.oracle, p.init(0), "s-lsr1", max_iters=8, memory=3)
    assert p.oracle.batches_drawn >= 2 and math.isfinite(whole.loss)
    first = sqn_ray.minimize(p.oracle, p.init(0), "s-lsr1", max_iters=3, memory=3)
    again = problem(batch_size=10, hvp_backend="loop")
    again.init(0)
    rest = sqn_ray.minimize(again.oracle, None, state=first.state, max_iters=8)
    assert torch.equal(rest.x, whole.x)


@pytest.mark.parametrize("method", ["s-lsr1", "s-lbfgs", "lbfgs", "adam"])
def test_every_method_runs_on_it(method):
    """(with HVPs in blocks of at most 3 vectors: the chunked batched path)"""
    p = problem(dtype=torch.float32, max_hvp_batch=3)
    res = sqn_ray.minimize(p.oracle, p.init(0), method, max_iters=5)
    assert res.status == "max_iters" and res.history.loss.iloc[-1] < res.history.loss.iloc[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "bad name"}, "name must be letters"),
    ({"model": nn.Linear(5, 3)}, "model must be a zero-argument callable returning an nn.Module"),
    ({"model": lambda: 3}, "model\\(\\) returned a int, not an nn.Module"),
    ({"loss_fn": 3}, "loss_fn must be callable"),
    ({"dtype": torch.float16}, "dtype must be torch.float32 or torch.float64"),
    ({"batch_size": 0}, "batch_size must be None or an integer in \\[1, 40\\], got 0"),
    ({"batch_size": 41}, "batch_size must be None or an integer in \\[1, 40\\], got 41"),
    ({"curvature_batch_size": 5}, "curvature_batch_size needs a batch_size"),
    ({"targets": torch.zeros(3, dtype=torch.long)}, "40 inputs but 3 targets"),
    ({"target_accuracy": 1.5}, "target_accuracy must be None or a number in \\[0, 1\\], got 1.5"),
    ({"test": (torch.zeros(2, 5),)}, "test must be an \\(inputs, targets\\) pair"),
    ({"hvp_backend": "fast"}, "hvp_backend='fast' is not one of"),
    ({"accuracy": "top5"}, "accuracy must be 'auto', None or a callable"),
    ({"max_hvp_batch": 0}, "max_hvp_batch"),
])
def test_bad_input_is_refused_with_the_argument_named(kwargs, message):
    X, y = data()
    args = {"name": "tiny", "model": net, "loss_fn": F.cross_entropy, "inputs": X, "targets": y, **kwargs}
    with pytest.raises(ProblemError, match=message):
        ModuleProblem(**args)
