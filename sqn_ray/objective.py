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
import numbers
import os
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from .options import OptionError, choice
from .records import ITERATION_RECORD

HVP_BACKENDS = ("auto", "batched", "loop")  # through an autograd graph: every autograd oracle (flat and closure)
#: :class:`AutogradOracle` (a function of the flat point) also has forward-over-reverse, vmap(jvp(grad(fun)))
FUNCTION_HVP_BACKENDS = (*HVP_BACKENDS, "jvp")
GRADS_BACKENDS = ("auto", "vmap", "loop")
#: bytes the batched paths may use off a GPU (``max_hvp_batch="auto"``) when the free memory is unknown
HOST_BATCH_BUDGET = 2 ** 31
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
        (``is_grads_batched``) for all m vectors; best when per-call overhead dominates (small models, GPUs).
      * ``"loop"``: the same create_graph gradient, then m backward passes reusing its graph
        (about 1.1 gradients per HVP on FLOP-bound CPU models, where the batched path loses).
      * ``"jvp"``: forward-over-reverse, ``vmap(jvp(grad(fun)))`` over the m vectors; needs no create_graph
        gradient (the gradients are plain) but a vmappable ``fun``; never picked by ``"auto"`` (on a CPU it
        measured 1.6-2× the batched double backward on the toy net and no better than the loop on the MLP,
        ``bench/bench_generic.py``).
      * ``"auto"``: the first block decides between ``"batched"`` and ``"loop"`` (:func:`choose_hvp_backend`:
        one extra batched call and three looped vectors, the probe's own result is returned), kept from then on.
    A graph that cannot be batched (an op without a batching rule: RuntimeError) is looped, from then on.
    The graph backends are :func:`hvps_by_backend`, shared with the ``nn.Module`` adapter's closure oracle.
    The create_graph gradient is built once per point and reused for every block of vectors at that
    point (a rejected step resamples at the same w without re-differentiating).

    Option I backends (``grads_backend``): ``"vmap"`` (torch.func.vmap over stacked points) or ``"loop"``;
    ``"auto"`` decides on the first block alike (one extra vmapped call and three looped points).
    ``fun`` that is not vmappable (data-dependent control flow, .item()) falls back to ``"loop"``.

    Memory: the batched paths (``"batched"``, ``"jvp"``, Option I's ``"vmap"``) take at most ``max_hvp_batch``
    vectors (points) per call and chunk a larger block. ``"auto"``: as many as fit in half the free memory
    of the device (``torch.cuda.mem_get_info``; off a GPU, a quarter of the available host memory, at most
    :data:`HOST_BATCH_BUDGET`), reckoning each vector at twice the bytes the gradient's graph saves (measured
    once, on the first graph). Chunking changes no product beyond round-off.

    Args:
        fun: ``fun(w) -> F(w)`` for a flat tensor w of shape (d,), returning a one-element tensor
            (checked on every call: anything else raises ValueError), differentiable by autograd
            (twice, for Option II's HVPs).
        dim: d, the length of w.
        dtype, device: those of the points it will be given (the oracle's attributes; not checked per call).
        hvp_backend: ``"auto"``, ``"batched"``, ``"loop"`` or ``"jvp"`` (above).
        grads_backend: ``"auto"``, ``"vmap"`` or ``"loop"`` (above).
        max_hvp_batch: ``"auto"`` or a positive int, the most vectors one batched call takes (above).

    Raises:
        OptionError: (a ValueError) when ``hvp_backend``, ``grads_backend`` or ``max_hvp_batch`` is not one of
            its choices.
    """

    def __init__(self, fun: Callable[[torch.Tensor], torch.Tensor], dim: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu", *, hvp_backend: str = "auto", grads_backend: str = "auto",
                 max_hvp_batch: int | str = "auto"):
        choice(*FUNCTION_HVP_BACKENDS)("hvp_backend", hvp_backend)
        choice(*GRADS_BACKENDS)("grads_backend", grads_backend)
        self.max_hvp_batch = check_max_batch("max_hvp_batch", max_hvp_batch)
        self.fun = fun
        self.dim = int(dim)
        self.dtype = dtype
        self.device = torch.device(device)
        self.hvp_backend = hvp_backend
        self.grads_backend = grads_backend
        self._bytes_per_vector: int | None = None  # what one vector of a batched call is reckoned to need
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
        if self._hvps_in_use and self.hvp_backend != "jvp":
            # Option II will ask for HVPs here next: build the gradient's graph once, now
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
            self._graph = None  # free the last point's graph before building the next one
            with torch.enable_grad():
                x = w.detach().clone().requires_grad_(True)
                if self._bytes_per_vector is None:  # once per oracle: what the graph saves, for max_hvp_batch
                    with _saved_bytes() as saved:
                        f = self.loss(x)
                        (g,) = torch.autograd.grad(f, x, create_graph=True)
                    self._bytes_per_vector = 2 * max(saved["bytes"], 1)
                else:
                    f = self.loss(x)
                    (g,) = torch.autograd.grad(f, x, create_graph=True)
            self._graph_w, self._graph_version, self._graph = w, w._version, (x, f, g)
        return self._graph

    def batch_limit(self) -> int | None:
        """The most vectors (points) one batched call takes: ``max_hvp_batch``, or under ``"auto"`` what fits
        (see the class docstring); None before the first graph (nothing measured yet: no limit)."""
        if self.max_hvp_batch != "auto":
            return self.max_hvp_batch
        if self._bytes_per_vector is None:
            return None
        self.max_hvp_batch = max(1, batch_memory_budget(self.device) // self._bytes_per_vector)
        return self.max_hvp_batch

    def _measure_graph(self, w):
        """Once per oracle (before a batched call needs the batch limit): build one graph and drop it."""
        if self._bytes_per_vector is None:
            self._graph_at(w)
            self._graph = None

    def hvps(self, w, V):
        self._hvps_in_use = True
        if self.hvp_backend == "jvp":
            self._measure_graph(w)
            return _hvps_jvp(self.fun, w, V, self.batch_limit())
        x, _, g = self._graph_at(w)
        self.hvp_backend, HV = hvps_by_backend(self.hvp_backend, [x], g, V, self.device,
                                               max_batch=self.batch_limit())
        return HV

    # -- Option I ----------------------------------------------------------------------------------
    def grads(self, W):
        if self.grads_backend != "loop":
            self._measure_graph(W[:, 0])
        vmapped = lambda: _grads_vmap(self.fun, W, self.batch_limit())  # noqa: E731
        if self.grads_backend == "auto":
            picked, G = probe_batched_or_loop(
                vmapped, lambda i: self.loss_and_grad(W[:, i])[1], W.shape[1], self.device, failures=Exception)
            self.grads_backend = "vmap" if picked == "batched" else "loop"
            if G is not None:
                return G
        if self.grads_backend == "vmap":
            try:
                return vmapped()
            except Exception:  # noqa: BLE001 - fun not vmappable (control flow, .item(), in-place ops)
                self.grads_backend = "loop"
        return grads_by_loop(self, W)


# -- Option II through an autograd graph: the one implementation of both oracles (AutogradOracle, ClosureOracle) --
def hvps_through_graph(backend: str, leaves: list[torch.Tensor], g: torch.Tensor, V: torch.Tensor,
                       max_batch: int | None = None) -> torch.Tensor:
    """∇²F V, shape (d, m), by differentiating the flat create_graph gradient ``g`` (d,) of F once more with
    respect to ``leaves`` (the tensors g was taken with respect to, in the order g lays them out).

    ``"batched"``: one vmapped backward pass for all m columns (``is_grads_batched``), or one per chunk of at
    most ``max_batch`` columns (None: no limit); ``"loop"``: one backward pass per column (each a contiguous
    row of Vᵀ). Both keep the graph, so further blocks at the same point reuse it. One leaf (the flat point
    of :class:`AutogradOracle`) is differentiated directly; several (a model's parameters) each give their
    block of rows, zeros for a leaf the gradient does not depend on (looped only: batched, autograd materializes
    such a leaf without the batch dimension and the reshape fails with a RuntimeError, which
    :func:`hvps_by_backend` answers with the loop)."""
    if backend not in ("batched", "loop"):
        raise ValueError(f"backend={backend!r} is not one of ('batched', 'loop')")
    m = V.shape[1]
    if backend == "batched" and max_batch is not None and m > max_batch:
        return torch.cat([hvps_through_graph("batched", leaves, g, V[:, i:i + max_batch])
                          for i in range(0, m, max_batch)], dim=1)
    VT = V.T.contiguous()
    if len(leaves) == 1:
        (x,) = leaves
        if backend == "batched":
            (HV,) = torch.autograd.grad(g, x, grad_outputs=VT, retain_graph=True,
                                        allow_unused=True, materialize_grads=True, is_grads_batched=True)
            return HV.reshape(m, -1).T
        cols = [torch.autograd.grad(g, x, grad_outputs=VT[i], retain_graph=True, allow_unused=True,
                                    materialize_grads=True)[0].reshape(-1) for i in range(m)]
        return torch.stack(cols, dim=1)
    if backend == "batched":
        hv = torch.autograd.grad(g, leaves, grad_outputs=VT, retain_graph=True, allow_unused=True,
                                 materialize_grads=True, is_grads_batched=True)
        return torch.cat([x.reshape(m, -1) for x in hv], dim=1).T
    cols = []
    for i in range(m):
        hv = torch.autograd.grad(g, leaves, grad_outputs=VT[i], retain_graph=True, allow_unused=True,
                                 materialize_grads=True)
        cols.append(torch.cat([x.reshape(-1) for x in hv]))
    return torch.stack(cols, dim=1)


def probe_batched_or_loop(batched: Callable[[], torch.Tensor], column: Callable[[int], torch.Tensor], m: int,
                          device: torch.device, failures: type[BaseException] | tuple = RuntimeError
                          ) -> tuple[str, torch.Tensor | None]:
    """("batched" or "loop", the batched result or None): the timing probe of both oracles, on the real block.

    ``batched()`` computes the whole block of m columns in one call; ``column(i)`` column i alone, as the loop
    would. The first batched call is the warm-up, the test of whether the block batches at all (an exception
    of type ``failures``: ``"loop"``, None) and the result returned; the second is timed. The loop is timed on
    two columns after a one-column warm-up and reckoned m/2 times that (a loop's cost is linear in m). The
    probe thus costs one batched call and three columns beyond the block itself. Timers synchronise CUDA."""
    device = torch.device(device)
    try:
        out = batched()
    except failures:
        return "loop", None
    t_batched = _timed(batched, device)
    column(0)
    t_loop = _timed(lambda: (column(0), column(min(1, m - 1))), device) * m / 2
    return ("batched" if t_batched <= t_loop else "loop"), out


def choose_hvp_backend(leaves: list[torch.Tensor], g: torch.Tensor, V: torch.Tensor, device: torch.device,
                       max_batch: int | None = None) -> str:
    """The faster of ``"batched"`` and ``"loop"`` for this graph and block (:func:`probe_batched_or_loop` on V
    itself: no random draw, the global random stream is untouched). Batching wins when per-pass overhead
    dominates (small models, GPUs), the loop on FLOP-bound CPU models. ``"loop"`` without timing when the
    graph cannot be batched (an op without a batching rule: RuntimeError)."""
    return _probe_hvps(leaves, g, V, device, max_batch)[0]


def _probe_hvps(leaves, g, V, device, max_batch):
    VT = V.T.contiguous()

    def column(i):
        return torch.autograd.grad(g, leaves, grad_outputs=VT[i], retain_graph=True, allow_unused=True,
                                   materialize_grads=True)
    return probe_batched_or_loop(lambda: hvps_through_graph("batched", leaves, g, V, max_batch), column,
                                 V.shape[1], device)


def hvps_by_backend(backend: str, leaves: list[torch.Tensor], g: torch.Tensor, V: torch.Tensor,
                    device: torch.device, max_batch: int | None = None) -> tuple[str, torch.Tensor]:
    """(the backend to remember, ∇²F V): the one backend policy of the oracles. ``"auto"`` is decided by
    :func:`choose_hvp_backend` (whose batched result is returned when it picks ``"batched"``); ``"batched"``
    (in chunks of at most ``max_batch`` columns) that fails with a RuntimeError (an op of the model without a
    batching rule) falls back to ``"loop"``, returned so that the oracle keeps looping from then on."""
    if backend == "auto":
        backend, HV = _probe_hvps(leaves, g, V, device, max_batch)
        if HV is not None and backend == "batched":
            return backend, HV
    if backend == "batched":
        try:
            return backend, hvps_through_graph("batched", leaves, g, V, max_batch)
        except RuntimeError:
            backend = "loop"
    if backend != "loop":
        raise ValueError(f"hvp_backend={backend!r} needs a function of the flat point (AutogradOracle); "
                         f"through a graph the backends are {HVP_BACKENDS}")
    return backend, hvps_through_graph("loop", leaves, g, V)


def grads_by_loop(oracle, W: torch.Tensor) -> torch.Tensor:
    """∇F at each column of W, one ``loss_and_grad`` call per column (Option I for oracles without a
    batched gradient)."""
    return torch.stack([oracle.loss_and_grad(W[:, i])[1] for i in range(W.shape[1])], dim=1)


def _grads_vmap(fun, W, max_batch: int | None = None):
    grad_fn = torch.func.grad(lambda w: fun(w).reshape(()))
    return torch.func.vmap(grad_fn, in_dims=1, out_dims=1, chunk_size=max_batch)(W)


def _hvps_jvp(fun, w, V, max_batch: int | None = None):
    """∇²F(w) V by forward-over-reverse: vmap over the columns of jvp(grad(fun)) (the primal gradient is
    computed once per call, unbatched)."""
    grad_fn = torch.func.grad(lambda x: fun(x).reshape(()))
    w = w.detach()

    def hvp(v):
        return torch.func.jvp(grad_fn, (w,), (v,))[1]
    return torch.func.vmap(hvp, in_dims=1, out_dims=1, chunk_size=max_batch)(V)


class _saved_bytes:
    """Context manager: counts the bytes of the tensors autograd saves for backward inside it (each storage once)."""

    def __enter__(self):
        self.tally, seen = {"bytes": 0}, set()

        def pack(t):
            try:
                key = t.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError):  # a tensor without storage (functorch wrappers)
                key = id(t)
            if key not in seen:
                seen.add(key)
                self.tally["bytes"] += t.numel() * t.element_size()
            return t
        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self.tally

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        return False


def batch_memory_budget(device: torch.device) -> int:
    """Bytes the batched paths may use: half the free memory of a CUDA device (``torch.cuda.mem_get_info``),
    elsewhere a quarter of the available host memory (where the OS says it), at most :data:`HOST_BATCH_BUDGET`."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return HOST_BATCH_BUDGET
    return min(HOST_BATCH_BUDGET, available // 4)


def check_max_batch(name: str, value) -> int | str:
    """``"auto"`` or a positive int (the option ``max_hvp_batch``), else OptionError naming it."""
    if isinstance(value, str) and value == "auto":
        return value
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise OptionError(option=name, value=value, allowed='"auto" or a positive integer')
    return int(value)


def _timed(fn, device: torch.device) -> float:
    """Seconds of one call of ``fn``, synchronised on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def fastest_backend(candidates: dict[str, Callable[[], torch.Tensor]], device: torch.device, repeats: int = 3) -> str:
    """Name of the candidate with the smallest median time (a warm-up call first, synchronised on GPU)."""
    def timed(fn):
        fn()
        times = sorted(_timed(fn, device) for _ in range(repeats))
        return times[len(times) // 2]
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
