"""Globalization: Armijo backtracking (line-search family) and the trust-region ratio test.

Pure functions; the only side effects are the counted loss evaluations of the objective.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..objective import Objective


@dataclass(frozen=True)
class LineSearchResult:
    step_size: float | None  # None: no step satisfied the condition above ``min_step``
    loss: float
    evaluations: int
    point: torch.Tensor | None = None  # w + αp as evaluated (the caller reuses it: oracles cache by point)


def armijo_backtracking(objective: Objective, w: torch.Tensor, f: float, slope: float, p: torch.Tensor,
                        initial_step: float, *, c1: float = 1e-4, min_step: float = 1e-25) -> LineSearchResult:
    """Largest α = α0 / 2^j ≥ ``min_step`` with F(w + αp) ≤ F(w) + c1 α ∇Fᵀp (``slope`` = ∇Fᵀp < 0).

    A non-finite trial value counts as a failed condition (so a step into overflow is halved, not taken).
    Unlike the reference, a step below ``min_step`` is never accepted.
    """
    alpha, evaluations = float(initial_step), 0
    while alpha >= min_step:
        trial = w + alpha * p
        f_new = float(objective.value(trial))
        evaluations += 1
        if math.isfinite(f_new) and f_new <= f + c1 * alpha * slope:
            return LineSearchResult(alpha, f_new, evaluations, trial)
        alpha *= 0.5
    return LineSearchResult(None, f, evaluations)


@dataclass(frozen=True)
class TrustRegionRule:
    """Ratio test and radius update of Algorithm 3 (reference constants)."""

    eta1: float = 1e-6  # accept when ρ > η1
    expand_above: float = 0.75  # Δ ← 2Δ when ρ > 0.75
    shrink_below: float = 0.1  # Δ ← Δ/2 when ρ < 0.1

    def ratio(self, f: float, f_trial: float, predicted_reduction: float) -> float:
        """ρ = (F(w) − F(w+p)) / (m(0) − m(p)); −∞ when the model predicts no decrease (guard) or F(w+p)
        is not finite, so such a step is rejected and the radius shrinks."""
        if not (predicted_reduction > 0 and math.isfinite(f_trial)):
            return -math.inf
        return (f - f_trial) / predicted_reduction

    def accepts(self, rho: float) -> bool:
        return rho > self.eta1

    def next_radius(self, radius: float, rho: float) -> float:
        if rho > self.expand_above:
            return 2.0 * radius
        if rho < self.shrink_below:
            return 0.5 * radius
        return radius
