"""Trust-region subproblem  min_p  gᵀp + ½ pᵀBp  s.t. ‖p‖ ≤ Δ, on a reduced model.

Both solvers work on a :class:`ReducedModel`: an orthonormal basis Q of a subspace that contains g and on
whose orthogonal complement B acts as a multiple of the identity. For the compact form
B = γI + Ψ M⁻¹ Ψᵀ that subspace is span{g, Ψ} (dimension ≤ m + 1): CG-Steihaug started at 0 never leaves it
(its Krylov space is span{g, Bg, B²g, …} ⊂ span{g, Ψ}), and the exact solution only leaves it in the hard
case, along the complement, where B = γI. So both solvers run on an (m+1)×(m+1) float64 matrix on the host,
and the step is lifted back by one (d × (m+1)) product. For a dense B (classical SR1) Q = I.

* :func:`cg_steihaug`: the reference's matrix-free CG-Steihaug with its absolute tolerances (return 0 if
  ‖g‖ < 1e-10, to the boundary when dᵀBd < 1e-12 or the step leaves the region, stop at ‖r‖ < 1e-10),
  capped at the problem dimension d (the reference loop was unbounded).
* :func:`exact_tr`: eigen-decomposition of the reduced matrix and the secular equation
  1/‖p(σ)‖ = 1/Δ solved by safeguarded Newton in float64 (Moré & Sorensen 1983; N&W §4.3), hard case
  handled, including the case where the leftmost eigenvector lies in the complement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .sr1 import CompactSR1

CG_GRAD_TOL = 1e-10
CG_CURVATURE_TOL = 1e-12


@dataclass(frozen=True)
class ReducedModel:
    g: np.ndarray  # (r,) coordinates of the gradient in the basis, float64
    B: np.ndarray  # (r, r) the model Hessian in the basis, float64, symmetric
    complement_eigenvalue: float | None  # B on the orthogonal complement of the basis (None: basis spans R^d)
    full_dim: int
    lift: Callable[[np.ndarray, float], torch.Tensor]  # (coordinates a, complement length τ) -> step in R^d

    def value(self, a: np.ndarray, tau: float = 0.0) -> float:
        """Model value m(p) − f = gᵀp + ½ pᵀBp of the lifted step."""
        out = float(self.g @ a + 0.5 * a @ self.B @ a)
        if tau:
            out += 0.5 * float(self.complement_eigenvalue) * tau * tau
        return out


@dataclass(frozen=True)
class TRStep:
    a: np.ndarray
    tau: float  # length along the complement direction (hard case only)
    iterations: int
    on_boundary: bool


def reduce_dense(g: torch.Tensor, B: torch.Tensor) -> ReducedModel:
    """Q = I: the model is the dense matrix itself (classical SR1)."""
    dtype, device = g.dtype, g.device
    return ReducedModel(g=g.double().cpu().numpy(), B=B.double().cpu().numpy(), complement_eigenvalue=None,
                        full_dim=g.numel(),
                        lift=lambda a, tau: torch.as_tensor(a, dtype=dtype, device=device))


def reduce_compact(g: torch.Tensor, model: CompactSR1) -> ReducedModel:
    """Restrict B = γI + ΨM⁻¹Ψᵀ to span{g, Ψ} through a thin QR: [g Ψ] = QR, so Qᵀg = R[:, 0], QᵀΨ = R[:, 1:]."""
    d = g.numel()
    Q, R = torch.linalg.qr(torch.cat([g[:, None], model.Psi], dim=1))
    R = R.double().cpu().numpy()
    P = R[:, 1:]
    B = model.gamma * np.eye(R.shape[0])
    if model.rank:
        B = B + P @ model.solve(P.T)
    B = 0.5 * (B + B.T)
    complement = model.gamma if d > R.shape[0] else None

    def lift(a: np.ndarray, tau: float) -> torch.Tensor:
        p = Q @ torch.as_tensor(a, dtype=Q.dtype, device=Q.device)
        return p + tau * _unit_orthogonal_to(Q) if tau else p

    return ReducedModel(g=R[:, 0].copy(), B=B, complement_eigenvalue=complement, full_dim=d, lift=lift)


def _unit_orthogonal_to(Q: torch.Tensor) -> torch.Tensor:
    """A deterministic unit vector orthogonal to the columns of Q: the coordinate axis Q represents least,
    projected out twice (classical Gram-Schmidt, twice is enough)."""
    j = int(torch.argmin((Q * Q).sum(dim=1)))
    v = -Q @ Q[j]
    v[j] += 1.0
    v = v - Q @ (Q.T @ v)
    return v / v.norm()


def _to_boundary(z: np.ndarray, d: np.ndarray, radius: float) -> np.ndarray:
    """z + τd with τ ≥ 0 and ‖z + τd‖ = Δ."""
    dd, zd, zz = d @ d, z @ d, z @ z
    tau = (-zd + np.sqrt(max(zd * zd + dd * (radius * radius - zz), 0.0))) / dd
    return z + tau * d


def cg_steihaug(model: ReducedModel, radius: float, *, grad_tol: float = CG_GRAD_TOL,
                curvature_tol: float = CG_CURVATURE_TOL, max_iters: int | None = None) -> TRStep:
    """Steihaug's truncated CG (N&W Alg. 7.2) with the reference's absolute tolerances."""
    g, B = model.g, model.B
    max_iters = model.full_dim if max_iters is None else max_iters
    z = np.zeros_like(g)
    r = g.copy()
    if np.linalg.norm(r) < grad_tol:
        return TRStep(z, 0.0, 0, False)
    d = -r
    rr = r @ r
    for it in range(1, max_iters + 1):
        Bd = B @ d
        dBd = d @ Bd
        if dBd < curvature_tol:
            return TRStep(_to_boundary(z, d, radius), 0.0, it, True)
        alpha = rr / dBd
        z_next = z + alpha * d
        if np.linalg.norm(z_next) >= radius:
            return TRStep(_to_boundary(z, d, radius), 0.0, it, True)
        r = r + alpha * Bd
        rr_next = r @ r
        if np.sqrt(rr_next) < grad_tol:
            return TRStep(z_next, 0.0, it, False)
        d = -r + (rr_next / rr) * d
        rr, z = rr_next, z_next
    return TRStep(z, 0.0, max_iters, False)


def exact_tr(model: ReducedModel, radius: float, *, rtol: float = 1e-12, max_newton: int = 100) -> TRStep:
    """Global minimiser of the model in the ball (Moré-Sorensen conditions), via eigh of the reduced B."""
    lam, U = np.linalg.eigh(model.B)
    gh = U.T @ model.g
    gnorm = float(np.linalg.norm(gh))
    if gnorm == 0.0 and lam[0] >= 0 and (model.complement_eigenvalue is None or model.complement_eigenvalue >= 0):
        return TRStep(np.zeros_like(gh), 0.0, 0, False)
    out = model.complement_eigenvalue
    lam_min = min(lam[0], out) if out is not None else lam[0]
    scale = max(1.0, float(np.max(np.abs(lam))), abs(lam_min))

    if lam_min > 0:  # B positive definite: the Newton step if it fits
        p = -gh / lam
        if np.linalg.norm(p) <= radius:
            return TRStep(U @ p, 0.0, 0, False)

    lo = max(0.0, -lam_min)
    near_min = lam <= lam_min + 1e-12 * scale  # in-basis eigenvalues equal to the leftmost one
    g_on_min = float(np.linalg.norm(gh[near_min])) if near_min.any() else 0.0
    if g_on_min <= 1e-12 * max(gnorm, 1e-300):
        # Possible hard case: σ = −λ_min leaves a step shorter than Δ; fill it up along the leftmost eigenvector.
        shifted = lam[~near_min] + lo
        p = np.zeros_like(gh)
        p[~near_min] = -gh[~near_min] / shifted
        pn = float(np.linalg.norm(p))
        if pn <= radius:
            if lam_min >= 0:  # flat directions: the minimum-norm minimiser is optimal
                return TRStep(U @ p, 0.0, 0, False)
            tau = np.sqrt(max(radius * radius - pn * pn, 0.0))
            if near_min.any():  # leftmost eigenvector inside the basis
                p[np.argmax(near_min)] += tau
                return TRStep(U @ p, 0.0, 0, True)
            return TRStep(U @ p, float(tau), 0, True)  # leftmost eigenvalue lives in the complement

    # Secular equation φ(σ) = 1/‖p(σ)‖ − 1/Δ = 0 on (lo, hi]: φ is increasing and concave, so Newton from
    # the left converges monotonically; bisection guards the bracket.
    def pnorm(sigma):
        return float(np.sqrt(np.sum((gh / (lam + sigma)) ** 2)))

    hi = gnorm / radius + max(-lam_min, 0.0) + 1e-300
    while pnorm(hi) > radius:  # round-off safety: make sure hi brackets the root
        hi *= 2.0
    sigma = hi
    a_lo = lo
    iters = 0
    for iters in range(1, max_newton + 1):  # noqa: B007 - the count is reported after the loop
        q = gh / (lam + sigma)
        pn = float(np.linalg.norm(q))
        if abs(pn - radius) <= rtol * radius:
            break
        if pn > radius:
            a_lo = sigma
        else:
            hi = sigma
        dphi = float(np.sum(q * q / (lam + sigma))) / pn ** 3  # φ'(σ) = Σ q_i²/(λ_i+σ) / ‖p‖³
        step = (1.0 / pn - 1.0 / radius) / dphi
        candidate = sigma - step
        sigma = candidate if a_lo < candidate < hi else 0.5 * (a_lo + hi)
    p = -gh / (lam + sigma)
    return TRStep(U @ p, 0.0, iters, True)


def solve_tr(model: ReducedModel, radius: float, solver: str) -> TRStep:
    if solver == "cg-steihaug":
        return cg_steihaug(model, radius)
    if solver == "exact":
        return exact_tr(model, radius)
    raise ValueError(f"tr_solver={solver!r} is not one of ('cg-steihaug', 'exact')")


@dataclass(frozen=True)
class MatrixFreeTRStep:
    """A trust-region step found with Hessian-vector products only (:func:`cg_steihaug_hvp`)."""

    p: torch.Tensor  # the step, in R^d
    model_decrease: float  # −(gᵀp + ½ pᵀHp) ≥ 0: the decrease the quadratic model predicts
    iterations: int  # CG iterations = Hessian-vector products used
    on_boundary: bool


def newton_cg_tolerance(grad_norm: float) -> float:
    """The forcing term of truncated Newton-CG (N&W Alg. 7.1): stop CG at ‖r‖ ≤ min(0.5, √‖g‖) ‖g‖, which
    keeps the local convergence superlinear without solving the Newton system exactly."""
    return min(0.5, float(np.sqrt(grad_norm))) * grad_norm


def cg_steihaug_hvp(g: torch.Tensor, hvp: Callable[[torch.Tensor], torch.Tensor], radius: float, *,
                    max_iters: int | None = None, tol: float | None = None) -> MatrixFreeTRStep:
    """Steihaug's truncated CG (N&W Alg. 7.2) on the model gᵀp + ½ pᵀHp, ‖p‖ ≤ Δ, with H applied only
    through ``hvp(v) = H v`` (one call per CG iteration, nothing else), in the dtype of ``g``.

    Stops at ‖r‖ ≤ ``tol`` (default :func:`newton_cg_tolerance`), at the boundary when a step leaves the region
    or meets curvature dᵀHd ≤ 1e-12·‖d‖² (negative or flat: the model is unbounded along d), or after
    ``max_iters`` (default d) iterations. The model value is tracked through the products already made
    (H p = Σ α_j H d_j), so the predicted decrease costs no extra product."""
    d_dim = g.numel()
    max_iters = d_dim if max_iters is None else max_iters
    gnorm = float(g.norm())
    tol = newton_cg_tolerance(gnorm) if tol is None else tol
    z = torch.zeros_like(g)
    Hz = torch.zeros_like(g)
    if gnorm <= max(tol, CG_GRAD_TOL):
        return MatrixFreeTRStep(z, 0.0, 0, False)
    r = g.clone()
    d = -r
    rr = float(r @ r)

    def finish(p, Hp, iterations, on_boundary):
        decrease = -(float(g @ p) + 0.5 * float(p @ Hp))
        return MatrixFreeTRStep(p, decrease, iterations, on_boundary)

    def boundary(z, Hz, d, Hd):
        zd, dd, zz = float(z @ d), float(d @ d), float(z @ z)
        tau = (-zd + np.sqrt(max(zd * zd + dd * (radius * radius - zz), 0.0))) / dd
        return z + tau * d, Hz + tau * Hd

    for it in range(1, max_iters + 1):
        Hd = hvp(d)
        dHd = float(d @ Hd)
        if dHd <= CG_CURVATURE_TOL * float(d @ d):
            return finish(*boundary(z, Hz, d, Hd), it, True)
        alpha = rr / dHd
        z_next = z + alpha * d
        if float(z_next.norm()) >= radius:
            return finish(*boundary(z, Hz, d, Hd), it, True)
        Hz = Hz + alpha * Hd
        r = r + alpha * Hd
        rr_next = float(r @ r)
        if np.sqrt(rr_next) <= tol:
            return finish(z_next, Hz, it, False)
        d = -r + (rr_next / rr) * d
        rr, z = rr_next, z_next
    return finish(z, Hz, max_iters, False)
