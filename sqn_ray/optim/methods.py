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

Everything a method remembers between iterations is in one :class:`State` value: the iterate, its loss and
gradient, the iteration counter, the last accepted α or the trust radius, the components' memos (path pairs,
dense H or B, Adam's moments) and the state of the method's explicit generator. ``step(objective, state)``
returns a new value and never changes the old one, so a run can be saved (:meth:`StepMethod.export_state`,
plain tensors and numbers), restored into a fresh process and continued bit-identically.

Each method is run by :meth:`StepMethod.run`, which hands every iterate (the initial one included) to an
``emit`` function; ``emit`` records it and says whether to stop. A step returns a :class:`Step`: the new
state, the fields of its record (step size or trust radius, acceptance, pairs kept, realised ‖s‖, time
split) and, when the method cannot go on, why (termination is a returned value, not a record field).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, NamedTuple, Protocol

import torch

from ..curvature.models import DirectionModel, QuadraticModel
from ..curvature.sources import PairSource
from ..linalg.trust_region import cg_steihaug_hvp, exact_tr, reduce_dense, solve_tr
from ..objective import Objective
from ..options import OptionError
from ..records import step_defaults
from .globalization import TrustRegionRule, accept_trial, armijo_backtracking, evaluate_trial

#: ``emit(w, f, g, fields, state=None)`` records one iterate (``state``: the method's state there, when it has
#: one); it returns None to go on, or (status, message) to stop
Emit = Callable[[torch.Tensor, float, torch.Tensor, dict], "tuple[str, str] | None"]
#: what a line-search method does after a failed search (see :class:`LineSearchMethod`)
ON_FAILURE = ("restart", "retry")
#: how a line-search method sets its step length: Armijo backtracking or a constant α (see LineSearchMethod)
STEP_RULES = ("armijo", "fixed")
STATE_FORMAT = 1  # version of export_state's dict


@dataclass(frozen=True)
class State:
    """A method's whole state between two iterations (a value: steps return new ones).

    ``memo``: what the components remember, ``{"source": ..., "model": ...}`` (line search, trust region) or
    Adam's moments; ``rng``: the state of the method's generator after this iterate (None without one).
    """

    w: torch.Tensor
    f: float
    g: torch.Tensor
    iteration: int = 0
    step_size: float | None = None  # last accepted step length α (line search); None: no step taken yet
    trust_radius: float | None = None
    memo: dict = field(default_factory=dict)
    rng: torch.Tensor | None = None


class Step(NamedTuple):
    """One iteration's outcome: the new state, its record's fields, and ``stop`` = (status, message) when the
    method cannot go on from here (e.g. a classical line search that failed along −∇F)."""

    state: State
    fields: dict
    stop: tuple[str, str] | None = None


class Outcome(NamedTuple):
    """How a run ended: ``status`` (one of minimize's STATUSES), ``message`` and, for the step methods, the
    :class:`State` it ended in (to save, or to continue from)."""

    status: str
    message: str
    state: State | None = None


class Method(Protocol):
    """What ``minimize`` runs: the step methods and the external anchors (which drive their own loop)."""

    def run(self, objective: Objective, w0: torch.Tensor, max_iters: int, gtol: float,
            emit: Emit) -> tuple[str, str] | Outcome:
        ...


# a step's record fields with the defaults of what it does not measure (the record is defined in sqn_ray.records)
_nan_fields = step_defaults


def _mean_column_norm(S: torch.Tensor) -> float:
    return float(S.norm(dim=0).mean()) if S.shape[1] else math.nan


class StepMethod:
    """The iteration loop shared by every method that is a sequence of steps, and its state's life cycle."""

    #: the method's explicit generator (sampled methods), whose state travels in :attr:`State.rng`
    generator: torch.Generator | None = None

    def init_memo(self) -> dict:
        return {}

    def start(self, objective: Objective, w0: torch.Tensor) -> State:
        """The state at ``w0`` (one counted loss-and-gradient evaluation)."""
        f, g = objective.value_and_grad(w0)
        return State(w=w0.detach().clone(), f=float(f), g=g, memo=self.init_memo(), rng=self._rng_state())

    def initial_fields(self, state: State) -> dict:
        return _nan_fields(trust_radius=state.trust_radius if state.trust_radius is not None else math.nan)

    def step(self, objective: Objective, state: State) -> Step:
        raise NotImplementedError

    def advance(self, objective: Objective, state: State) -> Step:
        """:meth:`step` from ``state`` with the generator put where ``state`` left it, so that any state value,
        not only the newest, continues exactly; the new state carries the generator's state after the step."""
        if self.generator is not None and state.rng is not None:
            self.generator.set_state(state.rng)
        out = self.step(objective, state)
        if self.generator is not None:
            out = out._replace(state=replace(out.state, rng=self._rng_state()))
        return out

    def _rng_state(self) -> torch.Tensor | None:
        return self.generator.get_state() if self.generator is not None else None

    def run(self, objective, w0, max_iters, gtol, emit, state: State | None = None):
        """Iterate until ``max_iters`` (the last iteration number; a restored state continues towards it),
        ‖∇F‖ ≤ gtol, ``emit`` asks to stop or a step says it cannot go on. A restored ``state`` is not emitted
        again (its record belongs to the run that saved it) and costs no evaluation."""
        if state is None:
            state = self.start(objective, w0)
            if stop := emit(state.w, state.f, state.g, self.initial_fields(state), state=state):
                return Outcome(*stop, state)
        while state.iteration < max_iters:
            if float(state.g.norm()) <= gtol:
                return Outcome("converged", f"gradient norm {float(state.g.norm()):.3g} <= gtol {gtol:g}", state)
            state, fields, stop = self.advance(objective, state)
            if halt := emit(state.w, state.f, state.g, fields, state=state):
                return Outcome(*halt, state)
            if stop:
                return Outcome(*stop, state)
        return Outcome("max_iters", f"reached max_iters={max_iters}", state)

    # -- the state as plain tensors and numbers -------------------------------------------------------
    def export_state(self, state: State) -> dict:
        """``state`` as a dict of tensors, numbers, strings, tuples and None (``torch.save``-able, no pickled
        objects of this package), for :meth:`restore_state`."""
        return {"format": STATE_FORMAT, "method": type(self).__name__, "w": state.w, "f": state.f, "g": state.g,
                "iteration": state.iteration, "step_size": state.step_size, "trust_radius": state.trust_radius,
                "memo": state.memo, "rng": state.rng}

    def restore_state(self, saved: dict, objective: Objective | None = None) -> State:
        """The :class:`State` of an :meth:`export_state` dict, checked against this method (and the objective's
        dimension, dtype and device when given)."""
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
            raise ValueError(f"state must be a dict from export_state (format {STATE_FORMAT}), "
                             f"got {type(saved).__name__}"
                             f"{' of format ' + repr(saved.get('format')) if isinstance(saved, dict) else ''}")
        if saved.get("method") != type(self).__name__:
            raise ValueError(f"state was saved by a {saved.get('method')} method, not by {type(self).__name__}")
        w, g = saved["w"], saved["g"]
        if objective is not None:
            if w.numel() != objective.dim or w.dtype != objective.dtype:
                raise ValueError(f"state holds a {w.numel()}-dimensional {w.dtype} iterate but the objective "
                                 f"is {objective.dim}-dimensional {objective.dtype}")
            w, g = w.to(objective.device), g.to(objective.device)
        memo = _to_device(saved["memo"], w.device)
        return State(w=w, f=float(saved["f"]), g=g, iteration=int(saved["iteration"]),
                     step_size=saved["step_size"], trust_radius=saved["trust_radius"], memo=memo,
                     rng=saved["rng"])


def _to_device(value: Any, device: torch.device) -> Any:
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    return value


def _clock() -> float:
    """perf_counter after the GPU's queued work is done (where CUDA is in use), so that the time split of a step
    (t_pairs, t_model, t_search, t_grad) measures the work, not its launch. The phases end in a host read of a
    scalar anyway (the algorithm's own tests), so this adds no wait the step would not have; on the CPU it is
    a plain clock."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def _timed(fn, *args):
    t0 = _clock()
    out = fn(*args)
    return out, _clock() - t0


@dataclass
class _PairMethod(StepMethod):
    """A method with a pair source and a curvature model, each remembering through its memo."""

    source: PairSource
    model: Any

    @property
    def generator(self) -> torch.Generator | None:  # the sampled source's explicit generator
        return getattr(self.source, "generator", None)

    def init_memo(self) -> dict:
        return {"source": self.source.init_memo(), "model": self.model.init_memo()}

    def _observe(self, memo: dict, s: torch.Tensor, y: torch.Tensor) -> dict:
        return {"source": self.source.observe(memo["source"], s, y), "model": self.model.observe(memo["model"], s, y)}


@dataclass
class LineSearchMethod(_PairMethod):
    """Quasi-Newton direction p = −H∇F plus Armijo backtracking (Algorithm 2 for sampled pairs) or a fixed step.

    Trial step: 2 × the last accepted α (reference, ``trial_step="double-last"``) or 1 (``"unit"``, the usual
    quasi-Newton choice); the first trial, and the first iteration when ``gradient_first_step``, use
    α0 = min(1, 1/‖∇F‖₁) along −∇F with no sampling (reference default).

    ``on_failure`` (no α ≥ ``min_step`` satisfies the Armijo condition): ``"restart"`` forgets the remembered
    pairs and model, so the next iteration steps along −∇F, and stops the run if that search failed too (the
    classical methods); ``"retry"`` stays at w and tries again with what the next iteration brings (the
    sampled methods draw fresh pairs).

    ``step_rule="fixed"`` replaces the search by the constant step of the paper's analysis (Theorem 4):
    w ← w + ``lr``·p, p = −H_k∇F(w), every iteration, the first one included (there, with
    ``gradient_first_step``, H_0 = I: w_1 = w_0 − lr·∇F(w_0), not the search's α0 = min(1, 1/‖∇F‖₁)). It costs
    one loss-and-gradient evaluation at the new point plus the pairs', never rejects a step (``c1``,
    ``trial_step``, ``min_step`` and ``on_failure`` do not apply) and leaves a non-finite loss to the caller
    (``minimize`` ends such a run as ``"diverged"``, as for gradient descent).
    """

    model: DirectionModel
    c1: float = 1e-4
    min_step: float = 1e-25
    trial_step: str = "double-last"
    gradient_first_step: bool = True
    on_failure: str = "restart"
    step_rule: str = "armijo"
    lr: float = 1.0  # α of step_rule="fixed"

    def __post_init__(self):
        if self.on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure={self.on_failure!r} is not one of {ON_FAILURE}")
        if self.step_rule not in STEP_RULES:
            raise ValueError(f"step_rule={self.step_rule!r} is not one of {STEP_RULES}")

    def step(self, objective, state):
        w, f, g, memo = state.w, state.f, state.g, state.memo
        first = state.step_size is None
        p, slope, S, stats, t_pairs, t_model = self._direction(objective, state)
        if self.step_rule == "fixed":
            return self._fixed_step(objective, state, p, S, stats, t_pairs, t_model)
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
            stop = None
            if self.on_failure == "restart":
                # Restart from the gradient; if the search failed along −∇F already, nothing will change: stop.
                if stats["pairs_kept"] == 0:
                    stop = ("stalled", "line search failed along the steepest-descent direction")
                memo = self.init_memo()
            return Step(replace(state, iteration=state.iteration + 1, memo=memo), fields, stop)
        (f_new, g_new), t_grad = _timed(accept_trial, objective, ls.trial)
        w_new = ls.trial.w
        s, y = w_new - w, g_new - g
        memo = self._observe(memo, s, y)
        if not self.source.sampled:  # a path method's pair is the step itself
            fields["s_norm"] = float(s.norm())
        fields.update(step_size=ls.step_size, step_norm=float(s.norm()), t_grad=t_grad)
        return Step(State(w=w_new, f=float(f_new), g=g_new, iteration=state.iteration + 1,
                          step_size=ls.step_size, memo=memo, rng=state.rng), fields)

    def _direction(self, objective, state):
        """(p, ∇Fᵀp, S, stats, t_pairs, t_model) at ``state``: p = −∇F on a gradient first step (H_0 = I, no
        sampling), else p = −H∇F from the pairs; −∇F where round-off made that no descent direction."""
        w, g = state.w, state.g
        if state.step_size is None and self.gradient_first_step:
            p, S, stats, t_pairs, t_model = -g, w.new_zeros(w.numel(), 0), {"pairs_kept": 0,
                                                                              "identity_fallback": False}, 0.0, 0.0
        else:
            (S, Y), t_pairs = _timed(self.source.pairs, objective, w, g, state.memo["source"])
            (p, stats), t_model = _timed(self.model.direction, g, S, Y, state.memo["model"])
        slope = float(g @ p)
        if not slope < 0:  # not a descent direction (only through round-off): fall back to −∇F
            p, slope, stats = -g, -float(g @ g), {**stats, "identity_fallback": True}
        return p, slope, S, stats, t_pairs, t_model

    def _fixed_step(self, objective, state, p, S, stats, t_pairs, t_model):
        """w ← w + lr·p: one loss-and-gradient evaluation at the new point, no search, always taken."""
        w_new = state.w + self.lr * p
        (f_new, g_new), t_grad = _timed(objective.value_and_grad, w_new)
        s, y = w_new - state.w, g_new - state.g
        memo = self._observe(state.memo, s, y)
        fields = _nan_fields(accepted=True, s_norm=_mean_column_norm(S) if self.source.sampled else float(s.norm()),
                             step_size=self.lr, step_norm=float(s.norm()), t_pairs=t_pairs, t_model=t_model,
                             t_grad=t_grad, **stats)
        return Step(State(w=w_new, f=float(f_new), g=g_new, iteration=state.iteration + 1, step_size=self.lr,
                          memo=memo, rng=state.rng), fields)


@dataclass
class TrustRegionMethod(_PairMethod):
    """Algorithm 3 for sampled pairs (and classical SR1 / L-SR1): model from the pairs, TR subproblem,
    ratio test with η1, radius ×2 above 0.75 and ×½ below 0.1. A rejected step keeps w and the memos and
    shrinks the radius (the sampled methods draw fresh pairs at the same w next)."""

    model: QuadraticModel
    tr_solver: str = "cg-steihaug"
    initial_radius: float = 1.0
    rule: TrustRegionRule = field(default_factory=TrustRegionRule)

    def start(self, objective, w0):
        return replace(super().start(objective, w0), trust_radius=self.initial_radius)

    def step(self, objective, state):
        w, f, g, radius, memo = state.w, state.f, state.g, state.trust_radius, state.memo
        (S, Y), t_pairs = _timed(self.source.pairs, objective, w, g, memo["source"])
        t0 = _clock()
        reduced, stats = self.model.reduce(g, S, Y, memo["model"])
        sub = solve_tr(reduced, radius, self.tr_solver)
        p = reduced.lift(sub.a, sub.tau)
        predicted = -reduced.value(sub.a, sub.tau)
        t_model = _clock() - t0
        trial, t_search = _timed(evaluate_trial, objective, w + p)
        rho = self.rule.ratio(f, trial.f, predicted)
        accepted = self.rule.accepts(rho)
        fields = _nan_fields(trust_radius=radius, accepted=accepted, s_norm=_mean_column_norm(S), rho=rho,
                             inner_iters=sub.iterations, t_pairs=t_pairs, t_model=t_model, t_search=t_search,
                             **stats)
        next_radius = self.rule.next_radius(radius, rho)
        if not accepted:
            return Step(replace(state, iteration=state.iteration + 1, trust_radius=next_radius), fields)
        (f_new, g_new), t_grad = _timed(accept_trial, objective, trial)
        y = g_new - g
        memo = self._observe(memo, p, y)
        if not self.source.sampled:  # a path method's pair is the step itself
            fields["s_norm"] = float(p.norm())
        fields.update(step_norm=float(p.norm()), t_grad=t_grad)
        return Step(State(w=trial.w, f=float(f_new), g=g_new, iteration=state.iteration + 1,
                          trust_radius=next_radius, memo=memo, rng=state.rng), fields)


@dataclass
class NewtonTrustRegion(StepMethod):
    """Trust-region Newton on the exact Hessian (the poster's "true Hessian" baseline): the same ratio test
    and radius rule as the quasi-Newton trust-region methods, on the model gᵀp + ½ pᵀ∇²F(w)p.

    ``tr_solver="cg-steihaug"``: truncated CG-Steihaug applied through Hessian-vector products at w, one per
    CG iteration (at most d), stopped by the Newton-CG forcing term (N&W Alg. 7.1/7.2); ``"exact"``: the dense
    Hessian from d products (one batched block), then the exact subproblem solver (small d only). Every
    product is counted (``n_hvp``); ``inner_iters`` is the products of the iteration. It keeps no memory
    between iterations: a rejected step shrinks the radius and solves again at the same w."""

    tr_solver: str = "cg-steihaug"
    initial_radius: float = 1.0
    rule: TrustRegionRule = field(default_factory=TrustRegionRule)

    #: the largest d for ``tr_solver="exact"``: its dense Hessian holds d² numbers (10,000: 800 MB in float64)
    MAX_EXACT_DIM = 10_000

    def start(self, objective, w0):
        if self.tr_solver == "exact" and objective.dim > self.MAX_EXACT_DIM:
            raise OptionError(f"tr_solver='exact' builds the dense d×d Hessian, and d = {objective.dim} > "
                              f"{self.MAX_EXACT_DIM}; use tr_solver='cg-steihaug' (Hessian-vector products only)",
                              option="tr_solver", value="exact", allowed=("cg-steihaug",))
        return replace(super().start(objective, w0), trust_radius=self.initial_radius)

    def _step_in_region(self, objective, w, g, radius):
        if self.tr_solver == "exact":
            H = objective.hvp(w, torch.eye(g.numel(), dtype=g.dtype, device=g.device))
            H = 0.5 * (H + H.T)  # autograd's products are symmetric only to round-off
            reduced = reduce_dense(g, H)
            sub = exact_tr(reduced, radius)
            return reduced.lift(sub.a, sub.tau), -reduced.value(sub.a, sub.tau), g.numel()
        sub = cg_steihaug_hvp(g, lambda v: objective.hvp(w, v[:, None])[:, 0], radius)
        return sub.p, sub.model_decrease, sub.iterations

    def step(self, objective, state):
        w, f, g, radius = state.w, state.f, state.g, state.trust_radius
        t0 = _clock()
        p, predicted, products = self._step_in_region(objective, w, g, radius)
        t_model = _clock() - t0
        trial, t_search = _timed(evaluate_trial, objective, w + p)
        rho = self.rule.ratio(f, trial.f, predicted)
        accepted = self.rule.accepts(rho)
        fields = _nan_fields(trust_radius=radius, accepted=accepted, rho=rho, inner_iters=products,
                             t_model=t_model, t_search=t_search)
        next_radius = self.rule.next_radius(radius, rho)
        if not accepted:
            return Step(replace(state, iteration=state.iteration + 1, trust_radius=next_radius), fields)
        (f_new, g_new), t_grad = _timed(accept_trial, objective, trial)
        fields.update(step_norm=float(p.norm()), t_grad=t_grad)
        return Step(State(w=trial.w, f=float(f_new), g=g_new, iteration=state.iteration + 1,
                          trust_radius=next_radius, memo=state.memo, rng=state.rng), fields)


@dataclass
class GradientDescent(StepMethod):
    """w ← w − lr ∇F(w)."""

    lr: float = 0.1

    def step(self, objective, state):
        w_new = state.w - self.lr * state.g
        (f, g), t_grad = _timed(objective.value_and_grad, w_new)
        return Step(replace(state, w=w_new, f=float(f), g=g, iteration=state.iteration + 1),
                    _nan_fields(step_size=self.lr, step_norm=self.lr * float(state.g.norm()), t_grad=t_grad))


@dataclass
class Adam(StepMethod):
    """Adam (Kingma & Ba 2015, Alg. 1) on the full-batch gradient, bias-corrected; its memo holds the moment
    estimates ``m`` and ``v`` (None before the first step)."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def init_memo(self) -> dict:
        return {"m": None, "v": None}

    def step(self, objective, state):
        g, k = state.g, state.iteration + 1
        m, v = state.memo["m"], state.memo["v"]
        if m is None:
            m, v = torch.zeros_like(g), torch.zeros_like(g)
        m = self.beta1 * m + (1 - self.beta1) * g
        v = self.beta2 * v + (1 - self.beta2) * g * g
        m_hat = m / (1 - self.beta1 ** k)
        v_hat = v / (1 - self.beta2 ** k)
        step = self.lr * m_hat / (v_hat.sqrt() + self.eps)
        w_new = state.w - step
        (f, g_new), t_grad = _timed(objective.value_and_grad, w_new)
        return Step(replace(state, w=w_new, f=float(f), g=g_new, iteration=k, memo={"m": m, "v": v}),
                    _nan_fields(step_size=self.lr, step_norm=float(step.norm()), t_grad=t_grad))
