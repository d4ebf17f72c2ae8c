"""The hand-written MLP oracle equals autograd on the plain definition of the same F, for every activation.

References: ∇F by torch.autograd.grad of :func:`mlp_loss`; ∇²F v by double backward (grad with
create_graph, then grad of gᵀv); Option I gradients by one autograd gradient per column.
"""
import math

import pytest
import torch

from sqn_ray.objective import Objective
from sqn_ray.problems.mlp import ACTIVATIONS, MLPOracle, layer_shapes, mlp_logits, mlp_loss, param_count

F64 = torch.float64
NETS = {"deep": [3, 5, 4, 3], "toy-large": [2, 10, 20, 20, 10, 2, 2], "linear": [4, 3]}
RTOL = 1e-12  # relative (in norm) agreement asked of float64 results


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def make(sizes, activation, dtype=F64, n=13, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, sizes[0], generator=gen, dtype=F64)
    labels = torch.randint(0, sizes[-1], (n,), generator=gen)
    oracle = MLPOracle(sizes, activation, X, labels, dtype, **kw)
    fun = lambda w: mlp_loss(w, sizes, activation, X.to(w.dtype), labels)  # noqa: E731 - reference F
    return oracle, fun, gen


def autograd_grad(fun, w):
    x = w.detach().clone().requires_grad_(True)
    f = fun(x)
    (g,) = torch.autograd.grad(f, x)
    return f.detach(), g


def autograd_hvps(fun, w, V):
    x = w.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fun(x), x, create_graph=True)
    return torch.stack([torch.autograd.grad(g, x, V[:, i], retain_graph=True)[0] for i in range(V.shape[1])], 1)


def randn(gen, *shape, dtype=F64):
    return torch.randn(*shape, generator=gen, dtype=F64).to(dtype)


# -- layout ---------------------------------------------------------------------------------------------
def test_param_count_and_layout():
    assert param_count([2, 2, 2, 2, 2, 2, 2]) == 36
    assert param_count([2, 4, 8, 8, 4, 2, 2]) == 176
    assert param_count([2, 10, 20, 20, 10, 2, 2]) == 908
    assert param_count([784, 100, 10]) == 79_510
    assert layer_shapes([3, 5, 2]) == [(3, 5), (5, 2)]
    with pytest.raises(ValueError, match=r"\[3\]"):
        layer_shapes([3])


def test_logits_follow_the_documented_flat_layout():
    """w = (W_1 row-major, b_1, W_2, b_2, …) and a ← a W + b, exactly as a user would unpack it."""
    sizes = [3, 4, 2]
    oracle, _, gen = make(sizes, "tanh")
    w = randn(gen, oracle.dim)
    W1, b1 = w[:12].view(3, 4), w[12:16]
    W2, b2 = w[16:24].view(4, 2), w[24:26]
    expected = torch.tanh(oracle.X @ W1 + b1) @ W2 + b2
    torch.testing.assert_close(oracle.logits(w), expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(mlp_logits(w, sizes, "tanh", oracle.X), expected, rtol=1e-14, atol=1e-14)


# -- exactness against autograd (float64) ----------------------------------------------------------------
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("net", NETS)
def test_loss_grad_hvps_grads_equal_autograd(net, activation):
    sizes = NETS[net]
    oracle, fun, gen = make(sizes, activation)
    d = oracle.dim
    w = randn(gen, d)
    V = randn(gen, d, 5)
    W = w.unsqueeze(1) + randn(gen, d, 4)

    f_ref, g_ref = autograd_grad(fun, w)
    f, g = oracle.loss_and_grad(w)
    assert abs(float(f) - float(f_ref)) <= RTOL * abs(float(f_ref))
    assert float(oracle.loss(w)) == pytest.approx(float(f_ref), rel=RTOL)
    assert rel_err(g, g_ref) <= RTOL

    HV = oracle.hvps(w, V)
    assert HV.shape == (d, 5)
    assert rel_err(HV, autograd_hvps(fun, w, V)) <= RTOL

    G = oracle.grads(W)
    G_ref = torch.stack([autograd_grad(fun, W[:, i])[1] for i in range(4)], 1)
    assert G.shape == (d, 4)
    assert rel_err(G, G_ref) <= RTOL


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_hessian_is_symmetric_and_hvps_are_linear(activation):
    """uᵀ(Hv) = vᵀ(Hu); H(αV₁ + βV₂) = αHV₁ + βHV₂; column k of HV does not depend on the other columns."""
    oracle, _, gen = make(NETS["deep"], activation)
    d = oracle.dim
    w = randn(gen, d)
    U, V = randn(gen, d, 3), randn(gen, d, 3)
    HU, HV = oracle.hvps(w, U), oracle.hvps(w, V)
    lhs, rhs = U.T @ HV, HU.T @ V  # (uᵢᵀ H vⱼ) both ways
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-14)
    alpha, beta = 0.7, -2.5
    torch.testing.assert_close(oracle.hvps(w, alpha * U + beta * V), alpha * HU + beta * HV, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(oracle.hvps(w, V[:, 1]), HV[:, 1], rtol=1e-13, atol=1e-15)  # (d,) in, (d,) out


def test_full_hessian_matches_autograd_and_is_symmetric():
    """All d columns at once (m = d = 36) on the small toy-shaped net: the whole Hessian."""
    sizes = [2, 2, 2, 2, 2, 2, 2]
    oracle, fun, gen = make(sizes, "sigmoid", n=20)
    w = randn(gen, oracle.dim)
    eye = torch.eye(oracle.dim, dtype=F64)
    H = oracle.hvps(w, eye)
    assert rel_err(H, autograd_hvps(fun, w, eye)) <= RTOL
    torch.testing.assert_close(H, H.T, rtol=1e-12, atol=1e-15)


def test_hvps_scale_with_the_direction_and_match_a_finite_difference():
    """∇²F v ≈ (∇F(w + h v) − ∇F(w − h v)) / 2h (O(h²)), an autograd-free check of the same thing."""
    oracle, _, gen = make(NETS["deep"], "sigmoid")
    w, v = randn(gen, oracle.dim), randn(gen, oracle.dim)
    h = 1e-4
    fd = (oracle.loss_and_grad(w + h * v)[1] - oracle.loss_and_grad(w - h * v)[1]) / (2 * h)
    assert rel_err(oracle.hvps(w, v), fd) < 1e-6


# -- caching ---------------------------------------------------------------------------------------------
def test_cached_state_is_reused_and_invalidated_by_in_place_updates():
    oracle, fun, gen = make(NETS["deep"], "tanh")
    w, V = randn(gen, oracle.dim), randn(gen, oracle.dim, 3)
    oracle.loss_and_grad(w)
    HV = oracle.hvps(w, V)  # from the cached state
    fresh, _, _ = make(NETS["deep"], "tanh", cache=False)
    torch.testing.assert_close(HV, fresh.hvps(w, V), rtol=0, atol=0)

    w.add_(0.3)  # same storage, new version: the oracle must notice
    torch.testing.assert_close(oracle.hvps(w, V), autograd_hvps(fun, w, V), rtol=1e-12, atol=1e-14)
    assert float(oracle.loss(w)) == pytest.approx(float(fun(w)), rel=1e-13)


def test_returned_tensors_are_not_the_cache():
    """Mutating what the oracle returned must not change its next answer at the same point."""
    oracle, _, gen = make(NETS["deep"], "sigmoid")
    w = randn(gen, oracle.dim)
    f1, g1 = oracle.loss_and_grad(w)
    f_copy, g_copy = f1.clone(), g1.clone()
    f1.zero_()
    g1.zero_()
    oracle.logits(w).zero_()
    f2, g2 = oracle.loss_and_grad(w)
    assert torch.equal(f2, f_copy) and torch.equal(g2, g_copy)


def test_non_contiguous_points_and_directions():
    oracle, fun, gen = make(NETS["deep"], "relu")
    d = oracle.dim
    W = randn(gen, d, 3)  # its columns are strided views
    V = randn(gen, 4, d).T  # a transposed (non-contiguous) block of directions
    g = oracle.loss_and_grad(W[:, 1])[1]
    assert rel_err(g, autograd_grad(fun, W[:, 1])[1]) <= RTOL
    assert rel_err(oracle.hvps(W[:, 1], V), autograd_hvps(fun, W[:, 1], V)) <= RTOL
    assert rel_err(oracle.grads(W.T.contiguous().T), oracle.grads(W.contiguous())) == 0.0


def test_changing_m_between_calls():
    oracle, fun, gen = make(NETS["deep"], "sigmoid")
    w = randn(gen, oracle.dim)
    for m in (4, 1, 7, 4):
        V = randn(gen, oracle.dim, m)
        assert rel_err(oracle.hvps(w, V), autograd_hvps(fun, w, V)) <= RTOL
    assert oracle.hvps(w, torch.empty(oracle.dim, 0, dtype=F64)).shape == (oracle.dim, 0)


# -- float32, accuracy, validation, counting -----------------------------------------------------------
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float32_agrees_with_float64(activation):
    sizes = NETS["toy-large"]
    o64, _, gen = make(sizes, activation)
    o32, _, _ = make(sizes, activation, dtype=torch.float32)
    w, V = randn(gen, o64.dim), randn(gen, o64.dim, 4)
    f64, g64 = o64.loss_and_grad(w)
    f32, g32 = o32.loss_and_grad(w.float())
    assert f32.dtype == g32.dtype == torch.float32
    assert float(f32) == pytest.approx(float(f64), rel=1e-5)
    assert rel_err(g32.double(), g64) < 1e-4
    HV32 = o32.hvps(w.float(), V.float())
    assert HV32.dtype == torch.float32 and rel_err(HV32.double(), o64.hvps(w, V)) < 1e-4
    G32 = o32.grads((w.unsqueeze(1) + V).float())
    assert rel_err(G32.double(), o64.grads(w.unsqueeze(1) + V)) < 1e-4


def test_accuracy_on_a_hand_constructed_point():
    """Zero weights everywhere, output bias (0, 1): every logit row is (0, 1), so class 1 is always predicted
    and the accuracy is the share of label-1 points; a bias (1, 0) predicts class 0."""
    sizes = [3, 4, 2]
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(10, 3, generator=gen, dtype=F64)
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, 1, 0, 0])
    oracle = MLPOracle(sizes, "sigmoid", X, labels)
    w = torch.zeros(oracle.dim, dtype=F64)
    w[-1] = 1.0
    assert oracle.accuracy(w) == pytest.approx(0.4)
    w[-1], w[-2] = 0.0, 1.0
    assert oracle.accuracy(w) == pytest.approx(0.6)
    assert isinstance(oracle.accuracy(w), float)
    # and the loss there is the cross-entropy of the constant softmax (e/(1+e), 1/(1+e))
    assert float(oracle.loss(w)) == pytest.approx(0.6 * math.log1p(math.exp(-1)) + 0.4 * math.log1p(math.e))


def test_bad_arguments_raise_with_the_value():
    X, labels = torch.zeros(5, 3), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="'softplus'"):
        MLPOracle([3, 2], "softplus", X, labels)
    with pytest.raises(ValueError, match="labels"):
        MLPOracle([3, 2], "relu", X, torch.full((5,), 2))
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        MLPOracle([4, 2], "relu", X, labels)
    oracle = MLPOracle([3, 2], "relu", X, labels)
    with pytest.raises(ValueError, match="float64"):
        oracle.loss(torch.zeros(8, dtype=torch.float32))


def test_objective_counts_through_the_oracle():
    """The oracle plugs into Objective: m HVPs count m, Option I at m points counts m gradients."""
    oracle, _, gen = make(NETS["deep"], "sigmoid")
    obj = Objective(oracle)
    w = randn(gen, oracle.dim)
    obj.value_and_grad(w)
    obj.hvp(w, randn(gen, oracle.dim, 6))
    obj.grads_at(w.unsqueeze(1) + randn(gen, oracle.dim, 3))
    assert (obj.counters.n_grad, obj.counters.n_hvp) == (4, 6)


def test_inference_mode_points_are_evaluated_not_cached():
    oracle, fun, gen = make(NETS["deep"], "sigmoid")
    with torch.inference_mode():
        w = randn(gen, oracle.dim)
        g = oracle.loss_and_grad(w)[1]
        V = randn(gen, oracle.dim, 2)
        HV = oracle.hvps(w, V)
    assert rel_err(g, autograd_grad(fun, w.clone())[1]) <= RTOL
    assert rel_err(HV, autograd_hvps(fun, w.clone(), V.clone())) <= RTOL


def test_wrong_block_shapes_are_refused():
    oracle, _, gen = make(NETS["deep"], "sigmoid")
    w = randn(gen, oracle.dim)
    with pytest.raises(ValueError, match="V must be"):
        oracle.hvps(w, randn(gen, oracle.dim + 1, 2))
    with pytest.raises(ValueError, match="W must be"):
        oracle.grads(randn(gen, oracle.dim - 1, 2))
