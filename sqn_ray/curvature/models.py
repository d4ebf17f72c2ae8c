"""Curvature models: turn pairs into a search direction (line-search family) or a TR model (trust-region family).

Limited-memory models (:class:`LBFGSInverse`, :class:`CompactLSR1`) are rebuilt from the pairs they are given
each iteration and serve both the sampled methods and their limited-memory classical twins. Dense models
(:class:`DenseBFGSInverse`, :class:`DenseSR1`) fold each new path pair into a d×d matrix once, through
``observe``; they ignore the pair window.

Every model reports ``pairs_kept`` and whether it fell back to the identity because no pair survived its
filter (the reference code crashed there; we take a gradient step / B = I and record it).

Models hold no iteration state: a dense model's matrix lives in its *memo* (``{"H" or "B": tensor | None,
"n_pairs": int}``), a value the method keeps in its state and passes back at every call; ``observe`` returns a
new memo. The limited-memory models remember nothing (their memo is ``{}``): their pairs live in the source.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..linalg.lbfgs import bfgs_inverse_update, compact_inverse_from_gram, gram_blocks, lbfgs_gamma
from ..linalg.sr1 import CompactSR1, sr1_filter, sr1_gamma, sr1_update
from ..linalg.trust_region import ReducedModel, reduce_compact, reduce_dense

B0_CHOICES = ("zero", "gamma")


@runtime_checkable
class DirectionModel(Protocol):
    """A line-search method's model: a search direction p = −H g from the pairs (and its memo)."""

    def init_memo(self) -> dict: ...

    def direction(self, g: torch.Tensor, S: torch.Tensor, Y: torch.Tensor,
                  memo: dict | None = None) -> tuple[torch.Tensor, dict]:
        """(p, stats) with stats ``pairs_kept`` and ``identity_fallback``."""
        ...

    def observe(self, memo: dict, s: torch.Tensor, y: torch.Tensor) -> dict: ...


@runtime_checkable
class QuadraticModel(Protocol):
    """A trust-region method's model m(p) = gᵀp + ½ pᵀBp, reduced to the subspace the subproblem solves in."""

    def init_memo(self) -> dict: ...

    def reduce(self, g: torch.Tensor, S: torch.Tensor, Y: torch.Tensor,
               memo: dict | None = None) -> tuple[ReducedModel, dict]:
        """(reduced model, stats) with stats ``pairs_kept`` and ``identity_fallback``."""
        ...

    def observe(self, memo: dict, s: torch.Tensor, y: torch.Tensor) -> dict: ...


class _Memoryless:
    """Limited-memory models: the pair window lives in the pair source, nothing is kept here."""

    def init_memo(self) -> dict:
        return {}

    def observe(self, memo: dict, s, y) -> dict:
        return memo


def angle_filter(SY: np.ndarray, SS: np.ndarray, YY: np.ndarray, eps: float) -> np.ndarray:
    """Paper's condition (1): keep pair i iff sᵢᵀyᵢ > ε‖sᵢ‖‖yᵢ‖ (scale-free curvature test)."""
    sy = np.diag(SY)
    with np.errstate(invalid="ignore"):  # NaN pairs (overflowed evaluations) simply fail the test
        return np.flatnonzero(sy > eps * np.sqrt(np.clip(np.diag(SS), 0, None) * np.clip(np.diag(YY), 0, None)))


def lbfgs_selection(SY: np.ndarray, SS: np.ndarray, YY: np.ndarray, eps: float) -> tuple[np.ndarray, float]:
    """The pairs L-BFGS keeps (condition (1)) and its H0 = γI scale from the last kept pair (γ = 1 if none)."""
    keep = angle_filter(SY, SS, YY, eps)
    if keep.size == 0:
        return keep, 1.0
    return keep, lbfgs_gamma(float(SY[keep[-1], keep[-1]]), float(YY[keep[-1], keep[-1]]))


@dataclass
class LBFGSInverse(_Memoryless):
    """p = −H g, H the L-BFGS inverse from the kept pairs, H0 = γI with γ from the last kept pair."""

    eps: float = 1e-8

    def direction(self, g: torch.Tensor, S: torch.Tensor, Y: torch.Tensor, memo: dict | None = None):
        k = S.shape[1]
        if k:
            SY, SS, YY, Sg, Yg = gram_blocks(S, Y, g)
            keep, gamma = lbfgs_selection(SY, SS, YY, self.eps)
        if not k or keep.size == 0:
            return -g, {"pairs_kept": 0, "identity_fallback": True}
        SY, YY, Sg, Yg = SY[np.ix_(keep, keep)], YY[np.ix_(keep, keep)], Sg[keep], Yg[keep]
        idx = torch.as_tensor(keep, device=g.device)
        Z = torch.cat([S.index_select(1, idx), Y.index_select(1, idx)], dim=1)
        Hg = compact_inverse_from_gram(g, Z, SY, YY, Sg, Yg, gamma)
        return -Hg, {"pairs_kept": int(keep.size), "identity_fallback": False}


@dataclass
class DenseBFGSInverse:
    """Classical BFGS: a dense inverse Hessian, H0 = I rescaled by γ = sᵀy/yᵀy before the first update
    (N&W eq. 6.20); pairs failing the angle test are skipped."""

    eps: float = 1e-8

    def init_memo(self) -> dict:
        return {"H": None, "n_pairs": 0}

    def direction(self, g: torch.Tensor, S, Y, memo: dict | None = None):
        H = memo["H"] if memo is not None else None
        if H is None:
            return -g, {"pairs_kept": 0, "identity_fallback": True}
        return -(H @ g), {"pairs_kept": memo["n_pairs"], "identity_fallback": False}

    def observe(self, memo: dict, s: torch.Tensor, y: torch.Tensor) -> dict:
        sy, ss, yy = float(s @ y), float(s @ s), float(y @ y)
        if not sy > self.eps * np.sqrt(ss * yy):
            return memo
        H = memo["H"]
        if H is None:
            H = (sy / yy) * torch.eye(s.numel(), dtype=s.dtype, device=s.device)
        return {"H": bfgs_inverse_update(H, s, y), "n_pairs": memo["n_pairs"] + 1}


@dataclass
class CompactLSR1(_Memoryless):
    """B = B0 + compact SR1 of the pairs kept by the sequential filter; B0 = 0 (reference) or γI."""

    eps: float = 1e-8
    b0: str = "zero"

    def reduce(self, g: torch.Tensor, S: torch.Tensor, Y: torch.Tensor,
               memo: dict | None = None) -> tuple[ReducedModel, dict]:
        k = S.shape[1]
        gamma, keep = (1.0 if self.b0 == "gamma" else 0.0), []
        if k:
            SY, SS, YY, _, _ = gram_blocks(S, Y, g)
            if self.b0 == "gamma":
                gamma = sr1_gamma(SY, SS)
            selection = sr1_filter(SY, SS, YY, gamma, self.eps)
            keep = selection.kept
        if not keep:
            # Identity fallback: with no curvature information the model is B = I (a Cauchy/gradient step).
            model = CompactSR1(gamma=1.0, Psi=g.new_zeros(g.numel(), 0), M=np.zeros((0, 0)))
            return reduce_compact(g, model), {"pairs_kept": 0, "identity_fallback": True, "b0_gamma": 1.0}
        if len(keep) < k:  # usually every pair survives: skip the d-sized copies then
            K = np.array(keep)
            idx = torch.as_tensor(K, device=g.device)
            S, Y, SY, SS = S.index_select(1, idx), Y.index_select(1, idx), SY[np.ix_(K, K)], SS[np.ix_(K, K)]
        model = CompactSR1.from_pairs(S, Y, gamma, SY, SS, factors=selection)
        return reduce_compact(g, model), {"pairs_kept": len(keep), "identity_fallback": False, "b0_gamma": gamma}


@dataclass
class DenseSR1:
    """Classical SR1: dense B from B0 = I, rank-one updates with the SR1 safeguard."""

    eps: float = 1e-8

    def init_memo(self) -> dict:
        return {"B": None, "n_pairs": 0}

    def reduce(self, g: torch.Tensor, S, Y, memo: dict | None = None) -> tuple[ReducedModel, dict]:
        memo = memo if memo is not None else self.init_memo()
        B = memo["B"] if memo["B"] is not None else torch.eye(g.numel(), dtype=g.dtype, device=g.device)
        return reduce_dense(g, B), {"pairs_kept": memo["n_pairs"], "identity_fallback": memo["n_pairs"] == 0}

    def observe(self, memo: dict, s: torch.Tensor, y: torch.Tensor) -> dict:
        B = memo["B"] if memo["B"] is not None else torch.eye(s.numel(), dtype=s.dtype, device=s.device)
        B, kept = sr1_update(B, s, y, self.eps)
        return {"B": B, "n_pairs": memo["n_pairs"] + int(kept)}
