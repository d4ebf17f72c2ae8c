"""``minimize``: the functional entry point, scipy-style, over flat parameter tensors."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import torch

from ..objective import AutogradOracle, Objective
from ..records import RECORD_FIELDS  # the record's fields, defined once; importable from here too
from .registry import get_method

STATUSES = ("converged", "max_iters", "callback", "diverged", "stalled")


@dataclass
class MinimizeResult:
    """``x`` final parameters; ``history`` one row per iterate (row 0 the initial point); ``status`` one of
    STATUSES; ``message`` why it stopped; ``counters`` the objective's final counters."""

    x: torch.Tensor
    loss: float
    status: str
    message: str
    history: pd.DataFrame
    method: str
    options: dict = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.status == "converged"

    @property
    def nit(self) -> int:
        return int(self.history["iteration"].iloc[-1]) if len(self.history) else 0


def make_record(iteration: int, loss: float, grad_norm: float, counters, fields: dict, start: float) -> dict:
    """One iterate's record: identity, loss, gradient norm, the counters, the step's fields (not its internal
    ``stalled`` flag) and the wall time since ``start`` (a perf_counter reading)."""
    return {"iteration": iteration, "loss": loss, "grad_norm": grad_norm, **counters.snapshot(),
            **{k: v for k, v in fields.items() if k != "stalled"}, "wall_time": time.perf_counter() - start}


def as_objective(fun, w0: torch.Tensor, *, hvp_backend: str = "auto", grads_backend: str = "auto") -> Objective:
    """An :class:`Objective` for a callable, an Oracle (has ``loss_and_grad``) or an Objective (fresh counters)."""
    if isinstance(fun, Objective):
        return Objective(fun.oracle, batch_fraction=fun.batch_fraction)
    if hasattr(fun, "loss_and_grad") and hasattr(fun, "hvps"):
        # a sub-sampling oracle says which share of the data one call touches (the epochs axis)
        return Objective(fun, batch_fraction=getattr(fun, "batch_fraction", 1.0))
    if callable(fun):
        return Objective(AutogradOracle(fun, w0.numel(), w0.dtype, w0.device,
                                        hvp_backend=hvp_backend, grads_backend=grads_backend))
    raise TypeError(f"fun must be a callable w -> scalar tensor, an Oracle or an Objective, got {type(fun).__name__}")


def check_w0(w0, objective: Objective | None = None) -> None:
    if not torch.is_tensor(w0):
        raise TypeError(f"w0 must be a torch.Tensor, got {type(w0).__name__}")
    if w0.dim() != 1:
        raise ValueError(f"w0 must be a flat 1-D tensor, got shape {tuple(w0.shape)} (flatten it, e.g. w0.reshape(-1))")
    if w0.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"w0 must be float32 or float64, got {w0.dtype}")
    if not torch.isfinite(w0).all():
        raise ValueError("w0 contains non-finite values")
    if objective is not None:
        if w0.numel() != objective.dim:
            raise ValueError(f"w0 has {w0.numel()} entries but the objective has dimension {objective.dim}")
        if w0.dtype != objective.dtype:
            raise ValueError(f"w0 is {w0.dtype} but the objective computes in {objective.dtype}")


def minimize(fun, w0: torch.Tensor, method: str = "s-lsr1", *, max_iters: int = 1000,
             callback: Callable | None = None, gtol: float = 1e-8, hvp_backend: str = "auto",
             grads_backend: str = "auto", **options) -> MinimizeResult:
    """Minimise F from ``w0`` with a registered method.

    Args:
        fun: ``fun(w) -> scalar tensor`` of a flat tensor (differentiable by autograd), or an Oracle such as
            ``sqn_ray.problems.get_problem(...).oracle``, or an Objective.
        w0: flat float32/float64 tensor; the run computes in its dtype and on its device.
        method: a name from ``sqn_ray.METHODS``.
        max_iters: iteration budget (the initial point is iteration 0).
        callback: ``callback(x=..., record=...)`` for every iterate, the initial one included, before the next
            step; returning True stops the run with status ``"callback"``.
        gtol: stop with status ``"converged"`` once ‖∇F‖ ≤ gtol.
        hvp_backend, grads_backend: Option II / Option I backends of the autograd oracle for a callable ``fun``
            (``"auto"`` probes once).
        **options: the method's options (``sqn_ray.method_options(method)`` lists them with defaults).

    Returns:
        MinimizeResult with ``x``, ``history`` (DataFrame, one row per iterate), ``status``, ``message``.
        A non-finite loss or gradient ends the run with status ``"diverged"``; it never raises.
    """
    spec = get_method(method)
    opts = spec.validate(options)
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 0:
        raise ValueError(f"max_iters must be a non-negative integer, got {max_iters!r}")
    if not (isinstance(gtol, (int, float)) and gtol >= 0):
        raise ValueError(f"gtol must be a number >= 0, got {gtol!r}")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable, got {callback!r}")
    check_w0(w0)
    objective = as_objective(fun, w0, hvp_backend=hvp_backend, grads_backend=grads_backend)
    check_w0(w0, objective)
    runner = spec.build(opts, objective)

    records: list[dict] = []
    last = {"x": w0.detach().clone(), "loss": math.nan}
    start = time.perf_counter()

    def emit(w, f, g, fields):
        f = float(f)
        grad_norm = float(g.norm())
        record = make_record(len(records), f, grad_norm, objective.counters, fields, start)
        records.append(record)
        last.update(x=w, loss=f)
        if not (math.isfinite(f) and math.isfinite(grad_norm)):
            return "diverged", (f"non-finite {'loss' if not math.isfinite(f) else 'gradient'} "
                                f"at iteration {record['iteration']}")
        if callback is not None and callback(x=w, record=record):
            return "callback", f"callback requested stop at iteration {record['iteration']}"
        return None

    status, message = runner.run(objective, w0, max_iters, gtol, emit)
    history = pd.DataFrame.from_records(
        records, columns=list(dict.fromkeys([*RECORD_FIELDS, *(records[0] if records else {})])))
    return MinimizeResult(x=last["x"], loss=last["loss"], status=status, message=message, history=history,
                          method=method, options={k: v for k, v in opts.items() if k != "directions"})
