"""External anchors: trusted implementations run on the same counted objective and recorded the same way.

* ``torch-lbfgs``: torch.optim.LBFGS (strong Wolfe), one outer iteration per ``step`` (max_iter=1).
* ``scipy-lbfgsb`` / ``scipy-bfgs``: scipy.optimize.minimize on the float64 objective, one record per
  scipy iteration through its ``callback(intermediate_result)``; a stop request raises StopIteration,
  which scipy turns into a clean termination.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .methods import _nan_fields


@dataclass
class TorchLBFGS:
    memory: int
    lr: float = 1.0

    def run(self, objective, w0, max_iters, gtol, emit):
        w = w0.detach().clone().requires_grad_(True)
        # max_iter=1 gives one record per outer iteration. max_eval must then be raised explicitly: its
        # default, max_iter * 5 // 4 = 1, cuts every strong-Wolfe search short and LBFGS stalls at t = 0.
        opt = torch.optim.LBFGS([w], lr=self.lr, max_iter=1, max_eval=100, history_size=self.memory,
                                line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)

        def closure():
            opt.zero_grad()
            f, g = objective.value_and_grad(w.detach())
            w.grad = g.clone()
            return f

        f0, g0 = objective.value_and_grad(w.detach())
        g = g0
        if stop := emit(w.detach().clone(), float(f0), g0, _nan_fields()):
            return stop
        for _ in range(max_iters):
            if float(g.norm()) <= gtol:
                return "converged", f"gradient norm {float(g.norm()):.3g} <= gtol {gtol:g}"
            w_before, n_before = w.detach().clone(), objective.counters.n_fun
            t0 = time.perf_counter()
            opt.step(closure)
            t_search = time.perf_counter() - t0
            # The iterate's own loss and gradient, for the record only: read from the oracle directly so
            # they are not counted (torch re-evaluates the closure at the start of its next step anyway,
            # and that evaluation is counted as the method's cost).
            f, g = objective.oracle.loss_and_grad(w.detach())
            step_norm = float((w.detach() - w_before).norm())
            state = opt.state[opt.param_groups[0]["params"][0]]
            fields = _nan_fields(step_size=float(state.get("t", math.nan)), step_norm=step_norm,
                                 pairs_kept=len(state.get("old_dirs", [])), accepted=step_norm > 0,
                                 inner_iters=objective.counters.n_fun - n_before, t_search=t_search)
            if stop := emit(w.detach().clone(), float(f), g, fields):
                return stop
            if step_norm == 0:
                return "stalled", "torch.optim.LBFGS made no progress"
        return "max_iters", f"reached max_iters={max_iters}"


@dataclass
class ScipyMinimize:
    scipy_method: str
    memory: int | None = None

    def run(self, objective, w0, max_iters, gtol, emit):
        from scipy.optimize import minimize as scipy_minimize

        dtype, device = w0.dtype, w0.device
        cache: dict = {}

        def fun(x):
            w = torch.as_tensor(x, dtype=dtype, device=device)
            f, g = objective.value_and_grad(w)
            cache[x.tobytes()] = (float(f), g)
            return float(f), g.double().cpu().numpy()

        x0 = w0.detach().double().cpu().numpy()
        f0, _ = fun(x0)
        if stop := emit(w0.detach().clone(), f0, cache[x0.tobytes()][1], _nan_fields()):
            return stop
        outcome = {}
        previous = {"x": x0, "t": time.perf_counter()}

        def callback(intermediate_result):
            x = intermediate_result.x
            f, g = cache.get(x.tobytes()) or (None, None)
            if g is None:  # scipy reported a point it did not ask us about (not expected); evaluate it
                f, g = fun(x)[0], cache[x.tobytes()][1]
            now = time.perf_counter()
            fields = _nan_fields(step_norm=float(np.linalg.norm(x - previous["x"])), t_search=now - previous["t"])
            previous.update(x=x.copy(), t=now)
            stop = emit(torch.as_tensor(x, dtype=dtype, device=device), f, g, fields)
            if stop:
                outcome["stop"] = stop
                raise StopIteration

        options = {"maxiter": max_iters, "gtol": gtol}
        if self.scipy_method == "L-BFGS-B":
            options.update(maxcor=self.memory, ftol=0.0, maxfun=max(15000, 50 * max_iters))
        res = scipy_minimize(fun, x0, jac=True, method=self.scipy_method, callback=callback, options=options)
        if "stop" in outcome:
            return outcome["stop"]
        if res.nit >= max_iters:
            return "max_iters", f"reached max_iters={max_iters}"
        return ("converged" if res.success else "stalled"), f"scipy: {res.message}"


def build(name: str, options: dict):
    if name == "torch-lbfgs":
        return TorchLBFGS(memory=options["memory"], lr=options["lr"])
    if name == "scipy-lbfgsb":
        return ScipyMinimize("L-BFGS-B", memory=options["memory"])
    if name == "scipy-bfgs":
        return ScipyMinimize("BFGS")
    raise ValueError(f"no external method {name!r}")
