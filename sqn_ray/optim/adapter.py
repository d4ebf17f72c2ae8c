"""A ``torch.optim.Optimizer`` adapter for ``nn.Module`` users: one method iteration per ``step(closure)``.

    opt = SQNOptimizer(model.parameters(), method="s-lsr1", memory=10)
    def closure():
        return loss_fn(model(X), y)          # return the loss; calling backward() is optional
    for _ in range(100):
        loss = opt.step(closure)

The closure is turned into a flat-parameter oracle: the adapter writes w into the parameters, calls the
closure and differentiates the returned loss itself. Option II (``sampling="hvp"``) needs that graph, so its
closure must return the loss without calling ``backward()``; Option I, GD, Adam and the classical methods
also accept the usual closures that call ``backward()`` (their gradient is then read from ``.grad``).
Records of every iteration are kept in ``opt.history``, a DataFrame with the same columns as ``minimize``'s
(``opt.records``: the same rows as dicts); ``state_dict()`` / ``load_state_dict()`` save and restore the whole
method state, so a run continues exactly in a fresh process.
"""
from __future__ import annotations

import dataclasses
import math
import time

import pandas as pd
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ..objective import HVP_BACKENDS, Objective, grads_by_loop, hvps_by_backend
from ..options import choice
from .methods import StepMethod
from .minimize import history_frame, make_record
from .registry import get_method


class ClosureOracle:
    def __init__(self, params: list[torch.Tensor], closure, *, hvp_backend: str = "auto"):
        choice(*HVP_BACKENDS)("hvp_backend", hvp_backend)
        self.params, self.closure = params, closure
        self.hvp_backend = hvp_backend
        self.dim = sum(p.numel() for p in params)
        self.dtype, self.device = params[0].dtype, params[0].device

    def _loss_at(self, w):
        with torch.no_grad():
            vector_to_parameters(w, self.params)
        for p in self.params:
            p.grad = None
        with torch.enable_grad():
            return self.closure()

    def _called_backward(self) -> bool:
        return any(p.grad is not None for p in self.params)

    def loss(self, w):
        return self._loss_at(w).detach()

    def loss_and_grad(self, w):
        loss = self._loss_at(w)
        if self._called_backward():
            g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params])
        else:
            g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, self.params, allow_unused=True,
                                                                       materialize_grads=True)])
        return loss.detach(), g

    def hvps(self, w, V):
        loss = self._loss_at(w)
        if self._called_backward():
            raise ValueError("sampling='hvp' needs a closure that returns the loss without calling backward() "
                             "(the optimizer differentiates it twice itself)")
        grads = torch.autograd.grad(loss, self.params, create_graph=True, materialize_grads=True)
        g = torch.cat([x.reshape(-1) for x in grads])
        # the backend policy of AutogradOracle: 'auto' timed once; 'batched' falls back to 'loop' for good when an
        # op of the model has no batching rule
        self.hvp_backend, HV = hvps_by_backend(self.hvp_backend, self.params, g, V, self.device)
        return HV

    def grads(self, W):
        return grads_by_loop(self, W)


class SQNOptimizer(torch.optim.Optimizer):
    """Any step-based registered method (not the external anchors) as a closure-driven optimizer.

    Args:
        params: the parameters (one group: a quasi-Newton method acts on the whole flat vector).
        method: a name from ``sqn_ray.METHODS`` other than the external anchors.
        hvp_backend: Option II's products: ``"batched"`` (one vmapped backward pass for all m products),
            ``"loop"`` (one pass each) or ``"auto"`` (the faster, timed on the first call), as in ``minimize``.
        **options: the method's options (``sqn_ray.method_options(method)``), validated here.

    ``step(closure)`` takes one iteration and returns the loss at the new iterate (in the parameters' dtype).
    ``history`` is a DataFrame with the same columns as ``minimize``'s, one row per iterate (the initial one
    included). ``state_dict()`` holds the method's whole state (its pairs, dense matrix or moments, generator,
    step size or trust radius), the counters and the history as plain tensors and numbers: an optimizer that
    loads it, in a fresh process (through ``torch.save``/``torch.load``), continues exactly where the saved
    one stopped, as ``torch.optim`` optimizers do; the saved method options replace the constructor's, as
    saved hyperparameters do there. ``stop`` is set to (status, message) when the method says it cannot go on.
    """

    def __init__(self, params, method: str = "s-lsr1", *, hvp_backend: str = "auto", **options):
        if hvp_backend not in HVP_BACKENDS:
            raise ValueError(f"hvp_backend={hvp_backend!r} is not one of {HVP_BACKENDS}")
        spec = get_method(method)
        opts = spec.validate(options)
        super().__init__(params, {})
        if len(self.param_groups) != 1:
            raise ValueError("SQNOptimizer supports one parameter group (quasi-Newton methods act on the whole vector)")
        self._params = self.param_groups[0]["params"]
        self._objective: Objective | None = None
        self._runner = self._build(method, opts)
        self._options = {k: v for k, v in opts.items() if k != "directions"}
        self._state = None
        self._hvp_backend = hvp_backend
        self._restored_counters: dict | None = None
        self.method = method
        self.records: list[dict] = []
        self.stop: tuple[str, str] | None = None
        self._t0 = time.perf_counter()

    @staticmethod
    def _build(method: str, opts: dict) -> StepMethod:
        runner = get_method(method).build(opts, None)
        if not isinstance(runner, StepMethod):
            raise ValueError(f"method {method!r} drives its own loop and cannot be used step by step; "
                             f"use sqn_ray.minimize(..., method={method!r}) instead")
        return runner

    @property
    def history(self) -> pd.DataFrame:
        """One row per iterate, the columns of ``minimize``'s history (``records`` holds the same as dicts)."""
        return history_frame(self.records)

    @property
    def counters(self):
        return self._objective.counters if self._objective else None

    def _record(self, fields):
        s = self._state
        self.records.append(make_record(s.iteration, s.f, float(s.g.norm()), self._objective.counters, fields,
                                        self._t0))

    def step(self, closure):
        if closure is None:
            raise ValueError("SQNOptimizer.step needs a closure that returns the loss")
        if self._objective is None:
            self._objective = Objective(ClosureOracle(self._params, closure, hvp_backend=self._hvp_backend))
            for name, value in (self._restored_counters or {}).items():
                setattr(self._objective.counters, name, value)
        else:
            self._objective.oracle.closure = closure
        with torch.no_grad():
            w = parameters_to_vector(self._params).detach().clone()
        if self._state is None:
            self._state = self._runner.start(self._objective, w)
            self._record(self._runner.initial_fields(self._state))
        elif not torch.equal(w, self._state.w):
            raise RuntimeError("the parameters were changed outside SQNOptimizer.step; "
                               "quasi-Newton state would be stale")
        self._state, fields, stop = self._runner.advance(self._objective, self._state)
        self.stop = stop
        self._record(fields)
        with torch.no_grad():
            vector_to_parameters(self._state.w, self._params)
        # the loss in the parameters' dtype (a bare torch.tensor(float) would round a float64 loss to float32)
        f = self._state.f if math.isfinite(self._state.f) else math.nan
        return torch.tensor(f, dtype=self._objective.dtype)

    # -- torch.optim's state protocol ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """torch.optim's dict plus ``"sqn_ray"``: method, options, the method's state, counters, history."""
        saved = super().state_dict()
        oracle = self._objective.oracle if self._objective is not None else None
        counters = (dataclasses.asdict(self._objective.counters) if self._objective is not None
                    else self._restored_counters)
        saved["sqn_ray"] = {
            "format": ADAPTER_STATE_FORMAT, "method": self.method, "options": dict(self._options),
            "step": self._runner.export_state(self._state) if self._state is not None else None,
            "counters": counters, "hvp_backend": oracle.hvp_backend if oracle is not None else self._hvp_backend,
            "wall_time": self.records[-1]["wall_time"] if self.records else 0.0,
            "history": {k: [r.get(k) for r in self.records] for k in dict.fromkeys(k for r in self.records for k in r)},
        }
        return saved

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue from a :meth:`state_dict` (of this method; its options and state replace this one's)."""
        ours = state_dict.get("sqn_ray") if isinstance(state_dict, dict) else None
        if not isinstance(ours, dict) or ours.get("format") != ADAPTER_STATE_FORMAT:
            raise ValueError("not an SQNOptimizer state_dict: it has no 'sqn_ray' entry of format "
                             f"{ADAPTER_STATE_FORMAT}")
        if ours["method"] != self.method:
            raise ValueError(f"state_dict was saved by method {ours['method']!r}; this optimizer runs "
                             f"{self.method!r}")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "sqn_ray"})
        opts = get_method(self.method).validate(ours["options"])
        runner = self._build(self.method, opts)
        step_state, p = None, self._params[0]
        if ours["step"] is not None:
            w, dim = ours["step"]["w"], sum(q.numel() for q in self._params)
            if w.numel() != dim or w.dtype != p.dtype:
                raise ValueError(f"state_dict holds a {w.numel()}-dimensional {w.dtype} iterate; the parameters "
                                 f"are {dim} {p.dtype} values")
            on_device = {**ours["step"], "w": w.to(p.device), "g": ours["step"]["g"].to(p.device)}
            step_state = runner.restore_state(on_device)
        self._runner, self._state = runner, step_state
        self._options = {k: v for k, v in opts.items() if k != "directions"}
        if self._hvp_backend == "auto":
            self._hvp_backend = ours["hvp_backend"]  # the backend the saved run probed: same products
        self._objective = None
        self._restored_counters = ours["counters"]
        history = ours["history"]
        n = len(next(iter(history.values()))) if history else 0
        self.records = [{k: history[k][i] for k in history} for i in range(n)]
        self._t0 = time.perf_counter() - float(ours["wall_time"])


ADAPTER_STATE_FORMAT = 1  # version of state_dict()["sqn_ray"]
