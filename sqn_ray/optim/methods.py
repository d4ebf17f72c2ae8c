"""Methods as compositions: pair source × curvature model × globalization.

========== ============== ====================== ==============
method     pair source    curvature model        globalization
========== ============== ====================== ==============
s-lbfgs    SampledPairs   LBFGSInverse           Armijo
lbfgs      PathPairs(m)   LBFGSInverse           Armijo
bfgs       (path, dense)  DenseBFGSInverse       Armijo
s-lsr1     SampledPairs   CompactLSR1 (B0 = 0)   trust region
lsr1       PathPairs(m)   CompactLSR1 (B0 = γI)  trust region
sr1        (path, dense)  DenseSR1 (B0 = I)      trust region
========== ============== ====================== ==============

Each method is run by :meth:`StepMethod.run`, which hands every iterate (the initial one included) to an
``emit`` function; ``emit`` records it and says whether to stop. A step returns the new state and the
fields of its record (step size or trust radius, acceptance, pairs kept, realised ‖s‖, time split).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

import torch

from ..linalg.trust_region import solve_tr
from ..objective import Objective
from .globalization import TrustRegionRule, armijo_backtracking

Emit = Callable[[torch.Tensor, float, torch.Tensor, dict], "str | None"]


@dataclass(frozen=True)
class State:
    w: torch.Tensor
    f: float
    g: torch.Tensor
    iteration: int = 0
    step_size: float | None = None  # last accepted step length α (line search)
    trust_radius: float | None = None


class Method(Protocol):
    def run(self, objective: Objective, w0: torch.Tensor, max_iters: int, gtol: float, emit: Emit) -> tuple[str, str]:
        ...


def _nan_fields(**known) -> dict:
    fields = {"step_size": math.nan, "trust_radius": math.nan, "accepted": True, "pairs_kept": 0,
              "s_norm": math.nan, "step_norm": math.nan, "identity_fallback": False, "rho": math.nan,
              "inner_iters": 0, "t_pairs": 0.0, "t_model": 0.0, "t_search": 0.0, "t_grad": 0.0}
    fields.update(known)
    return fields


def _mean_column_norm(S: torch.Tensor) -> float:
    return float(S.norm(dim=0).mean()) if S.shape[1] else math.nan


class StepMethod:
    """The iteration loop shared by every method that is a sequence of steps."""

    def start(self, objective: Objective, w0: torch.Tensor) -> State:
        f, g = objective.value_and_grad(w0)
        return State(w=w0.detach().clone(), f=float(f), g=g)

    def initial_fields(self, state: State) -> dict:
        return _nan_fields(trust_radius=state.trust_radius if state.trust_radius is not None else math.nan)

    def step(self, objective: Objective, state: State) -> tuple[State, dict]:
        raise NotImplementedError

    def run(self, objective, w0, max_iters, gtol, emit):
        state = self.start(objective, w0)
        if stop := emit(state.w, state.f, state.g, self.initial_fields(state)):
            return stop
        for _ in range(max_iters):
            if float(state.g.norm()) <= gtol:
                return "converged", f"gradient norm {float(state.g.norm()):.3g} <= gtol {gtol:g}"
            state, fields = self.step(objective, state)
            if stop := emit(state.w, state.f, state.g, fields):
                return stop
            if fields.get("stalled"):
                return "stalled", fields["stalled"]
        return "max_iters", f"reached max_iters={max_iters}"


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


@dataclass
class LineSearchMethod(StepMethod):
    """Quasi-Newton direction p = −H∇F plus Armijo backtracking (Algorithm 2 for sampled pairs).

    Trial step: 2 × the last accepted α (reference, ``trial_step="double-last"``) or 1 (``"unit"``, the usual
    quasi-Newton choice); the first trial, and the first iteration when ``gradient_first_step``, use
    α0 = min(1, 1/‖∇F‖₁) along −∇F with no sampling (reference default).
    """

    source: object
    model: object
    c1: float = 1e-4
    min_step: float = 1e-25
    trial_step: str = "double-last"
    gradient_first_step: bool = True

    def step(self, objective, state):
        w, f, g = state.w, state.f, state.g
        first = state.step_size is None
        t0 = time.perf_counter()
        if first and self.gradient_first_step:
            S = Y = w.new_zeros(w.numel(), 0)
        else:
            S, Y = self.source.pairs(objective, w, g)
        t1 = time.perf_counter()
        if first and self.gradient_first_step:
            p, stats = -g, {"pairs_kept": 0, "identity_fallback": False}
        else:
            p, stats = self.model.direction(g, S, Y)
        t_pairs, t_model = t1 - t0, time.perf_counter() - t1
        slope = float(g @ p)
        if not slope < 0:  # not a descent direction (only through round-off): fall back to −∇F
            p, slope, stats = -g, -float(g @ g), {**stats, "identity_fallback": True}
        if first:
            initial = min(1.0, 1.0 / float(g.abs().sum()))
        else:
            initial = 2.0 * state.step_size if self.trial_step == "double-last" else 1.0
        ls, t_search = _timed(lambda: armijo_backtracking(objective, w, f, slope, p, initial,
                                                          c1=self.c1, min_step=self.min_step))
        fields = _nan_fields(accepted=ls.step_size is not None, s_norm=_mean_column_norm(S), inner_iters=ls.evaluations,
                             t_pairs=t_pairs, t_model=t_model, t_search=t_search, **stats)
        if ls.step_size is None:
            fields["step_size"] = 0.0
            if not self.source.sampled:
                # A classical method that fails along its own direction restarts from the gradient;
                # if that failed too, nothing will change: stop.
                if stats["pairs_kept"] == 0:
                    fields["stalled"] = "line search failed along the steepest-descent direction"
                self.source.reset()
                self.model.reset()
            return replace(state, iteration=state.iteration + 1), fields
        # the very tensor the search evaluated: an oracle that caches its forward pass by point reuses it
        w_new = ls.point
        (f_new, g_new), t_grad = _timed(objective.value_and_grad, w_new)
        s, y = w_new - w, g_new - g
        self.source.observe(s, y)
        self.model.observe(s, y)
        if not self.source.sampled:
            fields["s_norm"] = float(s.norm())
        fields.update(step_size=ls.step_size, step_norm=float(s.norm()), t_grad=t_grad)
        return State(w=w_new, f=float(f_new), g=g_new, iteration=state.iteration + 1,
                     step_size=ls.step_size), fields


@dataclass
class TrustRegionMethod(StepMethod):
    """Algorithm 3 for sampled pairs (and classical SR1 / L-SR1): model from the pairs, TR subproblem,
    ratio test with η1, radius ×2 above 0.75 and ×½ below 0.1."""

    source: object
    model: object
    tr_solver: str = "cg-steihaug"
    initial_radius: float = 1.0
    rule: TrustRegionRule = field(default_factory=TrustRegionRule)

    def start(self, objective, w0):
        return replace(super().start(objective, w0), trust_radius=self.initial_radius)

    def step(self, objective, state):
        w, f, g, radius = state.w, state.f, state.g, state.trust_radius
        (S, Y), t_pairs = _timed(self.source.pairs, objective, w, g)
        t0 = time.perf_counter()
        reduced, stats = self.model.reduce(g, S, Y)
        sub = solve_tr(reduced, radius, self.tr_solver)
        p = reduced.lift(sub.a, sub.tau)
        predicted = -reduced.value(sub.a, sub.tau)
        t_model = time.perf_counter() - t0
        w_trial = w + p
        f_trial, t_search = _timed(lambda: float(objective.value(w_trial)))
        rho = self.rule.ratio(f, f_trial, predicted)
        accepted = self.rule.accepts(rho)
        fields = _nan_fields(trust_radius=radius, accepted=accepted, s_norm=_mean_column_norm(S), rho=rho,
                             inner_iters=sub.iterations, t_pairs=t_pairs, t_model=t_model, t_search=t_search,
                             **stats)
        next_radius = self.rule.next_radius(radius, rho)
        if not accepted:
            return replace(state, iteration=state.iteration + 1, trust_radius=next_radius), fields
        w_new = w_trial  # same tensor as the trial evaluation: an oracle's cached forward pass is reused
        (f_new, g_new), t_grad = _timed(objective.value_and_grad, w_new)
        y = g_new - g
        self.source.observe(p, y)
        self.model.observe(p, y)
        if not self.source.sampled:
            fields["s_norm"] = float(p.norm())
        fields.update(step_norm=float(p.norm()), t_grad=t_grad)
        return State(w=w_new, f=float(f_new), g=g_new, iteration=state.iteration + 1,
                     trust_radius=next_radius), fields


@dataclass
class GradientDescent(StepMethod):
    """w ← w − lr ∇F(w)."""

    lr: float = 0.1

    def step(self, objective, state):
        w_new = state.w - self.lr * state.g
        (f, g), t_grad = _timed(objective.value_and_grad, w_new)
        return (State(w=w_new, f=float(f), g=g, iteration=state.iteration + 1),
                _nan_fields(step_size=self.lr, step_norm=self.lr * float(state.g.norm()), t_grad=t_grad))


@dataclass
class Adam(StepMethod):
    """Adam (Kingma & Ba 2015, Alg. 1) on the full-batch gradient, bias-corrected."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    _m: torch.Tensor | None = field(default=None, init=False)
    _v: torch.Tensor | None = field(default=None, init=False)

    def step(self, objective, state):
        g, k = state.g, state.iteration + 1
        if self._m is None:
            self._m, self._v = torch.zeros_like(g), torch.zeros_like(g)
        self._m = self.beta1 * self._m + (1 - self.beta1) * g
        self._v = self.beta2 * self._v + (1 - self.beta2) * g * g
        m_hat = self._m / (1 - self.beta1 ** k)
        v_hat = self._v / (1 - self.beta2 ** k)
        step = self.lr * m_hat / (v_hat.sqrt() + self.eps)
        w_new = state.w - step
        (f, g_new), t_grad = _timed(objective.value_and_grad, w_new)
        return (State(w=w_new, f=float(f), g=g_new, iteration=k),
                _nan_fields(step_size=self.lr, step_norm=float(step.norm()), t_grad=t_grad))

