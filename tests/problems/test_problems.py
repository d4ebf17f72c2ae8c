"""The problem registry: names, sizes, data, seeded starting points, and the known answer of the convex one."""
import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from sqn_ray.problems import FASHION_MNIST_PROBLEMS, MNIST_PROBLEMS, PROBLEMS, Problem, get_problem
from sqn_ray.problems.logistic import DEFAULT_LAMBDA, breast_cancer, solution
from sqn_ray.problems.toy import TOY_SIZES, toy_data

# The problems that need no data cache; the MNIST ones are tested on a fake cache in tests/data.
BUILTIN = ("toy-small", "toy-medium", "toy-large", "logistic")

F64, F32 = torch.float64, torch.float32
DIMS = {"toy-small": 36, "toy-medium": 176, "toy-large": 908, "logistic": 31}


def autograd_grad(fun, w):
    x = w.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fun(x), x)
    return g


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


# -- registry ----------------------------------------------------------------------------------------------
def test_registry_lists_the_four_problems_with_their_sizes():
    assert PROBLEMS == BUILTIN + MNIST_PROBLEMS + FASHION_MNIST_PROBLEMS
    for name in BUILTIN:
        prob = get_problem(name)
        assert isinstance(prob, Problem)
        assert prob.name == name
        assert prob.dim == prob.oracle.dim == DIMS[name]
        assert prob.n_samples == (569 if name == "logistic" else 100)
        assert prob.dtype == F64 and prob.device == torch.device("cpu")
        assert prob.target_accuracy == (None if name == "logistic" else 1.0)
        assert isinstance(prob.description, str) and str(prob.dim) in prob.description


def test_toy_net_sizes_are_the_papers():
    assert TOY_SIZES == {"small": (2, 2, 2, 2, 2, 2, 2), "medium": (2, 4, 8, 8, 4, 2, 2),
                         "large": (2, 10, 20, 20, 10, 2, 2)}


def test_bad_names_and_dtypes_raise_value_error_naming_the_value():
    with pytest.raises(ValueError) as err:
        get_problem("toy-huge")
    msg = str(err.value)
    assert "'toy-huge'" in msg and all(name in msg for name in PROBLEMS)
    with pytest.raises(ValueError, match="float16"):
        get_problem("toy-small", dtype=torch.float16)


def test_problem_is_frozen():
    prob = get_problem("toy-small")
    with pytest.raises(dataclasses.FrozenInstanceError):
        prob.dim = 3


def test_importing_the_library_needs_neither_ray_nor_sklearn():
    code = "import sys, sqn_ray.problems; print('ray' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- toy data --------------------------------------------------------------------------------------------
def test_toy_data_is_the_papers_sine_bands():
    X, labels = toy_data()
    assert X.shape == (100, 2) and X.dtype == F64 and labels.dtype == torch.long
    j = np.arange(50)
    x = j / 50
    np.testing.assert_array_equal(X[:50, 0].numpy(), x)
    np.testing.assert_array_equal(X[50:, 0].numpy(), x)
    np.testing.assert_allclose(X[:50, 1].numpy(), np.sin(8 * x) + 0.8, rtol=0, atol=1e-15)
    np.testing.assert_allclose(X[50:, 1].numpy(), np.sin(8 * x) - 0.8, rtol=0, atol=1e-15)
    assert labels[:50].tolist() == [1] * 50 and labels[50:].tolist() == [0] * 50
    X32, _ = toy_data(F32)
    assert X32.dtype == F32 and torch.equal(X32, X.float())


def test_toy_data_matches_the_outside_contract_check():
    """Same points in the same order as /work/shared/checks/minimize_contract.py builds them."""
    xx = np.arange(50) / 50.0
    X = torch.tensor(np.stack([np.r_[xx, xx], np.r_[np.sin(8 * xx) + 0.8, np.sin(8 * xx) - 0.8]], 1))
    ours, labels = toy_data()
    torch.testing.assert_close(ours, X, rtol=0, atol=1e-15)
    assert labels.tolist() == [1] * 50 + [0] * 50


# -- oracle vs fun -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTIN)
def test_oracle_and_fun_are_the_same_function(name):
    prob = get_problem(name)
    gen = torch.Generator().manual_seed(5)
    w = 0.5 * torch.randn(prob.dim, generator=gen, dtype=F64)
    V = torch.randn(prob.dim, 3, generator=gen, dtype=F64)
    f, g = prob.oracle.loss_and_grad(w)
    assert float(f) == pytest.approx(float(prob.fun(w)), rel=1e-13)
    assert rel_err(g, autograd_grad(prob.fun, w)) < 1e-12
    x = w.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(prob.fun(x), x, create_graph=True)
    HV_ref = torch.stack([torch.autograd.grad(gx, x, V[:, i], retain_graph=True)[0] for i in range(3)], 1)
    assert rel_err(prob.oracle.hvps(w, V), HV_ref) < 1e-12
    W = w.unsqueeze(1) + V
    G_ref = torch.stack([autograd_grad(prob.fun, W[:, i]) for i in range(3)], 1)
    assert rel_err(prob.oracle.grads(W), G_ref) < 1e-12


@pytest.mark.parametrize("name", BUILTIN)
def test_float32_problems_agree_with_float64(name):
    p64, p32 = get_problem(name), get_problem(name, dtype=F32)
    w = p64.init(1) if name != "logistic" else torch.full((31,), 0.1, dtype=F64)
    f32, g32 = p32.oracle.loss_and_grad(w.float())
    assert f32.dtype == g32.dtype == F32 == p32.init(1).dtype
    assert float(f32) == pytest.approx(float(p64.fun(w)), rel=1e-5)
    assert float(p32.fun(w.float())) == pytest.approx(float(f32), rel=1e-5)
    assert rel_err(g32.double(), p64.oracle.loss_and_grad(w)[1]) < 1e-4


# -- initial points ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["toy-small", "toy-medium", "toy-large"])
def test_init_is_seeded_standard_normal_in_float64_then_cast(name):
    prob, prob32 = get_problem(name), get_problem(name, dtype=F32)
    w0 = prob.init(7)
    assert w0.shape == (prob.dim,) and w0.dtype == F64 and w0.device == torch.device("cpu")
    assert torch.equal(w0, prob.init(7))  # same seed, same point
    assert not torch.equal(w0, prob.init(8))
    expected = torch.randn(prob.dim, generator=torch.Generator().manual_seed(7), dtype=F64)
    assert torch.equal(w0, expected)
    assert torch.equal(prob32.init(7), w0.to(F32))  # same point in float32, rounded once
    assert torch.equal(get_problem(name, device="cpu").init(7), w0)


def test_init_draws_look_standard_normal():
    w = get_problem("toy-large").init(0)  # 908 draws
    assert abs(float(w.mean())) < 4 / math.sqrt(908)
    assert 0.85 < float(w.std()) < 1.15


def test_logistic_init_is_zero_for_every_seed():
    prob = get_problem("logistic")
    assert torch.equal(prob.init(0), torch.zeros(31, dtype=F64))
    assert torch.equal(prob.init(123), prob.init(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_init_and_oracle_on_cuda_match_cpu():
    cpu, gpu = get_problem("toy-medium"), get_problem("toy-medium", device="cuda")
    w = gpu.init(3)
    assert w.device.type == "cuda" and torch.equal(w.cpu(), cpu.init(3))
    f, g = gpu.oracle.loss_and_grad(w)
    f0, g0 = cpu.oracle.loss_and_grad(cpu.init(3))
    assert float(f) == pytest.approx(float(f0), rel=1e-12) and rel_err(g.cpu(), g0) < 1e-12
    V = torch.randn(gpu.dim, 4, dtype=F64)
    assert rel_err(gpu.oracle.hvps(w, V.cuda()).cpu(), cpu.oracle.hvps(cpu.init(3), V)) < 1e-12


# -- accuracy ----------------------------------------------------------------------------------------------
def test_toy_saddle_point_has_loss_ln2_and_accuracy_one_half():
    """All weights zero: both logits 0 for every point, softmax (1/2, 1/2): loss ln 2; the argmax tie goes to
    class 0, which is right for exactly the 50 points of class 0."""
    for name in ("toy-small", "toy-medium", "toy-large"):
        prob = get_problem(name)
        w = torch.zeros(prob.dim, dtype=F64)
        assert float(prob.oracle.loss(w)) == pytest.approx(math.log(2), rel=1e-15)
        assert prob.accuracy(w) == 0.5


@pytest.mark.parametrize("dtype", [F64, F32])
def test_toy_accuracy_on_a_hand_built_threshold_net(dtype):
    """A small net that predicts class 1 iff the point's height y is positive.

    Layer 1 feeds 10·y into hidden unit 0 (W[1, 0] = 10); layers 2-5 pass unit 0 on (W[0, 0] = 1); all else 0.
    Unit 0 then carries s(y) = σ∘σ∘σ∘σ∘σ(10 y), increasing in y. The output logits are (0, s(y) − s(0)), so class 1
    wins iff y > 0. Expected accuracy: class-1 points with sin(8x)+0.8 > 0 plus class-0 points with
    sin(8x)−0.8 ≤ 0, counted directly.
    """
    prob = get_problem("toy-small", dtype=dtype)
    w = torch.zeros(prob.dim, dtype=F64)
    block = 6  # each layer is a 2x2 W (4 entries, row-major) and a bias (2)
    w[0 * block + 2] = 10.0  # layer 1: W[1, 0] (input y -> unit 0)
    for layer in (1, 2, 3, 4):
        w[layer * block + 0] = 1.0  # W[0, 0]
    s0 = 0.0
    for _ in range(5):
        s0 = 1 / (1 + math.exp(-s0))
    w[5 * block + 1] = 1.0  # output layer W[0, 1]: logit of class 1 = unit 0
    w[5 * block + 5] = -s0  # its bias: − s(0)
    x = np.arange(50) / 50
    y1, y0 = np.sin(8 * x) + 0.8, np.sin(8 * x) - 0.8
    assert min(np.abs(y1).min(), np.abs(y0).min()) > 5e-3  # no point sits on the threshold
    expected = (np.sum(y1 > 0) + np.sum(y0 <= 0)) / 100
    assert 0.5 < expected < 1.0  # the bands are not separated by y = 0: a real test of the count
    assert prob.accuracy(w.to(dtype)) == pytest.approx(expected, abs=1e-12)


# -- the convex problem's known answer -------------------------------------------------------------------
def test_logistic_solution_is_a_stationary_point_and_the_unique_minimum():
    prob = get_problem("logistic")
    w_star = solution()
    assert w_star.shape == (31,) and w_star.dtype == F64
    assert float(prob.oracle.loss_and_grad(w_star)[1].norm()) < 1e-8
    assert float(autograd_grad(prob.fun, w_star).norm()) < 1e-8
    H = prob.oracle.hvps(w_star, torch.eye(31, dtype=F64))
    torch.testing.assert_close(H, H.T, rtol=0, atol=1e-15)
    assert float(torch.linalg.eigvalsh(H).min()) > 0  # strictly convex: w* is the unique minimiser
    gen = torch.Generator().manual_seed(0)
    f_star = float(prob.fun(w_star))
    for _ in range(5):
        assert float(prob.fun(w_star + 1e-3 * torch.randn(31, generator=gen, dtype=F64))) > f_star
    assert solution() is not w_star and torch.equal(solution(), w_star)  # cached, but a fresh tensor


def test_logistic_solution_matches_scikit_learn():
    """F = mean log-loss + (λ/2)‖β‖² (intercept free) has the minimiser of LogisticRegression(C = 1/(λ n))."""
    from sklearn.linear_model import LogisticRegression

    X, y = breast_cancer()
    n = len(y)
    clf = LogisticRegression(C=1.0 / (DEFAULT_LAMBDA * n), tol=1e-12, max_iter=10_000)
    clf.fit(X.numpy(), y.numpy())
    w_sk = torch.tensor(np.r_[clf.coef_[0], clf.intercept_], dtype=F64)
    assert rel_err(solution(), w_sk) < 1e-5
    prob = get_problem("logistic")
    assert prob.accuracy(solution()) == pytest.approx(clf.score(X.numpy(), y.numpy()), abs=1e-12)
    assert prob.accuracy(solution()) > 0.95


def test_logistic_data_is_standardised():
    X, y = breast_cancer()
    assert X.shape == (569, 30) and set(y.tolist()) == {0.0, 1.0}
    torch.testing.assert_close(X.mean(0), torch.zeros(30, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(X.std(0, unbiased=False), torch.ones(30, dtype=F64), rtol=0, atol=1e-12)


def test_the_toy_net_written_as_a_user_writes_it_is_the_same_F():
    from sqn_ray.problems.toy import toy_fun, toy_user_fun

    w = get_problem("toy-large").init(3)
    assert float(toy_user_fun("large")(w)) == pytest.approx(float(toy_fun("large")(w)), rel=1e-13)
