"""Algorithm 1 (pair sampling) and the methods' mathematics on quadratics with known answers."""
import math

import numpy as np
import pytest
import torch

from sqn_ray import METHODS, minimize
from sqn_ray.curvature.sampling import sample_pairs, sample_steps
from sqn_ray.objective import AutogradOracle, Objective
from sqn_ray.optim.globalization import TrustRegionRule, armijo_backtracking

D = 12


def quadratic(seed=0, indefinite=False, d=D):
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    eig = torch.linspace(-1.0 if indefinite else 0.5, 4.0, d, dtype=torch.float64)
    A = Q @ torch.diag(eig) @ Q.T
    b = torch.randn(d, generator=gen, dtype=torch.float64)
    return A, b, (lambda w: 0.5 * w @ A @ w - b @ w)


def quartic_like(w):
    """A smooth nonconvex function for finite-difference checks."""
    return torch.sum(torch.sin(w) * w ** 2) + 0.25 * torch.sum(w ** 4) + (w[:-1] * w[1:]).sum()


def objective_for(fun, d=D, dtype=torch.float64, **kw):
    return Objective(AutogradOracle(fun, d, dtype, **kw))


@pytest.mark.parametrize("backend", ["batched", "loop"])
def test_option2_gives_y_equal_a_s_exactly_on_a_quadratic(backend):
    A, b, fun = quadratic(1, indefinite=True)
    obj = objective_for(fun, hvp_backend=backend)
    w = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    S = sample_steps(D, 5, 0.7, generator=torch.Generator().manual_seed(3), directions=None, normalize=False,
                     dtype=torch.float64, device=torch.device("cpu"))
    Y = sample_pairs(obj, w, obj.value_and_grad(w)[1], S, "hvp")
    torch.testing.assert_close(Y, A @ S, rtol=1e-12, atol=1e-12)
    assert obj.counters.n_hvp == 5 and obj.counters.n_grad == 1


def test_option1_tends_to_option2_as_radius_shrinks():
    obj = objective_for(quartic_like)
    w = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    g = obj.value_and_grad(w)[1]
    errors = []
    for r in (1e-1, 1e-2, 1e-3, 1e-4):
        S = sample_steps(D, 4, r, generator=torch.Generator().manual_seed(5), directions=None, normalize=True,
                         dtype=torch.float64, device=torch.device("cpu"))
        Y1, Y2 = sample_pairs(obj, w, g, S, "grad-diff"), sample_pairs(obj, w, g, S, "hvp")
        errors.append(float((Y1 - Y2).norm() / Y2.norm()))
    # first-order accurate finite differences: the relative error falls ~10x per decade of r
    for coarse, fine in zip(errors, errors[1:]):
        assert fine < coarse / 5
    assert errors[-1] < 1e-3


def test_directions_are_reproducible_and_follow_the_documented_scaling():
    kw = dict(directions=None, dtype=torch.float64, device=torch.device("cpu"))
    S1 = sample_steps(400, 3, 2.0, generator=torch.Generator().manual_seed(9), normalize=False, **kw)
    S2 = sample_steps(400, 3, 2.0, generator=torch.Generator().manual_seed(9), normalize=False, **kw)
    torch.testing.assert_close(S1, S2, rtol=0, atol=0)
    assert S1.norm(dim=0).mean() == pytest.approx(2.0 * math.sqrt(400), rel=0.1)  # ‖s‖ ≈ r√d, unnormalised
    Sn = sample_steps(400, 3, 2.0, generator=torch.Generator().manual_seed(9), normalize=True, **kw)
    torch.testing.assert_close(Sn.norm(dim=0), torch.full((3,), 2.0, dtype=torch.float64))
    # float32 draws are the float64 draws rounded: one seed, one stream, whatever the dtype
    S32 = sample_steps(400, 3, 2.0, generator=torch.Generator().manual_seed(9), normalize=False,
                       directions=None, dtype=torch.float32, device=torch.device("cpu"))
    torch.testing.assert_close(S32, S1.float())


def test_bad_directions_callable_is_reported():
    with pytest.raises(ValueError, match=r"must return a tensor of shape \(5, 2\)"):
        sample_steps(5, 2, 1.0, generator=None, directions=lambda d, m: torch.ones(m, d), normalize=False,
                     dtype=torch.float64, device=torch.device("cpu"))


def test_armijo_steps_satisfy_sufficient_decrease():
    _, _, fun = quadratic(3)
    obj = objective_for(fun)
    w = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    f, g = obj.value_and_grad(w)
    p = -g
    for initial in (1e-3, 1.0, 64.0):
        n0 = obj.counters.n_fun
        res = armijo_backtracking(obj, w, float(f), float(g @ p), p, initial, c1=1e-4)
        assert res.step_size is not None
        assert float(fun(w + res.step_size * p)) <= float(f) + 1e-4 * res.step_size * float(g @ p)
        # it is the largest halving of the initial step that does: the previous trial failed
        if res.step_size < initial:
            twice = 2 * res.step_size
            assert float(fun(w + twice * p)) > float(f) + 1e-4 * twice * float(g @ p)
        assert res.step_size == initial / 2 ** (res.evaluations - 1)
        assert obj.counters.n_fun - n0 == res.evaluations


def test_armijo_rejects_instead_of_accepting_a_tiny_step():
    obj = objective_for(lambda w: (w ** 2).sum())
    w = torch.ones(D, dtype=torch.float64)
    p = w.clone()  # an ascent direction: no step satisfies the condition
    res = armijo_backtracking(obj, w, float(D), -1.0, p, 1.0, c1=1e-4, min_step=1e-6)
    assert res.step_size is None


def test_trust_region_rule_guards_and_updates():
    rule = TrustRegionRule()
    assert rule.ratio(1.0, 0.5, 0.0) == -math.inf  # no predicted decrease: reject
    assert rule.ratio(1.0, math.nan, 1.0) == -math.inf
    assert not rule.accepts(-math.inf) and rule.accepts(1e-5) and not rule.accepts(1e-7)
    assert (rule.next_radius(1.0, 0.9) == 2.0 and rule.next_radius(1.0, 0.05) == 0.5
            and rule.next_radius(1.0, 0.5) == 1.0)


@pytest.mark.parametrize("method", ["s-lsr1", "s-lbfgs"])
@pytest.mark.parametrize("sampling", ["hvp", "grad-diff"])
def test_exact_evaluation_counts(method, sampling):
    _, _, fun = quadratic(4, indefinite=(method == "s-lsr1"))
    m = 3
    res = minimize(fun, torch.zeros(D, dtype=torch.float64), method=method, memory=m, sampling=sampling,
                   max_iters=6, seed=0, gtol=0.0)
    h = res.history
    assert (h.n_fun.iloc[0], h.n_grad.iloc[0], h.n_hvp.iloc[0]) == (1, 1, 0)
    for k in range(1, len(h)):
        row, prev = h.iloc[k], h.iloc[k - 1]
        sampled_this_step = not (method == "s-lbfgs" and k == 1)  # S-LBFGS: gradient first step, no sampling
        m_k = m if sampled_this_step else 0
        assert row.n_hvp - prev.n_hvp == (m_k if sampling == "hvp" else 0)
        accepted = bool(row.accepted)
        trials = int(row.inner_iters) if method == "s-lbfgs" else 1  # Armijo evaluations, or one TR trial
        assert row.n_fun - prev.n_fun == trials + accepted
        assert row.n_grad - prev.n_grad == accepted + (m_k if sampling == "grad-diff" else 0)
        alone = trials
        assert row.grad_equivalents - prev.grad_equivalents == pytest.approx(
            (row.n_grad - prev.n_grad) + (row.n_hvp - prev.n_hvp) + 0.5 * alone)


@pytest.mark.parametrize("method", ["s-lsr1", "s-lbfgs"])
def test_option2_trajectories_identical_across_radii(method):
    fun = quartic_like
    w0 = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    runs = [minimize(fun, w0, method=method, radius=r, sampling="hvp", max_iters=25, seed=5).history
            for r in (1e-3, 1.0, 100.0)]
    for h in runs[1:]:
        assert len(h) == len(runs[0])
        np.testing.assert_allclose(h.loss, runs[0].loss, rtol=1e-7)
        np.testing.assert_array_equal(h.accepted, runs[0].accepted)
    # …while the realised ‖s‖ does scale with r (it is recorded either way)
    assert runs[2].s_norm.iloc[2] == pytest.approx(1e5 * runs[0].s_norm.iloc[2], rel=1e-9)


def test_option1_is_not_invariant_to_the_radius():
    w0 = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    a = minimize(quartic_like, w0, method="s-lsr1", radius=1e-3, sampling="grad-diff", max_iters=10, seed=5)
    b = minimize(quartic_like, w0, method="s-lsr1", radius=1.0, sampling="grad-diff", max_iters=10, seed=5)
    assert not np.allclose(a.history.loss, b.history.loss, rtol=1e-6)


@pytest.mark.parametrize("method", ["s-lsr1", "lsr1", "sr1"])
@pytest.mark.parametrize("tr_solver", ["cg-steihaug", "exact"])
def test_trust_region_methods_keep_steps_inside_the_radius(method, tr_solver):
    _, _, fun = quadratic(5, indefinite=True)
    res = minimize(lambda w: fun(w) + 0.1 * (w ** 4).sum(), torch.ones(D, dtype=torch.float64), method=method,
                   tr_solver=tr_solver, max_iters=30, seed=1)
    h = res.history.iloc[1:]
    accepted = h[h.accepted.astype(bool)]
    assert (accepted.step_norm <= accepted.trust_radius * (1 + 1e-9)).all()
    assert res.history.loss.iloc[-1] < res.history.loss.iloc[0]


def test_sampled_lsr1_solves_a_quadratic_with_m_equal_d():
    # With m = d the Option II Nyström sketch is the Hessian itself: S-LSR1 is a TR Newton method and,
    # once the radius allows the Newton step, lands on the minimiser.
    A, b, fun = quadratic(6)
    res = minimize(fun, torch.zeros(D, dtype=torch.float64), method="s-lsr1", memory=D, max_iters=60, seed=0,
                   tr_solver="exact")
    torch.testing.assert_close(res.x, torch.linalg.solve(A, b), rtol=1e-8, atol=1e-8)
    assert res.status == "converged"


@pytest.mark.parametrize("method", ["lbfgs", "bfgs", "s-lbfgs"])
@pytest.mark.parametrize("trial_step", ["double-last", "unit"])
def test_line_search_methods_minimise_a_convex_quadratic(method, trial_step):
    A, b, fun = quadratic(7)
    res = minimize(fun, torch.zeros(D, dtype=torch.float64), method=method, max_iters=400, seed=0, gtol=1e-7,
                   trial_step=trial_step)
    assert res.status == "converged", res.message
    torch.testing.assert_close(res.x, torch.linalg.solve(A, b), rtol=1e-6, atol=1e-6)


def test_bfgs_with_unit_trial_steps_terminates_like_newton_on_a_quadratic():
    # BFGS with exact-enough steps on a d-dimensional quadratic: well within a few times d iterations
    A, b, fun = quadratic(7)
    res = minimize(fun, torch.zeros(D, dtype=torch.float64), method="bfgs", max_iters=4 * D, gtol=1e-9,
                   trial_step="unit")
    assert res.status == "converged", res.message


@pytest.mark.parametrize("method", [m for m in METHODS])
def test_every_method_is_deterministic_for_a_seed(method):
    w0 = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    a = minimize(quartic_like, w0, method=method, max_iters=8, seed=3).history
    b = minimize(quartic_like, w0, method=method, max_iters=8, seed=3).history
    np.testing.assert_array_equal(a.loss.to_numpy(), b.loss.to_numpy())
    np.testing.assert_array_equal(a.n_grad.to_numpy(), b.n_grad.to_numpy())
