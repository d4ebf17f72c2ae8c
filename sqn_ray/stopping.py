"""When a run stops: the budget (iterations, gradient-equivalents, wall time) and the stop rule (a target
accuracy or loss, ``gtol``), defined once and used by ``sqn-ray run``, ``sqn-ray eigen`` and the study
platform's trials alike. Ray-free.

    rules = StopRules(iterations=1000, accuracy=1.0, wall_time=60)
    def callback(x, record):
        return rules.check(record, accuracy=problem.accuracy(x)) is not None
    minimize(problem.oracle, w0, "s-lsr1", callback=callback, **rules.minimize_options())

:meth:`StopRules.check` applies the rules a callback applies, in this order: the target accuracy
(``"target"``), the target loss (``"target_loss"``), the gradient-equivalent budget (``"grad_equivalents"``),
the wall-time budget (``"wall_time"``). The iteration budget and ``gtol`` are ``minimize``'s own
(:meth:`StopRules.minimize_options`); :func:`reason_of_status` names the reason of a run that ``minimize``
stopped itself (``"iterations"``, ``"converged"``, ``"stalled"``, ...).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Mapping

__all__ = ["StopRules", "STOP_REASONS", "SOLVED_REASONS", "reason_of_status"]

#: the reasons :meth:`StopRules.check` returns, in its order of precedence
STOP_REASONS = ("target", "target_loss", "grad_equivalents", "wall_time")
#: the reasons that mean the run solved the problem
SOLVED_REASONS = ("target", "target_loss")
#: minimize's status -> the stop reason of a run that minimize stopped itself (other statuses are their own)
_STATUS_REASONS = {"max_iters": "iterations", "converged": "converged", "stalled": "stalled"}


def reason_of_status(status: str) -> str:
    """The stop reason of a run ``minimize`` ended itself with ``status`` (``max_iters`` -> ``iterations``)."""
    return _STATUS_REASONS.get(status, status)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


@dataclass(frozen=True)
class StopRules:
    """A run's budget and stop rule; None disables a rule.

    ``iterations``: iteration budget (an integer >= 0; ``minimize``'s ``max_iters``); ``grad_equivalents``,
    ``wall_time``: budgets (> 0; wall time in seconds of the optimizer's own time); ``accuracy``: target
    accuracy (a fraction in [0, 1]); ``loss``: target loss; ``gtol``: gradient-norm tolerance (>= 0;
    ``minimize``'s, its default when None). Bad values raise ValueError naming the field and the value."""

    iterations: int | None = None
    grad_equivalents: float | None = None
    wall_time: float | None = None
    accuracy: float | None = None
    loss: float | None = None
    gtol: float | None = None

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "iterations":
                if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
                    raise ValueError(f"stop rule iterations must be an integer >= 0, got {value!r}")
                continue
            if not _is_number(value) or not math.isfinite(value):
                raise ValueError(f"stop rule {f.name} must be a finite number, got {value!r}")
            if f.name in ("grad_equivalents", "wall_time") and value <= 0:
                raise ValueError(f"stop rule {f.name} must be > 0, got {value!r}")
            if f.name == "gtol" and value < 0:
                raise ValueError(f"stop rule gtol must be >= 0, got {value!r}")
            if f.name == "accuracy" and not 0 <= value <= 1:
                raise ValueError(f"stop rule accuracy must be a fraction in [0, 1], got {value!r}")

    @classmethod
    def from_study(cls, budget: Mapping[str, Any] | None, stop: Mapping[str, Any] | None = None, *,
                   target_accuracy: float | None = None) -> "StopRules":
        """The rules of a study file's ``budget`` and ``stop`` mappings.

        Args:
            budget: keys among ``iterations``, ``grad_equivalents``, ``wall_time`` (None: no budget).
            stop: keys among ``accuracy``, ``loss`` (None: no stop rule); ``accuracy: "target"`` stands for
                ``target_accuracy``.
            target_accuracy: the problem's target accuracy (None: ``"target"`` sets no accuracy rule).

        Returns:
            The :class:`StopRules` (``gtol`` unset).

        Raises:
            ValueError: for an unknown key in either mapping, or a bad value (as the constructor).
        """
        budget, stop = dict(budget or {}), dict(stop or {})
        for name, given, known in (("budget", budget, ("iterations", "grad_equivalents", "wall_time")),
                                   ("stop", stop, ("accuracy", "loss"))):
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise ValueError(f"stop rules: unknown {name} key(s) {unknown} (known: {', '.join(known)})")
        accuracy = stop.get("accuracy")
        if accuracy == "target":
            accuracy = target_accuracy
        return cls(iterations=budget.get("iterations"), grad_equivalents=budget.get("grad_equivalents"),
                   wall_time=budget.get("wall_time"), accuracy=accuracy, loss=stop.get("loss"))

    def check(self, record: Mapping[str, Any], accuracy: float | None = None, overhead: float = 0.0) -> str | None:
        """Whether to stop after an iterate, by the rules a callback applies (in STOP_REASONS order).

        Args:
            record: the iterate's record (``minimize``'s callback ``record``); reads ``loss``,
                ``grad_equivalents`` and ``wall_time`` (only those whose rule is set).
            accuracy: the iterate's accuracy, a fraction (None or NaN where not evaluated: no accuracy rule
                then).
            overhead: seconds of the record's ``wall_time`` that were not the optimizer's (the caller's
                evaluations), taken out before the wall-time budget is compared.

        Returns:
            The first rule met: ``"target"`` (accuracy >= the target), ``"target_loss"`` (loss <= the target),
            ``"grad_equivalents"`` or ``"wall_time"`` (budget reached); None to go on.
        """
        if self.accuracy is not None and accuracy is not None and accuracy >= self.accuracy:
            return "target"
        if self.loss is not None and record["loss"] <= self.loss:
            return "target_loss"
        if self.grad_equivalents is not None and record["grad_equivalents"] >= self.grad_equivalents:
            return "grad_equivalents"
        if self.wall_time is not None and record["wall_time"] - overhead >= self.wall_time:
            return "wall_time"
        return None

    def solved(self, reason: str | None, best_accuracy: float | None = None) -> bool:
        """Whether a run that stopped for ``reason`` with ``best_accuracy`` solved the problem: it stopped at a
        target, or reached the target accuracy at some iterate."""
        return reason in SOLVED_REASONS or (self.accuracy is not None and best_accuracy is not None
                                            and best_accuracy >= self.accuracy)

    def minimize_options(self) -> dict[str, Any]:
        """``minimize``'s own part of the rules: ``max_iters`` and ``gtol`` (those set)."""
        out = {}
        if self.iterations is not None:
            out["max_iters"] = self.iterations
        if self.gtol is not None:
            out["gtol"] = self.gtol
        return out
