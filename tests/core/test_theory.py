"""The fixed step rule of the line-search methods and the paper's Lemma 3 / Theorem 4, checked on the logistic
problem (sqn_ray.theory): exact steps and costs, a linear rate, eigenvalues of H_k inside the bounds."""
from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sqn_ray import minimize
from sqn_ray.cli import main
from sqn_ray.io import read_parquet_metadata
from sqn_ray.linalg.lbfgs import dense_lbfgs_inverse, lbfgs_gamma
from sqn_ray.optim.methods import LineSearchMethod
from sqn_ray.problems.logistic import logistic_oracle, solution
from sqn_ray.spectral import dense_hessian
from sqn_ray.theory import (METADATA_KEY, fixed_step_run, hessian_eigen_range, inverse_hessian_eigenvalues,
                            lemma3_bounds, log_linear_fit, logistic_smoothness, theorem4_factor,
                            theorem4_max_step, theory_study)

D = 5
LINE_SEARCH = ("s-lbfgs", "lbfgs", "bfgs")
TIMES = ["wall_time", "t_pairs", "t_model", "t_search", "t_grad"]


def quadratic():
    """F(w) = ½ wᵀAw − bᵀw with a fixed SPD A (eigenvalues 1..5 after a rotation)."""
    Q = torch.linalg.qr(torch.tensor(np.random.default_rng(0).standard_normal((D, D))))[0]
    A = Q @ torch.diag(torch.arange(1.0, D + 1, dtype=torch.float64)) @ Q.T
    b = torch.linspace(-1, 1, D, dtype=torch.float64)
    return A, b, lambda w: 0.5 * w @ (A @ w) - b @ w


W0 = torch.tensor([0.3, -0.2, 0.5, 0.1, -0.4], dtype=torch.float64)


# -- the rule ----------------------------------------------------------------------------------------------
def test_a_gradient_first_step_is_exactly_w_minus_lr_g():
    A, b, fun = quadratic()
    res = minimize(fun, W0, "s-lbfgs", step_rule="fixed", lr=0.3, max_iters=1, gtol=0.0)
    g0 = A @ W0 - b
    torch.testing.assert_close(res.x, W0 - 0.3 * g0, rtol=0, atol=1e-15)  # H_0 = I, not min(1, 1/‖g‖₁)
    assert res.history.step_size.iloc[1] == 0.3


def test_the_fixed_step_is_w_plus_lr_p_with_the_dense_sampled_lbfgs_matrix():
    A, b, fun = quadratic()
    sigma = torch.tensor(np.random.default_rng(1).standard_normal((D, 3)))
    res = minimize(fun, W0, "s-lbfgs", step_rule="fixed", lr=0.7, max_iters=1, gtol=0.0, first_step="sampled",
                   memory=3, radius=0.5, directions=lambda d, m: sigma.clone())
    S = 0.5 * sigma
    Y = A @ S  # Option II: exact products on a quadratic
    H = dense_lbfgs_inverse(S, Y, lbfgs_gamma(float(S[:, -1] @ Y[:, -1]), float(Y[:, -1] @ Y[:, -1])))
    torch.testing.assert_close(res.x, W0 - 0.7 * H @ (A @ W0 - b), rtol=1e-12, atol=1e-14)


def test_lbfgs_with_a_fixed_step_uses_the_path_pair():
    A, b, fun = quadratic()
    res = minimize(fun, W0, "lbfgs", step_rule="fixed", lr=0.2, max_iters=2, gtol=0.0)
    w1 = W0 - 0.2 * (A @ W0 - b)
    s, y = w1 - W0, A @ (w1 - W0)
    H = dense_lbfgs_inverse(s[:, None], y[:, None], float(s @ y) / float(y @ y))
    torch.testing.assert_close(res.x, w1 - 0.2 * H @ (A @ w1 - b), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method, options, per_step", [
    ("s-lbfgs", {}, (1, 1, 3)), ("s-lbfgs", {"sampling": "grad-diff"}, (1, 1 + 3, 0)),
    ("lbfgs", {}, (1, 1, 0)), ("bfgs", {}, (1, 1, 0))])
def test_a_fixed_step_costs_one_loss_and_gradient_plus_the_pairs(method, options, per_step):
    _, _, fun = quadratic()
    extra = {"memory": 3} if method != "bfgs" else {}
    res = minimize(fun, W0, method, step_rule="fixed", lr=0.1, max_iters=6, gtol=0.0, **extra, **options)
    h = res.history
    steps = np.diff(h[["n_fun", "n_grad", "n_hvp"]].to_numpy(), axis=0)
    first = (1, 1, 0)  # the gradient first step samples nothing
    assert steps.tolist() == [list(first)] + [list(per_step)] * 5
    assert (h.inner_iters.iloc[1:] == 0).all() and h.accepted.all() and (h.step_size.iloc[1:] == 0.1).all()


@pytest.mark.parametrize("method", LINE_SEARCH)
def test_a_fixed_step_into_overflow_ends_as_diverged_without_raising(method):
    res = minimize(lambda w: (w ** 4).sum(), torch.linspace(-1, 1, 6, dtype=torch.float64), method,
                   step_rule="fixed", lr=1e3, max_iters=100)
    assert res.status == "diverged" and "non-finite" in res.message
    assert not (np.isfinite(res.history.loss.iloc[-1]) and np.isfinite(res.history.grad_norm.iloc[-1]))


def test_a_line_search_method_rejects_an_unknown_step_rule():
    from sqn_ray.curvature.models import LBFGSInverse
    from sqn_ray.curvature.sources import PathPairs

    with pytest.raises(ValueError, match=r"step_rule='wolfe' is not one of \('armijo', 'fixed'\)"):
        LineSearchMethod(source=PathPairs(memory=3), model=LBFGSInverse(), step_rule="wolfe")


@pytest.mark.parametrize("method", LINE_SEARCH)
def test_the_default_step_rule_is_armijo_bit_for_bit_and_ignores_lr(method):
    oracle = logistic_oracle()
    w0 = torch.zeros(oracle.dim, dtype=torch.float64)
    runs = [minimize(oracle, w0, method, max_iters=25, seed=2, **o)
            for o in ({}, {"step_rule": "armijo"}, {"step_rule": "armijo", "lr": 0.37})]
    for other in runs[1:]:
        assert torch.equal(runs[0].x, other.x)
        assert runs[0].history.drop(columns=TIMES).equals(other.history.drop(columns=TIMES))
    assert runs[0].options["step_rule"] == "armijo"


# -- the constants -----------------------------------------------------------------------------------------
def test_lemma3_bounds_hold_for_exact_pairs_of_an_spd_matrix():
    rng = np.random.default_rng(3)
    for d, m in ((4, 2), (6, 6), (8, 3)):
        Q = torch.linalg.qr(torch.tensor(rng.standard_normal((d, d))))[0]
        lam = torch.tensor(np.geomspace(0.05, 20.0, d))
        A = Q @ torch.diag(lam) @ Q.T
        S = torch.tensor(rng.standard_normal((d, m)))
        eig, H = inverse_hessian_eigenvalues(S, A @ S, 1e-8)
        bounds = lemma3_bounds(float(lam[0]), float(lam[-1]), d, m)
        assert bounds.mu1 <= eig[0] and eig[-1] <= bounds.mu2
        assert bounds.mu1 == pytest.approx(1 / ((d + m) * 20.0))
        assert bounds.log10_mu2 == pytest.approx((d + m - 1) * math.log10((d + m) * 20) - (d + m) * math.log10(0.05))
        torch.testing.assert_close(H @ (A @ S[:, -1]), S[:, -1], rtol=1e-9, atol=1e-11)  # the secant equation


def test_lemma3_mu2_overflows_gracefully_and_theorem4_formulas():
    b = lemma3_bounds(1e-3, 10.0, 200, 50)
    assert b.mu2 == math.inf and b.log10_mu2 > 308 and b.mu1 == pytest.approx(1 / 2500)
    assert theorem4_max_step(0.5, 4.0, 2.0) == pytest.approx(0.5 / 32) and theorem4_max_step(0.5, math.inf, 2.0) == 0
    assert theorem4_factor(0.1, 0.2, 0.5) == pytest.approx(0.99)


def test_log_linear_fit_recovers_a_geometric_rate():
    rate, r2 = log_linear_fit(3.0 * 0.8 ** np.arange(40))
    assert rate == pytest.approx(0.8, rel=1e-12) and r2 == pytest.approx(1.0, abs=1e-12)
    noisy = 0.9 ** np.arange(40) * np.exp(np.random.default_rng(0).normal(0, 0.5, 40))
    assert log_linear_fit(noisy)[1] < 0.99
    assert all(math.isnan(v) for v in log_linear_fit(np.array([1.0, 0.5])))


def test_the_logistic_smoothness_bound_is_the_hessian_at_zero_and_bounds_it_elsewhere():
    oracle = logistic_oracle()
    L = logistic_smoothness(oracle.Xt, oracle.lam)
    lo0, hi0 = hessian_eigen_range(oracle, torch.zeros(oracle.dim, dtype=torch.float64))
    assert hi0 == pytest.approx(L, rel=1e-10)  # D = I/4 at w = 0, the intercept column ⟂ the centred features
    lo, hi = hessian_eigen_range(oracle, solution())
    assert 0 < lo < oracle.lam and hi < L  # the unpenalised intercept: λ_min below λ


# -- the theory on the logistic problem --------------------------------------------------------------------
@pytest.fixture(scope="module")
def logistic():
    oracle = logistic_oracle()
    return oracle, torch.zeros(oracle.dim, dtype=torch.float64), solution()


@pytest.fixture(scope="module")
def theorem_regime(logistic):
    return theory_study(*logistic, iterations=150)


@pytest.fixture(scope="module")
def unit_step(logistic):
    return theory_study(*logistic, lr=1.0, iterations=120)


def test_the_default_step_is_inside_theorem4s_condition_with_the_measured_constants(theorem_regime):
    c = theorem_regime.constants
    assert c["alpha_rule"] == "theorem4-measured" and c["alpha_in_condition"]
    assert 0 < c["alpha"] <= c["mu1_measured"] / (c["mu2_measured"] ** 2 * c["L"])
    assert c["log10_alpha_max_theory"] < -300  # the theory's own μ2 asks for a step below any double


@pytest.mark.parametrize("study", ["theorem_regime", "unit_step"])
def test_every_h_k_has_eigenvalues_inside_lemma3s_bounds(study, request):
    report = request.getfixturevalue(study)
    c, rows = report.constants, report.rows
    lo, hi = np.array(rows["h_eig_min"][:-1]), np.array(rows["h_eig_max"][:-1])
    assert (c["mu1_theory"] <= lo).all() and (hi <= c["mu2_theory"]).all()
    assert c["mu1_measured"] == lo.min() and c["mu2_measured"] == hi.max()
    assert c["mu1_theory"] < c["mu1_measured"] <= c["mu2_measured"] < 1e3 < c["mu2_theory"]
    # μ is the least Hessian eigenvalue seen: no larger than at any iterate, positive
    assert 0 < c["mu"] <= min(rows["hess_eig_min"]) and max(rows["hess_eig_max"]) <= c["L"] * (1 + 1e-12)


def test_theorem4_bound_holds_and_the_rate_is_linear_in_the_theorem_regime(theorem_regime):
    c, rows = theorem_regime.constants, theorem_regime.rows
    gap, envelope = np.array(rows["gap"]), np.array(rows["theorem4_envelope"])
    k = np.arange(len(gap))
    assert envelope == pytest.approx(gap[0] * (1 - c["alpha"] * c["mu"] * c["mu1_measured"]) ** k, rel=1e-12)
    assert (gap <= envelope).all() and gap[-1] < gap[0]
    ratio = np.array(rows["ratio"][:-1])
    assert c["fit_iterations"] == len(gap)  # a tiny α stays far above round-off
    assert (ratio <= c["max_ratio"]).all() and c["max_ratio"] < 1 and c["r2"] > 0.99
    assert c["rate"] <= c["max_ratio"] < 1


def test_a_unit_fixed_step_converges_linearly_down_to_round_off(unit_step):
    c, rows = unit_step.constants, unit_step.rows
    n = c["fit_iterations"]
    assert 10 < n < len(rows["gap"])  # reached round-off within the run
    ratio = np.array(rows["ratio"][:n - 1])
    assert (ratio <= 0.9).all() and c["max_ratio"] == ratio.max()
    assert c["r2"] > 0.99 and 0 < c["rate"] < 0.8
    assert not c["alpha_in_condition"] and c["alpha_rule"] == "user"


def test_the_observed_h_k_is_the_matrix_the_method_stepped_with(logistic):
    oracle, w0, _ = logistic
    for first_step in ("sampled", "gradient"):
        run = fixed_step_run(oracle, w0, 0.8, iterations=12, first_step=first_step, keep_matrices=True)
        assert len(run.matrices) == len(run.iterates) - 1 == 12
        for w, w_next, H in zip(run.iterates, run.iterates[1:], run.matrices):
            g = oracle.loss_and_grad(w)[1]
            torch.testing.assert_close(w_next - w, -0.8 * H @ g, rtol=1e-10, atol=1e-14)
    assert (run.pairs_kept[1:] == 10).all() and run.pairs_kept[0] == 0 and (run.h_eigs[0] == 1).all()


def test_a_diverging_step_is_reported_not_raised(logistic):
    report = theory_study(*logistic, lr=1e6, iterations=40)
    c, gap = report.constants, report.rows["gap"]
    assert c["status"] == "diverged" and not math.isfinite(gap[-1]) and len(gap) < 41
    assert c["mu"] <= 1e-12 and c["mu2_theory"] == math.inf  # far out the problem is not strongly convex


def test_the_hessian_at_an_iterate_is_the_dense_one(logistic):
    oracle, w0, w_star = logistic
    e = torch.linalg.eigvalsh(dense_hessian(oracle, w_star))
    assert hessian_eigen_range(oracle, w_star) == (float(e[0]), float(e[-1]))


# -- the command -------------------------------------------------------------------------------------------
def test_sqn_ray_theory_writes_one_tidy_table(tmp_path, capsys):
    out = tmp_path / "theory.parquet"
    assert main(["theory", "--out", str(out), "--iterations", "15", "--lr", "0.5", "--memory", "4"]) == 0
    printed = capsys.readouterr().out
    assert "Lemma 3" in printed and "Theorem 4" in printed and f"wrote 16 rows to {out}" in printed
    table = pq.read_table(out)
    assert table.num_rows == 16 and table.column("iteration").to_pylist() == list(range(16))
    assert {"gap", "ratio", "h_eig_min", "h_eig_max", "hess_eig_min", "theorem4_envelope"} <= set(table.column_names)
    meta = read_parquet_metadata(out)[METADATA_KEY]
    assert meta["alpha"] == 0.5 and meta["memory"] == 4 and meta["mu2_theory"] > meta["mu2_measured"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theory.parquet"]  # no temporary file left


def test_sqn_ray_theory_rejects_a_bad_step(capsys):
    assert main(["theory", "--lr", "-1"]) == 2
    assert "lr must be a finite number > 0, got -1.0" in capsys.readouterr().err
