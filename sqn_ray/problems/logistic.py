"""L2-regularised logistic regression on scikit-learn's bundled breast-cancer data: a convex problem with a
known answer.

Data: the 569 × 30 Wisconsin breast-cancer features, standardised (zero mean, unit population variance, as
``sklearn.preprocessing.StandardScaler``), labels y ∈ {0, 1} (1 = benign). Parameters w = (β, β_0) with
the intercept last, d = 31. With z_i = x_iᵀβ + β_0 and s = sigmoid,

    F(w) = (1/n) Σ_i [log(1 + e^{z_i}) − y_i z_i] + (λ/2) ‖β‖²,

    ∇F(w) = X̃ᵀ(s(z) − y)/n + λ P w,         ∇²F(w) v = X̃ᵀ diag(s(z)(1 − s(z))) X̃ v / n + λ P v,

where X̃ = [X, 1] and P zeroes the intercept: like scikit-learn's ``LogisticRegression`` (lbfgs solver),
the intercept is not penalised. Minimising F is then the same problem as ``LogisticRegression(C=1/(λ n))``,
whose objective is ½‖β‖² + C Σ_i log-loss_i (multiply F by C·n = 1/λ). F is strictly convex (λ > 0 on β,
and the intercept direction has curvature Σ s(1−s)/n > 0), so the minimiser is unique.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_LAMBDA = 1e-2


@functools.lru_cache(maxsize=1)
def _breast_cancer_float64() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer  # imported here: sklearn is slow to import

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)  # population std, as StandardScaler
    return X, y.astype(np.float64)


def breast_cancer(dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"):
    """(X, y): standardised features (569, 30) and 0/1 labels (569,) as ``dtype`` tensors."""
    X, y = _breast_cancer_float64()
    return (torch.tensor(X, dtype=torch.float64).to(dtype=dtype, device=device),
            torch.tensor(y, dtype=torch.float64).to(dtype=dtype, device=device))


def logistic_loss(w: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: float = DEFAULT_LAMBDA) -> torch.Tensor:
    """F(w) from plain torch ops (autograd- and vmap-differentiable); w = (β, β_0)."""
    beta, b0 = w[:-1], w[-1]
    z = X @ beta + b0
    return F.binary_cross_entropy_with_logits(z, y) + 0.5 * lam * beta.dot(beta)


class LogisticOracle:
    """Hand-written :class:`~sqn_ray.objective.Oracle` of the regularised logistic loss (formulas above).

    Every method is a couple of GEMMs over all m vectors or points at once.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, lam: float = DEFAULT_LAMBDA,
                 dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"):
        if not lam > 0:
            raise ValueError(f"lam must be > 0 (it makes the problem strictly convex), got {lam}")
        self.dtype = dtype
        self.device = torch.device(device)
        X = torch.as_tensor(X).to(dtype=dtype, device=self.device)
        self.Xt = torch.cat([X, torch.ones(len(X), 1, dtype=dtype, device=self.device)], dim=1)  # X̃ = [X, 1]
        self.y = torch.as_tensor(y).to(dtype=dtype, device=self.device)
        self.n, self.dim = self.Xt.shape
        self.lam = float(lam)
        self._penalised = torch.ones(self.dim, dtype=dtype, device=self.device)
        self._penalised[-1] = 0.0  # P: no penalty on the intercept
        self._lam_p = self.lam * self._penalised

    def logits(self, w: torch.Tensor) -> torch.Tensor:
        """z = X̃ w (n,)."""
        return self.Xt @ w

    def accuracy(self, w: torch.Tensor) -> float:
        """Fraction of points with (z > 0) == y."""
        return float(((self.logits(w) > 0).to(self.dtype) == self.y).to(torch.float64).mean())

    def _value(self, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # log(1 + e^z) − y z, with softplus for stability at large |z|
        return (F.softplus(z) - self.y * z).mean() + 0.5 * self.lam * (w[:-1] @ w[:-1])

    def loss(self, w: torch.Tensor) -> torch.Tensor:
        w = w.detach()
        return self._value(self.Xt @ w, w)

    def loss_and_grad(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = w.detach()
        z = self.Xt @ w
        g = torch.addmv(self._lam_p * w, self.Xt.T, torch.sigmoid(z) - self.y, alpha=1.0 / self.n)
        return self._value(z, w), g

    def hvps(self, w: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """X̃ᵀ D X̃ V / n + λ P V with D = diag(s(z)(1 − s(z))), for V of shape (d, m)."""
        if V.dim() == 1:
            return self.hvps(w, V.unsqueeze(1)).squeeze(1)
        w, V = w.detach(), V.detach()
        s = torch.sigmoid(self.Xt @ w)
        D = (s * (1 - s)).unsqueeze(1)
        return torch.addmm(self._lam_p.unsqueeze(1) * V, self.Xt.T, D * (self.Xt @ V), alpha=1.0 / self.n)

    def grads(self, W: torch.Tensor) -> torch.Tensor:
        """∇F at every column of W (d, m): X̃ᵀ(s(X̃ W) − y)/n + λ P W."""
        W = W.detach()
        if W.dim() == 1:
            return self.loss_and_grad(W)[1]
        R = torch.sigmoid(self.Xt @ W) - self.y.unsqueeze(1)
        return torch.addmm(self._lam_p.unsqueeze(1) * W, self.Xt.T, R, alpha=1.0 / self.n)


@functools.lru_cache(maxsize=8)
def _solution_float64(lam: float) -> np.ndarray:
    from scipy.optimize import minimize  # imported here: scipy.optimize is slow to import

    X, y = _breast_cancer_float64()
    oracle = LogisticOracle(torch.tensor(X), torch.tensor(y), lam)

    def f_and_g(w):
        f, g = oracle.loss_and_grad(torch.from_numpy(w))
        return float(f), g.numpy()

    res = minimize(f_and_g, np.zeros(oracle.dim), jac=True, method="L-BFGS-B",
                   options={"maxiter": 10_000, "ftol": 0.0, "gtol": 1e-13, "maxcor": 30})
    w = torch.from_numpy(res.x)
    # L-BFGS-B stops on a relative-decrease or sup-norm projected-gradient test (or a line-search stall
    # near machine precision); two Newton steps with the exact 31 × 31 Hessian finish the job.
    eye = torch.eye(oracle.dim, dtype=torch.float64)
    for _ in range(2):
        g = oracle.loss_and_grad(w)[1]
        w = w - torch.linalg.solve(oracle.hvps(w, eye), g)
    return w.numpy()


def solution(lam: float = DEFAULT_LAMBDA, dtype: torch.dtype = torch.float64,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """The minimiser w* of F (computed once per λ in float64 with scipy's L-BFGS-B, then cached).

    Args:
        lam: λ, the L2 weight on β.
        dtype, device: those of the returned tensor.

    Returns:
        w* = (β, β_0), shape (31,).
    """
    return torch.tensor(_solution_float64(float(lam)), dtype=torch.float64).to(dtype=dtype, device=device)


def logistic_oracle(lam: float = DEFAULT_LAMBDA, dtype: torch.dtype = torch.float64,
                    device: torch.device | str = "cpu") -> LogisticOracle:
    """The hand-written oracle of F on the standardised breast-cancer data (loaded through scikit-learn).

    Args:
        lam: λ > 0, the L2 weight on β (the intercept is not penalised).
        dtype, device: what it computes in and on.

    Returns:
        A :class:`LogisticOracle` with d = 31 and n = 569.

    Raises:
        ValueError: when ``lam`` is not > 0.
    """
    X, y = breast_cancer(dtype, device)
    return LogisticOracle(X, y, lam, dtype, device)


def logistic_fun(lam: float = DEFAULT_LAMBDA, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"):
    """The plain definition of F.

    Args:
        lam: λ, the L2 weight on β.
        dtype, device: those of the data (and of the w it expects).

    Returns:
        ``fun(w) -> F(w)`` (0-dim tensor) for w = (β, β_0) of shape (31,), autograd- and vmap-differentiable.
    """
    X, y = breast_cancer(dtype, device)

    def fun(w: torch.Tensor) -> torch.Tensor:
        return logistic_loss(w, X, y, lam)

    return fun
