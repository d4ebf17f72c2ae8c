"""Globalization: Armijo backtracking (line-search family) and the trust-region ratio test.

Pure functions; the only side effects are the counted loss evaluations of the objective.

A globalization hands back the trial point it evaluated (:class:`TrialPoint`); the method completes an
accepted one with :func:`accept_trial`, which evaluates the gradient at that very tensor. Oracles that keep
the forward pass of their last point (the MLP oracle, the Ray oracle's workers) recognise it and skip the
forward pass; rebuilding the point (``w + α p`` once more) would silently pay it again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..objective import Objective


@dataclass(frozen=True)
class TrialPoint:
    """A point whose loss the globalization has computed (``f`` as a float), to be accepted or rejected."""

    w: torch.Tensor
    f: float


def evaluate_trial(objective: Objective, w: torch.Tensor) -> TrialPoint:
    """F at a trial point (one counted loss evaluation)."""
    return TrialPoint(w, float(objective.value(w)))


def accept_trial(objective: Objective, trial: TrialPoint) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, ∇F) at an accepted trial point: one counted loss-and-gradient evaluation at the evaluated tensor
    itself, so an oracle that caches its last forward pass reuses it."""
    return objective.value_and_grad(trial.w)


@dataclass(frozen=True)
class LineSearchResult:
    step_size: float | None  # None: no step satisfied the condition above ``min_step``
    loss: float
    evaluations: int
    trial: TrialPoint | None = None  # the accepted point w + αp as evaluated (complete it with accept_trial)

    @property
    def point(self) -> torch.Tensor | None:
        """The accepted point (kept for callers of the earlier field)."""
        return self.trial.w if self.trial is not None else None


def armijo_backtracking(objective: Objective, w: torch.Tensor, f: float, slope: float, p: torch.Tensor,
                        initial_step: float, *, c1: float = 1e-4, min_step: float = 1e-25) -> LineSearchResult:
    """Largest α = α0 / 2^j ≥ ``min_step`` with F(w + αp) ≤ F(w) + c1 α ∇Fᵀp (``slope`` = ∇Fᵀp < 0).

    A non-finite trial value counts as a failed condition (so a step into overflow is halved, not taken).
    Unlike the reference, a step below ``min_step`` is never accepted.
    """
    alpha, evaluations = float(initial_step), 0
    while alpha >= min_step:
        trial = evaluate_trial(objective, w + alpha * p)
        evaluations += 1
        if math.isfinite(trial.f) and trial.f <= f + c1 * alpha * slope:
            return LineSearchResult(alpha, trial.f, evaluations, trial)
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
