"""``minimize``: the functional entry point, scipy-style, over flat parameter tensors."""
from __future__ import annotations

import dataclasses
import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import torch

from ..objective import AutogradOracle, Objective
from ..records import RECORD_FIELDS  # the record's fields, defined once; importable from here too
from .methods import StepMethod
from .registry import get_method

STATUSES = ("converged", "max_iters", "callback", "diverged", "stalled")


@dataclass
class MinimizeResult:
    """``x`` final parameters; ``history`` one row per iterate (row 0 the initial point); ``status`` one of
    STATUSES; ``message`` why it stopped; ``state`` the method's final state (plain tensors and numbers) for
    ``minimize(..., state=result.state)`` to continue from."""

    x: torch.Tensor
    loss: float
    status: str
    message: str
    history: pd.DataFrame
    method: str
    options: dict = field(default_factory=dict)
    state: dict | None = None  # the run's final state, to continue from: minimize(fun, None, state=...)

    @property
    def success(self) -> bool:
        return self.status == "converged"

    @property
    def nit(self) -> int:
        return int(self.history["iteration"].iloc[-1]) if len(self.history) else 0


def make_record(iteration: int, loss: float, grad_norm: float, counters, fields: dict, start: float) -> dict:
    """One iterate's record: identity, loss, gradient norm, the counters, the step's fields and the wall time
    since ``start`` (a perf_counter reading). Why a run stopped is not a field: it is the run's outcome."""
    return {"iteration": iteration, "loss": loss, "grad_norm": grad_norm, **counters.snapshot(), **fields,
            "wall_time": time.perf_counter() - start}


def as_objective(fun, w0: torch.Tensor, *, hvp_backend: str = "auto", grads_backend: str = "auto",
                 max_hvp_batch: int | str = "auto") -> Objective:
    """An :class:`Objective` for a callable, an Oracle (has ``loss_and_grad``) or an Objective (fresh counters)."""
    if isinstance(fun, Objective):
        return Objective(fun.oracle, batch_fraction=fun.batch_fraction)
    if hasattr(fun, "loss_and_grad") and hasattr(fun, "hvps"):
        # a sub-sampling oracle says which share of the data one call touches (the epochs axis)
        return Objective(fun, batch_fraction=getattr(fun, "batch_fraction", 1.0))
    if callable(fun):
        return Objective(AutogradOracle(fun, w0.numel(), w0.dtype, w0.device,
                                        hvp_backend=hvp_backend, grads_backend=grads_backend,
                                        max_hvp_batch=max_hvp_batch))
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


def minimize(fun, w0: torch.Tensor | None, method: str | None = None, *, max_iters: int = 1000,
             callback: Callable | None = None, gtol: float = 1e-8, hvp_backend: str = "auto",
             grads_backend: str = "auto", max_hvp_batch: int | str = "auto", state: dict | None = None,
             **options) -> MinimizeResult:
    """Minimise F from ``w0`` with a registered method, or continue a saved run from its ``state``.

    Args:
        fun: ``fun(w) -> scalar tensor`` of a flat tensor (differentiable by autograd), or an Oracle such as
            ``sqn_ray.problems.get_problem(...).oracle``, or an Objective.
        w0: flat float32/float64 tensor; the run computes in its dtype and on its device. ``None`` (or the
            state's own iterate) when continuing from ``state``.
        method: a name from ``sqn_ray.METHODS`` (default ``"s-lsr1"``, or the method that saved ``state``).
        max_iters: the last iteration number (the initial point is iteration 0); a continued run goes on
            towards the same number, so a run split into two calls gets the same budget as one call.
        callback: ``callback(x=..., record=...)`` for every iterate, the initial one included, before the next
            step; returning True stops the run with status ``"callback"``. A callback that takes a ``save_state``
            keyword (or ``**kwargs``) also gets, for the methods whose state can be saved, a zero-argument
            function returning the ``state`` a run stopped at this iterate would return (a checkpoint:
            ``minimize(fun, None, state=...)`` continues from it exactly as the uninterrupted run goes on).
        gtol: stop with status ``"converged"`` once ‖∇F‖ ≤ gtol.
        hvp_backend, grads_backend: Option II / Option I backends of the autograd oracle for a callable ``fun``
            (``"auto"`` probes once; fix one for runs that must continue bit-identically across calls).
        max_hvp_batch: the most vectors (points) one batched call of the autograd oracle takes, a larger
            block is chunked; ``"auto"`` (default): what fits in the device's free memory (see AutogradOracle).
        state: ``result.state`` of an earlier call (possibly through ``torch.save``/``torch.load``): the run
            continues from that iterate with the method's whole memory (pairs, dense matrix, Adam moments,
            generator, trust radius, step size) and its counters and wall time, without re-evaluating it.
            Options not given are the saved run's; the history holds the new iterates only. An oracle with
            ``state_dict()``/``load_state_dict()`` (the sub-sampled MNIST problems' batch stream) is saved too.
        **options: the method's options (``sqn_ray.method_options(method)`` lists them with defaults).

    Returns:
        MinimizeResult with ``x``, ``history`` (DataFrame, one row per iterate), ``status``, ``message`` and
        ``state`` (a dict of plain tensors and numbers to continue from; None for the external anchors, which
        drive their own loop). A non-finite loss or gradient ends the run with status ``"diverged"``; it
        never raises.

    Raises:
        ValueError: before any evaluation, for an unknown method or option, a bad option value (the error is
            an ``OptionError`` naming the option), a bad ``max_iters``/``gtol``/``callback``, a ``w0`` that is
            not flat, finite, float32/float64 or of the objective's dimension, or a ``state`` that is not one
            ``minimize`` returned (or is another method's).
        TypeError: ``fun`` is neither a callable, an Oracle nor an Objective, or ``w0`` is not a tensor.
    """
    saved = _check_saved_state(state, method)
    if saved is not None:
        method = saved["method"]
        options = {**saved["options"], **options}
    method = "s-lsr1" if method is None else method
    spec = get_method(method)
    opts = spec.validate(options)
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 0:
        raise ValueError(f"max_iters must be a non-negative integer, got {max_iters!r}")
    if not (isinstance(gtol, (int, float)) and gtol >= 0):
        raise ValueError(f"gtol must be a number >= 0, got {gtol!r}")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable, got {callback!r}")
    if saved is not None:
        saved_w = saved["step"]["w"]
        if w0 is not None and not (torch.is_tensor(w0) and w0.shape == saved_w.shape
                                   and torch.equal(w0.detach().to(saved_w), saved_w)):
            raise ValueError("w0 differs from the iterate the state was saved at; pass w0=None to continue it")
        w0 = saved_w
    check_w0(w0)
    objective = as_objective(fun, w0, hvp_backend=hvp_backend, grads_backend=grads_backend,
                             max_hvp_batch=max_hvp_batch)
    check_w0(w0, objective)
    runner = spec.build(opts, objective)
    resumed = None
    if saved is not None:
        if not isinstance(runner, StepMethod):
            raise ValueError(f"method {method!r} drives its own loop: its state cannot be saved or continued")
        resumed = runner.restore_state(saved["step"], objective)
        for name, value in saved["counters"].items():
            setattr(objective.counters, name, value)
        if saved.get("oracle") is not None and hasattr(objective.oracle, "load_state_dict"):
            objective.oracle.load_state_dict(saved["oracle"])  # a sub-sampling oracle's batch stream

    records: list[dict] = []
    plain_options = {k: v for k, v in opts.items() if k != "directions"}
    wants_state = callback is not None and _takes_keyword(callback, "save_state")

    def saved_state_at(state, wall_time):
        return {"format": SAVED_STATE_FORMAT, "method": method, "options": plain_options,
                "step": runner.export_state(state), "counters": dataclasses.asdict(objective.counters),
                "wall_time": wall_time,
                "oracle": objective.oracle.state_dict() if hasattr(objective.oracle, "state_dict") else None}

    first_iteration = resumed.iteration + 1 if resumed is not None else 0
    last = {"x": w0.detach().clone(), "loss": resumed.f if resumed is not None else math.nan}
    start = time.perf_counter() - (saved["wall_time"] if saved is not None else 0.0)

    def emit(w, f, g, fields, state=None):
        f = float(f)
        grad_norm = float(g.norm())
        record = make_record(first_iteration + len(records), f, grad_norm, objective.counters, fields, start)
        records.append(record)
        last.update(x=w, loss=f)
        if not (math.isfinite(f) and math.isfinite(grad_norm)):
            return "diverged", (f"non-finite {'loss' if not math.isfinite(f) else 'gradient'} "
                                f"at iteration {record['iteration']}")
        extra = {"save_state": lambda: saved_state_at(state, record["wall_time"])} \
            if wants_state and state is not None else {}
        if callback is not None and callback(x=w, record=record, **extra):
            return "callback", f"callback requested stop at iteration {record['iteration']}"
        return None

    if resumed is not None:
        outcome = runner.run(objective, w0, max_iters, gtol, emit, state=resumed)
    else:
        outcome = runner.run(objective, w0, max_iters, gtol, emit)
    status, message = outcome[0], outcome[1]
    final = outcome[2] if len(outcome) > 2 else None
    saved_state = None
    if final is not None:
        saved_state = saved_state_at(final, records[-1]["wall_time"] if records else saved["wall_time"])
    history = history_frame(records)
    return MinimizeResult(x=last["x"], loss=last["loss"], status=status, message=message, history=history,
                          method=method, options=plain_options, state=saved_state)


SAVED_STATE_FORMAT = 1  # version of MinimizeResult.state


def _takes_keyword(fn: Callable, name: str) -> bool:
    """Whether ``fn`` accepts the keyword argument ``name`` (by name, or through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: only the documented keywords
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind is not p.POSITIONAL_ONLY) for p in params)


def history_frame(records: list[dict]) -> pd.DataFrame:
    """The history DataFrame of a run's records: the record fields (sqn_ray.records.RECORD_FIELDS), in their
    order, one row per iterate; the same columns for a whole run and for each part of a continued one."""
    return pd.DataFrame.from_records(records, columns=list(RECORD_FIELDS))


def _check_saved_state(state, method: str | None) -> dict | None:
    """``state`` if it is a dict ``minimize`` returned (same method, when one is named), else ValueError."""
    if state is None:
        return None
    keys = {"format", "method", "options", "step", "counters", "wall_time"}
    if not isinstance(state, dict) or not keys <= set(state) or state["format"] != SAVED_STATE_FORMAT:
        raise ValueError("state must be MinimizeResult.state of an earlier minimize call (a dict with keys "
                         f"{sorted(keys)}, format {SAVED_STATE_FORMAT}), got "
                         f"{type(state).__name__ if not isinstance(state, dict) else sorted(state)}")
    if method is not None and method != state["method"]:
        raise ValueError(f"state was saved by method {state['method']!r}; it cannot continue as {method!r}")
    return state
