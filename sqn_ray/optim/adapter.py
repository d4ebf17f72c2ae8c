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
Records of every iteration are kept in ``opt.history`` with the same fields as ``minimize``.
"""
from __future__ import annotations

import math
import time

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ..objective import HVP_BACKENDS, Objective, grads_by_loop, hvps_by_backend
from ..options import choice
from .methods import StepMethod
from .minimize import make_record
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
    """Any step-based registered method (not the external anchors) as a closure-driven optimizer."""

    def __init__(self, params, method: str = "s-lsr1", *, hvp_backend: str = "auto", **options):
        """``hvp_backend`` (Option II): ``"batched"`` (one vmapped backward pass for all m products),
        ``"loop"`` (one pass each) or ``"auto"`` (the faster, timed on the first call), as in ``minimize``."""
        if hvp_backend not in HVP_BACKENDS:
            raise ValueError(f"hvp_backend={hvp_backend!r} is not one of {HVP_BACKENDS}")
        spec = get_method(method)
        opts = spec.validate(options)
        super().__init__(params, {})
        if len(self.param_groups) != 1:
            raise ValueError("SQNOptimizer supports one parameter group (quasi-Newton methods act on the whole vector)")
        self._params = self.param_groups[0]["params"]
        self._objective: Objective | None = None
        self._runner = spec.build(opts, None)
        if not isinstance(self._runner, StepMethod):
            raise ValueError(f"method {method!r} drives its own loop and cannot be used step by step; "
                             f"use sqn_ray.minimize(..., method={method!r}) instead")
        self._state = None
        self._hvp_backend = hvp_backend
        self.method = method
        self.history: list[dict] = []
        self._t0 = time.perf_counter()

    @property
    def counters(self):
        return self._objective.counters if self._objective else None

    def _record(self, fields):
        s = self._state
        self.history.append(make_record(s.iteration, s.f, float(s.g.norm()), self._objective.counters, fields,
                                        self._t0))

    def step(self, closure):
        if closure is None:
            raise ValueError("SQNOptimizer.step needs a closure that returns the loss")
        if self._objective is None:
            self._objective = Objective(ClosureOracle(self._params, closure, hvp_backend=self._hvp_backend))
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
        self._state, fields = self._runner.step(self._objective, self._state)
        self._record(fields)
        with torch.no_grad():
            vector_to_parameters(self._state.w, self._params)
        # the loss in the parameters' dtype (a bare torch.tensor(float) would round a float64 loss to float32)
        f = self._state.f if math.isfinite(self._state.f) else math.nan
        return torch.tensor(f, dtype=self._objective.dtype)
