"""Limited-memory BFGS inverse-Hessian products: compact form, two-loop recursion, dense reference.

All three compute H g for the L-BFGS matrix built from pairs (s_i, y_i), i = 1..k in order (oldest
first), with H0 = γI (Nocedal & Wright, Numerical Optimization, 2nd ed., Alg. 7.4 and eq. 7.24; Byrd,
Nocedal & Schnabel 1994, Thm 2.2). The compact form is the one used on the hot path: every d-sized
quantity it needs comes from one Gram product [S Y]ᵀ[S Y g], after which the work is 2k-dimensional
and done in float64.
"""
from __future__ import annotations

import numpy as np
import torch


def lbfgs_gamma(sy_last: float, yy_last: float) -> float:
    """H0 scaling γ = sᵀy / yᵀy of the newest pair (N&W eq. 7.20)."""
    return float(sy_last / yy_last)


def compact_inverse_coefficients(SY: np.ndarray, YY: np.ndarray, Sg: np.ndarray, Yg: np.ndarray,
                                 gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (a, b) with H g = γ g + S a + Y b, from small Gram blocks (float64).

    H = γI + [S  γY] [[R⁻ᵀ(D + γYᵀY)R⁻¹, −R⁻ᵀ], [−R⁻¹, 0]] [Sᵀ; γYᵀ],
    R the upper triangle (diagonal included) of SᵀY, D its diagonal.
    SY[i, j] = s_iᵀ y_j, YY = YᵀY, Sg = Sᵀg, Yg = Yᵀg.
    """
    R = np.triu(SY)
    D = np.diag(np.diag(SY))
    # q = R⁻¹ Sᵀg ; then a = R⁻ᵀ((D + γYᵀY) q − γ Yᵀg), b = −γ q
    q = _solve_triangular(R, Sg, lower=False)
    a = _solve_triangular(R.T, (D + gamma * YY) @ q - gamma * Yg, lower=True)
    return a, -gamma * q


def _solve_triangular(T: np.ndarray, b: np.ndarray, lower: bool) -> np.ndarray:
    import scipy.linalg  # local: keeps `import sqn_ray` light

    return scipy.linalg.solve_triangular(T, b, lower=lower)


def gram_blocks(S: torch.Tensor, Y: torch.Tensor, g: torch.Tensor):
    """SᵀY, SᵀS, YᵀY, Sᵀg, Yᵀg in float64 from ONE product [S Y]ᵀ[S Y g] (the only d-sized work of a filter)."""
    k = S.shape[1]
    Z = torch.cat([S, Y, g[:, None]], dim=1)
    gram = (Z[:, :2 * k].T @ Z).double().cpu().numpy()
    return gram[:k, k:2 * k], gram[:k, :k], gram[k:, k:2 * k], gram[:k, -1], gram[k:, -1]


def compact_inverse_apply(g: torch.Tensor, S: torch.Tensor, Y: torch.Tensor, gamma: float) -> torch.Tensor:
    """H g by the compact form (one Gram product, then 2k-dimensional float64 work)."""
    if S.shape[1] == 0:
        return gamma * g
    SY, _, YY, Sg, Yg = gram_blocks(S, Y, g)
    return compact_inverse_from_gram(g, torch.cat([S, Y], dim=1), SY, YY, Sg, Yg, gamma)


def compact_inverse_from_gram(g: torch.Tensor, Z: torch.Tensor, SY: np.ndarray, YY: np.ndarray, Sg: np.ndarray,
                              Yg: np.ndarray, gamma: float) -> torch.Tensor:
    """H g = γ g + [S Y] (a; b) for Z = [S Y], once the small Gram blocks are known (the filter has them)."""
    a, b = compact_inverse_coefficients(SY, YY, Sg, Yg, gamma)
    coef = torch.as_tensor(np.concatenate([a, b]), dtype=g.dtype, device=g.device)
    return gamma * g + Z @ coef


def two_loop(g: torch.Tensor, S: torch.Tensor, Y: torch.Tensor, gamma: float) -> torch.Tensor:
    """H g by the two-loop recursion (N&W Alg. 7.4); pairs are columns, oldest first."""
    q = g.clone()
    k = S.shape[1]
    rho = [1.0 / torch.dot(S[:, i], Y[:, i]) for i in range(k)]
    alpha = [None] * k
    for i in reversed(range(k)):
        alpha[i] = rho[i] * torch.dot(S[:, i], q)
        q = q - alpha[i] * Y[:, i]
    r = gamma * q
    for i in range(k):
        beta = rho[i] * torch.dot(Y[:, i], r)
        r = r + S[:, i] * (alpha[i] - beta)
    return r


def bfgs_inverse_update(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One BFGS inverse update H⁺ = (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ, ρ = 1/(sᵀy) (N&W eq. 6.17)."""
    rho = 1.0 / torch.dot(s, y)
    Hy = H @ y
    yHy = torch.dot(y, Hy)
    return H - rho * (torch.outer(s, Hy) + torch.outer(Hy, s)) + (rho * rho * yHy + rho) * torch.outer(s, s)


def dense_lbfgs_inverse(S: torch.Tensor, Y: torch.Tensor, gamma: float) -> torch.Tensor:
    """The explicit d×d L-BFGS matrix: BFGS updates of γI by every pair in order (tests, spectra)."""
    d = S.shape[0]
    H = gamma * torch.eye(d, dtype=S.dtype, device=S.device)
    for i in range(S.shape[1]):
        H = bfgs_inverse_update(H, S[:, i], Y[:, i])
    return H
