"""Symmetric rank-one models: the compact (limited-memory) form and the dense recursion.

Compact SR1 (Byrd, Nocedal & Schnabel 1994, eq. 5.2), pairs (s_i, y_i) oldest first, B0 = γI:

    B = γI + Ψ M⁻¹ Ψᵀ,   Ψ = Y − γS,   M = D + L + Lᵀ − γSᵀS,

D = diag(SᵀY), L the strictly lower triangle of SᵀY. With γ = 0 (the reference S-LSR1) B = Y M⁻¹ Yᵀ has
rank ≤ m; under Option II (Y = ∇²F S) it is a Nyström sketch HS(SᵀHS)⁻¹SᵀH of the Hessian.

The sequential pair filter (paper's condition (2)) keeps candidate i iff
|s_iᵀ(y_i − B s_i)| > ε ‖s_i‖ ‖y_i − B s_i‖ with B built from the pairs already kept. Everything it needs is
in the Gram blocks SᵀY, SᵀS, YᵀY, so the sweep is m-dimensional float64 work; it is the pivot test of an
LDLᵀ factorisation of M with skips, which also guarantees that the kept M is non-singular.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


RESIDUAL_FLOOR = 1e-12  # relative ‖r‖² below which r = y − Bs is round-off (‖r‖ < 1e-6 ‖y − γs‖)


def sr1_keeps(s_r: float, s_norm: float, r_norm: float, eps: float) -> bool:
    """SR1 safeguard |sᵀr| > ε‖s‖‖r‖ with r = y − Bs (N&W eq. 6.26); shared by the dense and compact forms."""
    return abs(s_r) > eps * s_norm * r_norm


def sr1_gamma(SY: np.ndarray, SS: np.ndarray) -> float:
    """B0 scaling for ``b0="gamma"``: the mean Rayleigh quotient Σ sᵢᵀyᵢ / Σ sᵢᵀsᵢ, clipped at 0.

    Under Option II this is the average curvature of F along the sampled directions (≈ tr ∇²F / d for
    Gaussian directions); for path pairs the average curvature along the stored steps. Clipped at zero
    so that B0 never adds negative curvature of its own.
    """
    den = float(np.trace(SS))
    return max(float(np.trace(SY)) / den, 0.0) if den > 0 else 0.0


def middle_matrix(SY: np.ndarray, SS: np.ndarray, gamma: float) -> np.ndarray:
    """M = D + L + Lᵀ − γ SᵀS from SY[i, j] = s_iᵀy_j (pairs in order)."""
    L = np.tril(SY, -1)
    return np.diag(np.diag(SY)) + L + L.T - gamma * SS


@dataclass(frozen=True)
class SR1Selection:
    """The kept pairs and an LDLᵀ factorisation of their middle matrix, M = L diag(D) Lᵀ, held as L⁻¹."""

    kept: list[int]
    L_inv: np.ndarray  # (k, k) unit lower triangular
    D: np.ndarray  # (k,) pivots; D_j = s_jᵀ(y_j − B_{<j} s_j), nonzero by the filter

    def solve(self, X: np.ndarray) -> np.ndarray:
        """M⁻¹ X through the factors (no explicit inverse of M)."""
        Z = self.L_inv @ X
        return self.L_inv.T @ (Z / (self.D[:, None] if Z.ndim == 2 else self.D))


def sr1_filter(SY: np.ndarray, SS: np.ndarray, YY: np.ndarray, gamma: float, eps: float) -> SR1Selection:
    """The candidate pairs kept by the sequential SR1 test (condition (2)), in order, with M's factors.

    SY[i, j] = s_iᵀy_j, SS = SᵀS, YY = YᵀY (float64). For candidate i and kept set K, M_{K∪i} borders M_K with
    u = Ψ_Kᵀ s_i (u_j = s_iᵀy_j − γ s_iᵀs_j) and M_ii = s_iᵀy_i − γ s_iᵀs_i, so with c = M_K⁻¹ u:

        s_iᵀ r_i = M_ii − uᵀc          (r_i = y_i − B_K s_i: the Schur complement, i.e. the next LDLᵀ pivot)
        ‖r_i‖²  = ‖y_i − γs_i‖² − 2 (y_i − γs_i)ᵀΨ_K c + cᵀ Ψ_KᵀΨ_K c,

    all read off the Gram blocks. A kept candidate extends the LDLᵀ factorisation of M by one row; a skipped
    one leaves it unchanged. The sweep is O(m³) float64 work on the host, with no d-sized operation.
    """
    A = SY - gamma * SS  # A[i, j] = u_j for candidate i; A[i, i] = M_ii
    psi_gram = YY - gamma * (SY + SY.T) + gamma * gamma * SS  # Ψᵀ Ψ over all candidates
    m = SY.shape[0]
    kept: list[int] = []
    L_inv = np.zeros((m, m))
    D = np.zeros(m)
    U = np.zeros((m, m))  # U[:, j] = A[:, kept[j]]: the bordering rows of every candidate against the kept pairs
    PG = np.zeros((m, m))  # PG[:, j] = psi_gram[:, kept[j]]
    finite = np.isfinite(A).all(axis=1) & np.isfinite(psi_gram).all(axis=1)
    for i in range(m):
        if not finite[i]:
            continue  # a pair evaluated into overflow carries no curvature information
        k = len(kept)
        if k:
            Li = L_inv[:k, :k]
            z = Li @ U[i, :k]
            w = z / D[:k]
            c = Li.T @ w  # M_K⁻¹ u
            s_r = A[i, i] - z @ w
            pg = PG[i, :k]
            r2 = psi_gram[i, i] - 2 * pg @ c + c @ (PG[kept, :k] @ c)
        else:
            s_r, r2 = A[i, i], psi_gram[i, i]
        # Read off Gram matrices, ‖r‖² carries round-off of order eps·‖yᵢ − γsᵢ‖²: a residual below that
        # level means the secant equation already holds (e.g. the m > d-th pair on a quadratic), and
        # keeping it would make M numerically singular.
        if r2 <= RESIDUAL_FLOOR * psi_gram[i, i]:
            continue
        if sr1_keeps(s_r, float(np.sqrt(max(SS[i, i], 0.0))), float(np.sqrt(r2)), eps):
            if k:
                L_inv[k, :k] = -w @ Li  # [[L, 0], [wᵀ, 1]]⁻¹ = [[L⁻¹, 0], [−wᵀL⁻¹, 1]]
            L_inv[k, k] = 1.0
            D[k] = s_r
            U[:, k] = A[:, i]
            PG[:, k] = psi_gram[:, i]
            kept.append(i)
    k = len(kept)
    return SR1Selection(kept=kept, L_inv=L_inv[:k, :k].copy(), D=D[:k].copy())


@dataclass(frozen=True)
class CompactSR1:
    """B = γI + Ψ M⁻¹ Ψᵀ for the kept pairs (d-sized Ψ in the model's dtype, small M in float64)."""

    gamma: float
    Psi: torch.Tensor  # (d, k)
    M: np.ndarray  # (k, k) float64
    factors: SR1Selection | None = None  # LDLᵀ factors of M from the filter, when it built them

    @classmethod
    def from_pairs(cls, S: torch.Tensor, Y: torch.Tensor, gamma: float, SY: np.ndarray | None = None,
                   SS: np.ndarray | None = None, factors: SR1Selection | None = None) -> "CompactSR1":
        if SY is None or SS is None:
            SY = (S.T @ Y).double().cpu().numpy()
            SS = (S.T @ S).double().cpu().numpy()
        Psi = Y if gamma == 0.0 else Y - gamma * S
        return cls(gamma=float(gamma), Psi=Psi, M=middle_matrix(SY, SS, gamma), factors=factors)

    @property
    def rank(self) -> int:
        return self.Psi.shape[1]

    def solve(self, X: np.ndarray) -> np.ndarray:
        """M⁻¹ X: through the filter's LDLᵀ factors when present, else an LU solve."""
        return self.factors.solve(X) if self.factors is not None else np.linalg.solve(self.M, X)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if self.rank == 0:
            return self.gamma * v
        coef = self.solve((self.Psi.T @ v).double().cpu().numpy())
        return self.gamma * v + self.Psi @ torch.as_tensor(coef, dtype=v.dtype, device=v.device)

    def dense(self) -> torch.Tensor:
        """The explicit d×d matrix (tests and eigen-spectra; float64)."""
        d = self.Psi.shape[0]
        B = self.gamma * torch.eye(d, dtype=torch.float64)
        if self.rank:
            Psi = self.Psi.double().cpu()
            B = B + Psi @ torch.as_tensor(self.solve(Psi.T.numpy()))
        return B


def sr1_update(B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, bool]:
    """One dense SR1 update B⁺ = B + r rᵀ / (rᵀs), r = y − Bs, skipped when the safeguard fails."""
    r = y - B @ s
    s_r = float(torch.dot(s, r))
    if not sr1_keeps(s_r, float(s.norm()), float(r.norm()), eps):
        return B, False
    return B + torch.outer(r, r) / s_r, True


def dense_sr1(S: torch.Tensor, Y: torch.Tensor, B0: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, list[int]]:
    """The SR1 recursion over the pairs in order from B0, with skipping; returns (B, kept indices)."""
    B, kept = B0.clone(), []
    for i in range(S.shape[1]):
        B, ok = sr1_update(B, S[:, i], Y[:, i], eps)
        if ok:
            kept.append(i)
    return B, kept
