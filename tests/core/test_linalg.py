"""Identities of the curvature models and TR solvers against dense matrices."""
import numpy as np
import pytest
import torch

from sqn_ray.curvature.models import CompactLSR1, LBFGSInverse, angle_filter, gram_blocks
from sqn_ray.linalg.lbfgs import compact_inverse_apply, dense_lbfgs_inverse, two_loop
from sqn_ray.linalg.sr1 import CompactSR1, dense_sr1, sr1_filter
from sqn_ray.linalg.trust_region import (ReducedModel, cg_steihaug, cg_steihaug_hvp, exact_tr, newton_cg_tolerance,
                                        reduce_compact, reduce_dense)

torch.set_default_dtype(torch.float64)


def spd(d, gen, cond=50.0):
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
    return Q @ torch.diag(torch.logspace(0, np.log10(cond), d)) @ Q.T


def symmetric_indefinite(d, gen):
    A = torch.randn(d, d, generator=gen)
    return (A + A.T) / 2


def pairs_on(A, m, gen):
    S = torch.randn(A.shape[0], m, generator=gen)
    return S, A @ S


@pytest.mark.parametrize("m", [1, 3, 7])
def test_compact_and_two_loop_equal_dense_bfgs_inverse(m):
    gen = torch.Generator().manual_seed(m)
    A = spd(12, gen)
    S, Y = pairs_on(A, m, gen)
    g = torch.randn(12, generator=gen)
    gamma = float(S[:, -1] @ Y[:, -1] / (Y[:, -1] @ Y[:, -1]))
    dense = dense_lbfgs_inverse(S, Y, gamma) @ g
    torch.testing.assert_close(two_loop(g, S, Y, gamma), dense, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(compact_inverse_apply(g, S, Y, gamma), dense, rtol=1e-10, atol=1e-12)


def test_lbfgs_inverse_satisfies_newest_secant_and_is_positive_definite():
    gen = torch.Generator().manual_seed(0)
    A = spd(10, gen)
    S, Y = pairs_on(A, 4, gen)
    H = dense_lbfgs_inverse(S, Y, 0.3)
    torch.testing.assert_close(H @ Y[:, -1], S[:, -1])
    assert torch.linalg.eigvalsh(H).min() > 0


def test_lbfgs_model_filters_negative_curvature_pairs_and_falls_back_to_identity():
    gen = torch.Generator().manual_seed(1)
    S = torch.randn(6, 3, generator=gen)
    Y = -S  # every pair has sᵀy < 0
    g = torch.randn(6, generator=gen)
    p, stats = LBFGSInverse().direction(g, S, Y)
    assert stats == {"pairs_kept": 0, "identity_fallback": True}
    torch.testing.assert_close(p, -g)
    # a mix: only the positive-curvature pairs are kept, and the direction is the LBFGS one on those
    Y = torch.stack([S[:, 0] * 2.0, -S[:, 1], S[:, 2] * 0.5], dim=1)
    p, stats = LBFGSInverse().direction(g, S, Y)
    assert stats["pairs_kept"] == 2
    keep = [0, 2]
    gamma = float(S[:, 2] @ Y[:, 2] / (Y[:, 2] @ Y[:, 2]))
    torch.testing.assert_close(p, -two_loop(g, S[:, keep], Y[:, keep], gamma))


def test_angle_filter_is_scale_free():
    gen = torch.Generator().manual_seed(2)
    S = torch.randn(8, 5, generator=gen)
    Y = symmetric_indefinite(8, gen) @ S
    g = torch.randn(8, generator=gen)
    keep = angle_filter(*gram_blocks(S, Y, g)[:3], 1e-8)
    keep_scaled = angle_filter(*gram_blocks(1e-4 * S, 1e-4 * Y, g)[:3], 1e-8)
    np.testing.assert_array_equal(keep, keep_scaled)


@pytest.mark.parametrize("gamma", [0.0, 0.7])
def test_compact_sr1_equals_dense_recursion_and_secant_equations_on_quadratic(gamma):
    gen = torch.Generator().manual_seed(3)
    d, m = 9, 5
    A = symmetric_indefinite(d, gen)
    S, Y = pairs_on(A, m, gen)
    B_dense, kept_dense = dense_sr1(S, Y, gamma * torch.eye(d))
    SY, SS, YY = (S.T @ Y).numpy(), (S.T @ S).numpy(), (Y.T @ Y).numpy()
    kept = sr1_filter(SY, SS, YY, gamma, 1e-8).kept
    assert kept == kept_dense == list(range(m))
    compact = CompactSR1.from_pairs(S, Y, gamma)
    torch.testing.assert_close(compact.dense(), B_dense, rtol=1e-8, atol=1e-9)
    v = torch.randn(d, generator=gen)
    torch.testing.assert_close(compact.matvec(v), B_dense @ v, rtol=1e-8, atol=1e-9)
    # hereditary property of SR1 on a quadratic: every secant equation B s_i = y_i holds
    torch.testing.assert_close(compact.dense() @ S, Y, rtol=1e-7, atol=1e-8)


def test_sr1_filter_skips_exactly_what_the_dense_recursion_skips():
    gen = torch.Generator().manual_seed(4)
    d = 7
    A = symmetric_indefinite(d, gen)
    S, Y = pairs_on(A, 4, gen)
    for gamma in (0.0, 1.3):
        B, _ = dense_sr1(S, Y, gamma * torch.eye(d))
        # a fifth candidate whose secant residual r = y − Bs is orthogonal to s: the SR1 test must skip it
        s = torch.randn(d, generator=gen)
        r = torch.randn(d, generator=gen)
        r = r - (r @ s) / (s @ s) * s
        S5, Y5 = torch.cat([S, s[:, None]], 1), torch.cat([Y, (B @ s + r)[:, None]], 1)
        _, kept_dense = dense_sr1(S5, Y5, gamma * torch.eye(d))
        kept = sr1_filter((S5.T @ Y5).numpy(), (S5.T @ S5).numpy(), (Y5.T @ Y5).numpy(), gamma, 1e-8).kept
        assert kept == kept_dense == [0, 1, 2, 3]


def test_option2_sr1_with_zero_b0_is_the_nystrom_sketch():
    gen = torch.Generator().manual_seed(5)
    A = symmetric_indefinite(10, gen)
    S, Y = pairs_on(A, 4, gen)
    nystrom = A @ S @ torch.linalg.solve(S.T @ A @ S, S.T @ A)
    torch.testing.assert_close(CompactSR1.from_pairs(S, Y, 0.0).dense(), nystrom, rtol=1e-8, atol=1e-9)


def random_reduced(gen, d=8, indefinite=True, g_scale=1.0):
    A = symmetric_indefinite(d, gen) if indefinite else spd(d, gen, 10.0)
    g = g_scale * torch.randn(d, generator=gen)
    return reduce_dense(g, A)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("radius", [0.05, 1.0, 20.0])
def test_tr_steps_stay_in_the_region_and_exact_never_loses_to_cg(seed, radius):
    gen = torch.Generator().manual_seed(seed)
    model = random_reduced(gen, indefinite=seed % 3 != 0)
    cg, ex = cg_steihaug(model, radius), exact_tr(model, radius)
    assert np.linalg.norm(cg.a) <= radius * (1 + 1e-10)
    assert np.linalg.norm(ex.a) <= radius * (1 + 1e-10)
    assert model.value(ex.a) <= model.value(cg.a) + 1e-10 * max(1.0, abs(model.value(cg.a)))


@pytest.mark.parametrize("seed", range(8))
def test_exact_tr_satisfies_more_sorensen_optimality_conditions(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    model = random_reduced(gen)
    radius = 0.5
    step = exact_tr(model, radius)
    p = step.a
    B, g = model.B, model.g
    # (B + σI) p = −g with σ ≥ 0, B + σI ⪰ 0, σ (Δ − ‖p‖) = 0
    residual = B @ p + g
    sigma = -float(residual @ p) / float(p @ p)
    np.testing.assert_allclose(B @ p + sigma * p, -g, atol=1e-8)
    assert sigma >= -1e-10
    assert np.linalg.eigvalsh(B + sigma * np.eye(len(g))).min() >= -1e-8
    assert abs(sigma * (radius - np.linalg.norm(p))) < 1e-8


def test_exact_tr_interior_newton_step_when_positive_definite_and_inside():
    gen = torch.Generator().manual_seed(7)
    model = random_reduced(gen, indefinite=False, g_scale=1e-3)
    step = exact_tr(model, 10.0)
    np.testing.assert_allclose(step.a, -np.linalg.solve(model.B, model.g), rtol=1e-10)
    assert not step.on_boundary


def test_exact_tr_hard_case_in_the_basis():
    # B = diag(−2, 1, 3), g orthogonal to the leftmost eigenvector: the hard case
    B = np.diag([-2.0, 1.0, 3.0])
    g = np.array([0.0, 1.0, 1.0])
    model = ReducedModel(g=g, B=B, complement_eigenvalue=None, full_dim=3, lift=None)
    radius = 2.0
    step = exact_tr(model, radius)
    assert np.linalg.norm(step.a) == pytest.approx(radius, rel=1e-10)
    # σ = 2: p = −(B + 2I)⁺ g + τ e1
    np.testing.assert_allclose(step.a[1:], [-1 / 3, -1 / 5], rtol=1e-10)
    best_on_grid = min(model.value(radius * np.array([np.cos(t) * np.cos(u), np.sin(t) * np.cos(u), np.sin(u)]))
                       for t in np.linspace(0, 2 * np.pi, 181) for u in np.linspace(-np.pi / 2, np.pi / 2, 91))
    assert model.value(step.a) <= best_on_grid + 1e-9


def test_exact_tr_hard_case_along_the_complement():
    # In-basis block diag(1, 2), the complement carries eigenvalue −1 (B0 = γI with γ = −1): the leftmost
    # eigenvector is outside the basis, g has no component there, so the step must be filled up along it.
    model = ReducedModel(g=np.array([1.0, 1.0]), B=np.diag([1.0, 2.0]), complement_eigenvalue=-1.0, full_dim=5,
                         lift=None)
    radius = 3.0
    step = exact_tr(model, radius)
    np.testing.assert_allclose(step.a, [-1 / 2, -1 / 3], rtol=1e-12)  # σ = 1: −(B + I)⁻¹ g
    assert step.tau == pytest.approx(np.sqrt(radius ** 2 - 1 / 4 - 1 / 9), rel=1e-12)
    dense = ReducedModel(g=np.array([1.0, 1.0, 0.0]), B=np.diag([1.0, 2.0, -1.0]), complement_eigenvalue=None,
                         full_dim=3, lift=None)
    assert model.value(step.a, step.tau) == pytest.approx(dense.value(exact_tr(dense, radius).a), rel=1e-12)


def test_compact_model_with_g_in_range_of_psi_uses_the_leftmost_direction():
    gen = torch.Generator().manual_seed(8)
    d = 6
    Psi = torch.randn(d, 2, generator=gen)
    model = CompactSR1(gamma=-1.0, Psi=Psi, M=np.eye(2) * 0.1)
    g = Psi @ torch.tensor([0.3, -0.2])
    reduced = reduce_compact(g, model)
    step = exact_tr(reduced, 5.0)
    p = reduced.lift(step.a, step.tau)
    assert float(p.norm()) == pytest.approx(5.0, rel=1e-10)
    B = model.dense()
    value = float(g @ p + 0.5 * p @ B @ p)
    assert value == pytest.approx(reduced.value(step.a, step.tau), rel=1e-9)
    dense_a = torch.as_tensor(exact_tr(reduce_dense(g, B), 5.0).a)
    assert value <= float(g @ dense_a + 0.5 * dense_a @ B @ dense_a) + 1e-9


@pytest.mark.parametrize("b0", ["zero", "gamma"])
def test_reduced_compact_model_matches_the_dense_model(b0):
    gen = torch.Generator().manual_seed(9)
    d, m = 15, 4
    A = symmetric_indefinite(d, gen)
    S, Y = pairs_on(A, m, gen)
    g = torch.randn(d, generator=gen)
    reduced, stats = CompactLSR1(b0=b0).reduce(g, S, Y)
    assert stats["pairs_kept"] == m
    B = CompactSR1.from_pairs(S, Y, stats["b0_gamma"]).dense()
    for radius in (0.1, 3.0):
        for solver in (cg_steihaug, exact_tr):
            step = solver(reduced, radius)
            p = reduced.lift(step.a, step.tau)
            assert float(p.norm()) <= radius * (1 + 1e-10)
            assert float(g @ p + 0.5 * p @ B @ p) == pytest.approx(reduced.value(step.a, step.tau), rel=1e-9, abs=1e-12)
        # CG-Steihaug on the reduced model takes the same step as CG-Steihaug on the dense d×d model
        dense_cg = cg_steihaug(reduce_dense(g, B), radius)
        torch.testing.assert_close(reduced.lift(cg_steihaug(reduced, radius).a, 0.0), torch.as_tensor(dense_cg.a),
                                   rtol=1e-7, atol=1e-9)


def test_cg_steihaug_reference_tolerances():
    model = ReducedModel(g=np.full(3, 1e-11), B=np.eye(3), complement_eigenvalue=None, full_dim=3, lift=None)
    step = cg_steihaug(model, 1.0)
    assert step.iterations == 0 and not step.a.any()
    # zero curvature (B0 = 0, no pairs): straight to the boundary along −g
    model = ReducedModel(g=np.array([3.0, 4.0]), B=np.zeros((2, 2)), complement_eigenvalue=None, full_dim=2, lift=None)
    step = cg_steihaug(model, 2.0)
    np.testing.assert_allclose(step.a, [-1.2, -1.6])
    assert step.on_boundary


def _spd(d, seed, shift=0.1):
    A = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return A @ A.T / d + shift * torch.eye(d, dtype=torch.float64)


def _counted(H):
    calls = []

    def hvp(v):
        calls.append(1)
        return H @ v
    return hvp, calls


def test_matrix_free_cg_steihaug_solves_the_newton_system_inside_a_large_region():
    H = _spd(12, 0)
    g = torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hvp, calls = _counted(H)
    step = cg_steihaug_hvp(g, hvp, radius=1e6, tol=1e-12)
    assert torch.allclose(step.p, -torch.linalg.solve(H, g), atol=1e-9) and not step.on_boundary
    assert step.iterations == len(calls) <= 12  # one product per CG iteration, at most d (exact arithmetic: d)
    assert step.model_decrease == pytest.approx(-(float(g @ step.p) + 0.5 * float(step.p @ H @ step.p)), rel=1e-12)


@pytest.mark.parametrize("indefinite", [False, True])
def test_matrix_free_cg_steihaug_stops_on_the_boundary_with_a_model_decrease(indefinite):
    H = _spd(10, 2) - (2.0 * torch.eye(10, dtype=torch.float64) if indefinite else 0.0)
    g = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    hvp, calls = _counted(H)
    step = cg_steihaug_hvp(g, hvp, radius=0.05)
    assert step.on_boundary and float(step.p.norm()) == pytest.approx(0.05, rel=1e-12)
    exact = -(float(g @ step.p) + 0.5 * float(step.p @ H @ step.p))
    assert step.model_decrease == pytest.approx(exact, rel=1e-10) and step.model_decrease > 0
    assert step.iterations == len(calls)


def test_matrix_free_cg_steihaug_uses_the_newton_cg_forcing_term():
    H = _spd(30, 4, shift=1e-3)
    g = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    step = cg_steihaug_hvp(g, lambda v: H @ v, radius=1e6)
    residual = float((H @ step.p + g).norm())
    assert residual <= newton_cg_tolerance(float(g.norm())) * (1 + 1e-9)
    assert newton_cg_tolerance(4.0) == 2.0 and newton_cg_tolerance(0.01) == pytest.approx(0.001)
