"""The objective: a flat-parameter oracle F(w) with evaluation counters.

Every optimizer in sqn_ray talks to an :class:`Objective`. It wraps an *oracle* (anything with the four
methods of :class:`Oracle`, uncounted) and counts what the optimizer asks for:

* ``n_fun``   loss values computed (alone or together with a gradient),
* ``n_grad``  gradients, one per point (Option I's m gradients count m),
* ``n_hvp``   Hessian-vector products, one per vector (a block of m counts m, unlike the reference code).

Cost axes derived from them:

* ``grad_equivalents`` = n_grad + n_hvp + 0.5 * (loss values computed without a gradient). An HVP and a
  gradient both cost O(nd) (the poster's cost table); a forward pass alone is about half a gradient.
* ``epochs`` (data passes) = every evaluation, of any kind, touches the data it is given once; with full
  batches that is one pass per loss, gradient or HVP.

Two oracles ship: :class:`AutogradOracle` for any differentiable ``fun(w) -> scalar`` (and for
``nn.Module`` + data + loss through :func:`torch.func.functional_call`), and the hand-batched MLP oracle in
:mod:`sqn_ray.problems.mlp` used by the problem library.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from .options import choice
from .records import ITERATION_RECORD

HVP_BACKENDS = ("auto", "batched", "loop")
GRADS_BACKENDS = ("auto", "vmap", "loop")
FUN_ONLY_COST = 0.5  # gradient-equivalents of one loss evaluation without a gradient


class Oracle(Protocol):
    """What an optimizer needs of F: R^d -> R, at flat points, uncounted.

    An oracle computes F and its derivatives; it keeps no tally. Counting is the :class:`Objective`'s job
    (it wraps the oracle), so an oracle may evaluate whatever it likes internally and tests may call it
    freely. Every point ``w`` is a flat tensor of shape (d,); a block of points or vectors is a tensor of
    shape (d, m) whose columns are the points/vectors. Inputs and outputs are in the oracle's ``dtype`` on
    its ``device``; outputs carry no autograd graph the caller needs.

    Methods: :meth:`loss` (F), :meth:`loss_and_grad` (F and ∇F), :meth:`hvps` (∇²F times a block, Option II
    of the sampled methods) and :meth:`grads` (∇F at a block of points, Option I).

    Attributes:
        dim: d, the number of parameters (the length of every flat point).
        dtype: the floating dtype the oracle computes in (float32 or float64).
        device: the device its tensors live on.
    """

    dim: int
    dtype: torch.dtype
    device: torch.device

    def loss(self, w: torch.Tensor) -> torch.Tensor:
        """F at one point.

        Args:
            w: the point, shape (d,).

        Returns:
            F(w) as a 0-dim tensor.
        """
        ...

    def loss_and_grad(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F and its gradient at one point, from one evaluation.

        Args:
            w: the point, shape (d,).

        Returns:
            (F(w), ∇F(w)): a 0-dim tensor and a tensor of shape (d,).
        """
        ...

    def hvps(self, w: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """Hessian-vector products ∇²F(w) V for a block of m vectors at one point.

        Args:
            w: the point, shape (d,).
            V: the vectors as columns, shape (d, m).

        Returns:
            ∇²F(w) V, shape (d, m): column i is the Hessian times V[:, i].
        """
        ...

    def grads(self, W: torch.Tensor) -> torch.Tensor:
        """Gradients at a block of m points.

        Args:
            W: the points as columns, shape (d, m).

        Returns:
            Shape (d, m): column i is ∇F(W[:, i]).
        """
        ...


@dataclass
class Counters:
    """The running tallies of an :class:`Objective` (see the module docstring for what counts).

    Attributes:
        n_fun: loss values computed, alone or with a gradient.
        n_grad: gradients computed, one per point.
        n_hvp: Hessian-vector products computed, one per vector.
        n_fun_alone: loss values computed without a gradient (each costs ``FUN_ONLY_COST`` gradients).
        data_passes: passes over the data: ``batch_fraction`` per loss, gradient or HVP (a record's
            ``epochs``).
        grad_equivalents: (property) n_grad + n_hvp + 0.5 * n_fun_alone.
    """

    n_fun: int = 0
    n_grad: int = 0
    n_hvp: int = 0
    n_fun_alone: int = 0
    data_passes: float = 0.0

    @property
    def grad_equivalents(self) -> float:
        return self.n_grad + self.n_hvp + FUN_ONLY_COST * self.n_fun_alone

    def snapshot(self) -> dict:
        """The counter fields of an iteration record.

        Returns:
            {field: value} for the record's counter fields (those of ``sqn_ray.records.ITERATION_RECORD``
            with source ``"counter"``), in record order: n_fun, n_grad, n_hvp, grad_equivalents, epochs.
        """
        return {name: getattr(self, attribute) for name, attribute in COUNTER_FIELDS.items()}


#: the record's counter fields (source "counter" in sqn_ray.records), in record order -> the Counters attribute
#: holding each: its own name, but for the ones renamed here
_COUNTER_RENAMED = {"epochs": "data_passes"}
COUNTER_FIELDS: dict[str, str] = {f.name: _COUNTER_RENAMED.get(f.name, f.name)
                                  for f in ITERATION_RECORD if f.source == "counter"}
if not all(hasattr(Counters, attribute) for attribute in COUNTER_FIELDS.values()):
    raise ValueError(f"a counter field of sqn_ray.records has no Counters attribute: {COUNTER_FIELDS}")


class Objective:
    """Counted access to an :class:`Oracle`: what every optimizer in sqn_ray evaluates F through.

    Each method forwards to the oracle, detaches the result and adds to ``counters`` (:class:`Counters`).
    ``dim``, ``dtype`` and ``device`` are the oracle's.

    Args:
        oracle: the :class:`Oracle` to count.
        batch_fraction: the share of the data one oracle call touches (1.0: full batch; a sub-sampling oracle's
            batch size / n); each evaluation adds it to ``counters.data_passes``.
    """

    def __init__(self, oracle: Oracle, *, batch_fraction: float = 1.0):
        self.oracle = oracle
        self.counters = Counters()
        self.batch_fraction = float(batch_fraction)

    @property
    def dim(self) -> int:
        return self.oracle.dim

    @property
    def dtype(self) -> torch.dtype:
        return self.oracle.dtype

    @property
    def device(self) -> torch.device:
        return self.oracle.device

    def value(self, w: torch.Tensor) -> torch.Tensor:
        """F at one point, without a gradient (under ``torch.no_grad``).

        Counts one ``n_fun``, one ``n_fun_alone`` (half a gradient-equivalent) and ``batch_fraction`` data passes.

        Args:
            w: the point, shape (d,).

        Returns:
            F(w), a 0-dim tensor.
        """
        c = self.counters
        c.n_fun += 1
        c.n_fun_alone += 1
        c.data_passes += self.batch_fraction
        with torch.no_grad():
            return self.oracle.loss(w).detach()

    def value_and_grad(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F and ∇F at one point. Counts one ``n_fun``, one ``n_grad`` and ``batch_fraction`` data passes.

        Args:
            w: the point, shape (d,).

        Returns:
            (F(w), ∇F(w)): a 0-dim tensor and a tensor of shape (d,).
        """
        c = self.counters
        c.n_fun += 1
        c.n_grad += 1
        c.data_passes += self.batch_fraction
        f, g = self.oracle.loss_and_grad(w)
        return f.detach(), g.detach()

    def hvp(self, w: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """Hessian-vector products at one point. Counts m ``n_hvp`` and m × ``batch_fraction`` data passes
        (the gradient the oracle may build on the way is not counted).

        Args:
            w: the point, shape (d,).
            V: m vectors as columns, shape (d, m).

        Returns:
            ∇²F(w) V, shape (d, m).
        """
        self.counters.n_hvp += V.shape[1]
        self.counters.data_passes += self.batch_fraction * V.shape[1]
        return self.oracle.hvps(w, V).detach()

    def grads_at(self, W: torch.Tensor) -> torch.Tensor:
        """Gradients at m points. Counts m ``n_grad`` and m × ``batch_fraction`` data passes (no ``n_fun``).

        Args:
            W: m points as columns, shape (d, m).

        Returns:
            Shape (d, m): column i is ∇F(W[:, i]).
        """
        self.counters.n_grad += W.shape[1]
        self.counters.data_passes += self.batch_fraction * W.shape[1]
        return self.oracle.grads(W).detach()


def _is_scalar(x) -> bool:
    return torch.is_tensor(x) and x.numel() == 1


class AutogradOracle:
    """Oracle for any differentiable ``fun(w) -> scalar tensor`` of a flat parameter vector.

    Option II backends (``hvp_backend``):
      * ``"batched"``: one gradient with ``create_graph=True`` and one batched double backward
        (``is_grads_batched``) for all m vectors; best when per-call overhead dominates (small models).
      * ``"loop"``: the same create_graph gradient, then m backward passes reusing its graph
        (about 1.1 gradients per HVP on FLOP-bound CPU models, where the batched path loses).
      * ``"auto"``: a small timing probe on the first call picks one (cached per oracle).
    A graph that cannot be batched (an op without a batching rule: RuntimeError) is looped, from then on.
    Both are :func:`hvps_by_backend`, shared with the ``nn.Module`` adapter's closure oracle.
    The create_graph gradient is built once per point and reused for every block of vectors at that
    point (a rejected step resamples at the same w without re-differentiating).

    Option I backends (``grads_backend``): ``"vmap"`` (torch.func.vmap over stacked points) or ``"loop"``;
    ``"auto"`` probes likewise. ``fun`` that is not vmappable (data-dependent control flow, .item())
    falls back to ``"loop"``.

    Args:
        fun: ``fun(w) -> F(w)`` for a flat tensor w of shape (d,), returning a one-element tensor
            (checked on every call: anything else raises ValueError), differentiable by autograd
            (twice, for Option II's HVPs).
        dim: d, the length of w.
        dtype, device: those of the points it will be given (the oracle's attributes; not checked per call).
        hvp_backend: ``"auto"``, ``"batched"`` or ``"loop"`` (above).
        grads_backend: ``"auto"``, ``"vmap"`` or ``"loop"`` (above).

    Raises:
        OptionError: (a ValueError) when ``hvp_backend`` or ``grads_backend`` is not one of its choices.
    """

    def __init__(self, fun: Callable[[torch.Tensor], torch.Tensor], dim: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu", *, hvp_backend: str = "auto", grads_backend: str = "auto"):
        choice(*HVP_BACKENDS)("hvp_backend", hvp_backend)
        choice(*GRADS_BACKENDS)("grads_backend", grads_backend)
        self.fun = fun
        self.dim = int(dim)
        self.dtype = dtype
        self.device = torch.device(device)
        self.hvp_backend = hvp_backend
        self.grads_backend = grads_backend
        # The create_graph gradient of the last point asked for HVPs, kept so that every block of vectors at
        # that point (and the gradient itself, once HVPs are in use) reuses it. The point is held by
        # reference and compared by identity and version, so a freed tensor whose memory is reused can
        # never alias it.
        self._graph_w: torch.Tensor | None = None
        self._graph_version = -1
        self._graph: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (leaf x, f, g with graph)
        self._hvps_in_use = False

    # -- plain evaluations -------------------------------------------------------------------------
    def loss(self, w):
        out = self.fun(w)
        if not _is_scalar(out):
            raise ValueError(f"fun must return a scalar tensor, got {type(out).__name__} "
                             f"of shape {tuple(getattr(out, 'shape', ()))}")
        return out.reshape(())

    def loss_and_grad(self, w):
        if self._hvps_in_use:  # Option II will ask for HVPs here next: build the gradient's graph once, now
            _, f, g = self._graph_at(w)
            return f.detach(), g.detach()
        with torch.enable_grad():
            x = w.detach().requires_grad_(True)
            f = self.loss(x)
            (g,) = torch.autograd.grad(f, x)
        return f.detach(), g

    # -- Option II ---------------------------------------------------------------------------------
    def _graph_at(self, w):
        if self._graph is None or w is not self._graph_w or w._version != self._graph_version:
            with torch.enable_grad():
                x = w.detach().clone().requires_grad_(True)
                f = self.loss(x)
                (g,) = torch.autograd.grad(f, x, create_graph=True)
            self._graph_w, self._graph_version, self._graph = w, w._version, (x, f, g)
        return self._graph

    def hvps(self, w, V):
        self._hvps_in_use = True
        x, _, g = self._graph_at(w)
        self.hvp_backend, HV = hvps_by_backend(self.hvp_backend, [x], g, V, self.device)
        return HV

    # -- Option I ----------------------------------------------------------------------------------
    def grads(self, W):
        backend = self.grads_backend
        if backend == "auto":
            backend = self.grads_backend = self._probe_grads(W)
        if backend == "vmap":
            try:
                return _grads_vmap(self.fun, W)
            except Exception:  # noqa: BLE001 - fun not vmappable (control flow, .item(), in-place ops)
                self.grads_backend = "loop"
        return grads_by_loop(self, W)

    def _probe_grads(self, W):
        try:
            _grads_vmap(self.fun, W[:, :2])
        except Exception:  # noqa: BLE001 - not vmappable: loop is the only choice
            return "loop"
        loop = lambda: grads_by_loop(self, W)  # noqa: E731
        return fastest_backend({"vmap": lambda: _grads_vmap(self.fun, W), "loop": loop}, self.device)


# -- Option II through an autograd graph: the one implementation of both oracles (AutogradOracle, ClosureOracle) --
def hvps_through_graph(backend: str, leaves: list[torch.Tensor], g: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """∇²F V, shape (d, m), by differentiating the flat create_graph gradient ``g`` (d,) of F once more with
    respect to ``leaves`` (the tensors g was taken with respect to, in the order g lays them out).

    ``"batched"``: one vmapped backward pass for all m columns (``is_grads_batched``); ``"loop"``: one backward
    pass per column. Both keep the graph, so further blocks at the same point reuse it. One leaf (the flat point
    of :class:`AutogradOracle`) is differentiated directly; several (a model's parameters) each give their
    block of rows, zeros for a leaf the gradient does not depend on (looped only: batched, autograd materializes
    such a leaf without the batch dimension and the reshape fails with a RuntimeError, which
    :func:`hvps_by_backend` answers with the loop)."""
    if backend not in ("batched", "loop"):
        raise ValueError(f"backend={backend!r} is not one of ('batched', 'loop')")
    m = V.shape[1]
    if len(leaves) == 1:
        (x,) = leaves
        if backend == "batched":
            (HV,) = torch.autograd.grad(g, x, grad_outputs=V.T.contiguous(), retain_graph=True,
                                        allow_unused=True, materialize_grads=True, is_grads_batched=True)
            return HV.reshape(m, -1).T
        cols = [torch.autograd.grad(g, x, grad_outputs=V[:, i], retain_graph=True, allow_unused=True,
                                    materialize_grads=True)[0].reshape(-1) for i in range(m)]
        return torch.stack(cols, dim=1)
    if backend == "batched":
        hv = torch.autograd.grad(g, leaves, grad_outputs=V.T.contiguous(), retain_graph=True, allow_unused=True,
                                 materialize_grads=True, is_grads_batched=True)
        return torch.cat([x.reshape(m, -1) for x in hv], dim=1).T
    cols = []
    for i in range(m):
        hv = torch.autograd.grad(g, leaves, grad_outputs=V[:, i], retain_graph=True, allow_unused=True,
                                 materialize_grads=True)
        cols.append(torch.cat([x.reshape(-1) for x in hv]))
    return torch.stack(cols, dim=1)


def choose_hvp_backend(leaves: list[torch.Tensor], g: torch.Tensor, V: torch.Tensor, device: torch.device) -> str:
    """The faster of ``"batched"`` and ``"loop"`` for this graph, timed on a fixed random block the shape of V
    (at least 2 columns; drawn from its own seeded generator, so the global random stream is untouched).
    Batching wins when per-pass overhead dominates (small models, GPUs), the loop on FLOP-bound CPU models.
    ``"loop"`` without timing when the graph cannot be batched (an op without a batching rule: RuntimeError)."""
    device = torch.device(device)
    P = torch.randn(V.shape[0], max(V.shape[1], 2), dtype=g.dtype, device=device,
                    generator=torch.Generator(device=device).manual_seed(0))
    try:  # "batched" is timed first: its warm-up call is the test of whether the graph batches at all
        return fastest_backend({b: (lambda b=b: hvps_through_graph(b, leaves, g, P)) for b in ("batched", "loop")},
                               device)
    except RuntimeError:
        return "loop"


def hvps_by_backend(backend: str, leaves: list[torch.Tensor], g: torch.Tensor, V: torch.Tensor,
                    device: torch.device) -> tuple[str, torch.Tensor]:
    """(the backend to remember, ∇²F V): the one backend policy of the oracles. ``"auto"`` is decided by
    :func:`choose_hvp_backend`; ``"batched"`` that fails with a RuntimeError (an op of the model without a
    batching rule) falls back to ``"loop"``, returned so that the oracle keeps looping from then on."""
    if backend == "auto":
        backend = choose_hvp_backend(leaves, g, V, device)
    if backend == "batched":
        try:
            return backend, hvps_through_graph("batched", leaves, g, V)
        except RuntimeError:
            backend = "loop"
    return backend, hvps_through_graph("loop", leaves, g, V)


def grads_by_loop(oracle, W: torch.Tensor) -> torch.Tensor:
    """∇F at each column of W, one ``loss_and_grad`` call per column (Option I for oracles without a
    batched gradient)."""
    return torch.stack([oracle.loss_and_grad(W[:, i])[1] for i in range(W.shape[1])], dim=1)


def _grads_vmap(fun, W):
    grad_fn = torch.func.grad(lambda w: fun(w).reshape(()))
    return torch.func.vmap(grad_fn, in_dims=1, out_dims=1)(W)


def fastest_backend(candidates: dict[str, Callable[[], torch.Tensor]], device: torch.device, repeats: int = 3) -> str:
    """Name of the candidate with the smallest median time (a warm-up call first, synchronised on GPU)."""
    def timed(fn):
        fn()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]
    return min(candidates, key=lambda name: timed(candidates[name]))


def module_objective_fun(module: torch.nn.Module, loss_fn: Callable, inputs, targets):
    """A flat-parameter ``fun(w)`` for an ``nn.Module`` and a fixed batch, plus the module's current parameters.

    Parameters are laid out in ``module.named_parameters()`` order, each flattened row-major; buffers are
    passed as they are. The module itself is not modified by ``fun`` (it runs through
    :func:`torch.func.functional_call`).

    Args:
        module: the model; its parameters fix the layout and d.
        loss_fn: ``loss_fn(module(inputs), targets) -> scalar tensor``.
        inputs: the model's input batch (one positional argument of its forward).
        targets: what ``loss_fn`` compares the output with.

    Returns:
        (fun, w0): ``fun(w) -> loss_fn(module_w(inputs), targets)`` for w of shape (d,), differentiable in w
        (usable as ``minimize``'s ``fun``), and w0, the module's parameters now, detached, shape (d,).
    """
    names = [n for n, _ in module.named_parameters()]
    shapes = [p.shape for _, p in module.named_parameters()]
    sizes = [math.prod(s) for s in shapes]
    buffers = dict(module.named_buffers())

    def fun(w):
        chunks = torch.split(w, sizes)
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        out = torch.func.functional_call(module, {**params, **buffers}, (inputs,))
        return loss_fn(out, targets)

    w0 = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    return fun, w0
