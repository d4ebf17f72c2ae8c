"""A researcher's own model as a problem: an ``nn.Module``, a loss and data.

    >>> import torch, torch.nn as nn
    >>> from sqn_ray.problems import ModuleProblem
    >>> problem = ModuleProblem("my-net", lambda: nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)),
    ...                         nn.functional.cross_entropy, X, y, test=(X_test, y_test), batch_size=None)
    >>> sqn_ray.minimize(problem.oracle, problem.init(0), "s-lsr1")

``model`` is a zero-argument callable returning the module, so that ``init(seed)`` seeds torch and builds it
afresh: w0 is the module's own initialisation for that seed, flattened in ``named_parameters()`` order, the same
in every dtype and on every device (built on the CPU in float32, then cast and moved). F(w) is
``loss_fn(module(inputs), targets)`` at the parameters w through :func:`torch.func.functional_call`, the module
in eval mode (F is deterministic: dropout is off and batch-norm uses its fixed running statistics). The oracle is
the generic :class:`~sqn_ray.objective.AutogradOracle` (batched or looped HVPs, chosen once by a timing probe).

A ``ModuleProblem`` is also a recipe: ``build(dtype=..., device=...)`` gives the same problem in another dtype or
on another device (what a study does with its ``dtype`` and ``device``), and pickling it ships the recipe (model
callable, loss, data), never the oracle's caches.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import torch

from ..objective import FUNCTION_HVP_BACKENDS, GRADS_BACKENDS, AutogradOracle, check_max_batch, module_objective_fun
from ..options import OptionError
from .batches import SharedBackends, SubsampledOracle
from .protocol import ProblemError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
EVAL_CHUNK = 10_000  # rows per pass of accuracy and test metrics (bounds their memory)


def _as_tensors(inputs, targets, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) as tensors: given as two tensors, or as a torch Dataset of (input, target) items."""
    if isinstance(inputs, torch.utils.data.Dataset) and not torch.is_tensor(inputs):
        if targets is not None:
            raise ProblemError(f"{what}: give a Dataset of (input, target) items, or inputs and targets tensors, "
                               "not both")
        items = [inputs[i] for i in range(len(inputs))]
        if not items:
            raise ProblemError(f"{what}: the Dataset is empty")
        try:
            inputs = torch.stack([torch.as_tensor(x) for x, _ in items])
            targets = torch.stack([torch.as_tensor(t) for _, t in items])
        except (TypeError, ValueError, RuntimeError) as e:
            raise ProblemError(f"{what}: the Dataset's items must be (input, target) pairs of tensors: {e}") from e
    if not torch.is_tensor(inputs) or not torch.is_tensor(targets):
        raise ProblemError(f"{what}: inputs and targets must be tensors (or inputs a Dataset), got "
                           f"{type(inputs).__name__} and {type(targets).__name__}")
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ProblemError(f"{what}: {len(inputs)} inputs but {len(targets)} targets (need as many, at least one)")
    return inputs, targets


def _cast(t: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Floating tensors to the problem's dtype, others (class labels) kept as they are; all to ``device``."""
    return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)


class ModuleProblem:
    """A problem from an ``nn.Module``, a loss and data (see the module docstring).

    Args:
        name: the problem's name (letters, digits, ``_``, ``.``, ``-``), as study files name it.
        model: zero-argument callable returning the ``nn.Module`` (called once per ``init(seed)``, after
            ``torch.manual_seed(seed)``; and once, seed 0, for the structure the oracle evaluates).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` with mean reduction (e.g. ``F.cross_entropy``).
        inputs, targets: the training data, tensors with one row per point (floating ones are cast to
            ``dtype``; integer targets stay class labels); or ``inputs`` a torch Dataset of (input, target) items
            and ``targets`` None.
        test: optional held-out ``(inputs, targets)`` (or a Dataset): recorded as ``test_loss`` and
            ``test_accuracy`` by :meth:`metrics`.
        batch_size: None for full batch; an int for sub-sampled gradients and pairs: F_B over a mini-batch that
            moves on at every accepted iterate (consecutive slices of a fresh permutation per epoch, from the
            run's seed), as the MNIST ``-b<N>`` problems do.
        curvature_batch_size: with ``batch_size``, the first this many points of B for Option II's HVPs.
        target_accuracy: training accuracy at which a run counts as solved (None: no target).
        accuracy: ``"auto"`` (argmax accuracy when the targets are integer class labels and the outputs 2-D;
            none otherwise), a callable ``accuracy(outputs, targets) -> float`` in [0, 1], or None (no accuracy).
        description: one line for ``sqn-ray problems`` (default: the model's class, d, n and the loss).
        dtype, device: what the oracle computes in and on (``build`` changes them).
        hvp_backend, grads_backend: the AutogradOracle backends (``"auto"``: probed once per problem).
        max_hvp_batch: the most vectors one batched HVP (or Option I gradient) call takes (``"auto"``: what fits
            in memory, from the size of the gradient's graph; see :class:`~sqn_ray.objective.AutogradOracle`).

    Attributes:
        name, dim, n_samples, dtype, device, oracle, target_accuracy, description: as in
            :class:`~sqn_ray.problems.ProblemProtocol`; ``init(seed)``, ``accuracy(w)``, ``fun(w)`` (full-batch
            F) and ``metrics`` (``metrics(w) -> {"test_loss", "test_accuracy"}``, None without ``test``).

    Raises:
        ProblemError: (a ValueError) naming the argument, for any bad input, before any evaluation.
    """

    def __init__(self, name: str, model: Callable[[], torch.nn.Module], loss_fn: Callable, inputs: Any,
                 targets: Any = None, *, test: Any = None, batch_size: int | None = None,
                 curvature_batch_size: int | None = None, target_accuracy: float | None = None,
                 accuracy: Any = "auto", description: str | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", hvp_backend: str = "auto", grads_backend: str = "auto",
                 max_hvp_batch: int | str = "auto"):
        self._recipe = dict(name=name, model=model, loss_fn=loss_fn, inputs=inputs, targets=targets, test=test,
                            batch_size=batch_size, curvature_batch_size=curvature_batch_size,
                            target_accuracy=target_accuracy, accuracy=accuracy, description=description,
                            dtype=dtype, device=device, hvp_backend=hvp_backend, grads_backend=grads_backend,
                            max_hvp_batch=max_hvp_batch)
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ProblemError(f"name must be letters, digits, '_', '.', '-' (not starting with one of the last "
                               f"three), got {name!r}")
        what = f"ModuleProblem {name!r}"
        if not callable(model) or isinstance(model, torch.nn.Module):
            raise ProblemError(f"{what}: model must be a zero-argument callable returning an nn.Module (e.g. the "
                               f"module's class, or a lambda), got {type(model).__name__}")
        if not callable(loss_fn):
            raise ProblemError(f"{what}: loss_fn must be callable (outputs, targets) -> scalar, got {loss_fn!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ProblemError(f"{what}: dtype must be torch.float32 or torch.float64, got {dtype!r}")
        for option, value, allowed in (("hvp_backend", hvp_backend, FUNCTION_HVP_BACKENDS),
                                       ("grads_backend", grads_backend, GRADS_BACKENDS)):
            if value not in allowed:
                raise ProblemError(f"{what}: {option}={value!r} is not one of {allowed}")
        if target_accuracy is not None and not (isinstance(target_accuracy, (int, float))
                                                and not isinstance(target_accuracy, bool)
                                                and 0 <= target_accuracy <= 1):
            raise ProblemError(f"{what}: target_accuracy must be None or a number in [0, 1], got {target_accuracy!r}")
        if not (accuracy in (None, "auto") or callable(accuracy)):
            raise ProblemError(f"{what}: accuracy must be 'auto', None or a callable (outputs, targets) -> float, "
                               f"got {accuracy!r}")
        try:
            check_max_batch("max_hvp_batch", max_hvp_batch)
        except OptionError as e:
            raise ProblemError(f"{what}: {e}") from None
        self.name, self.dtype, self.device = name, dtype, torch.device(device)
        X, y = _as_tensors(inputs, targets, f"{what}: training data")
        self._X, self._y = _cast(X, dtype, self.device), _cast(y, dtype, self.device)
        self.n_samples = len(self._y)
        if test is not None:
            if isinstance(test, torch.utils.data.Dataset) and not torch.is_tensor(test):
                Xt, yt = _as_tensors(test, None, f"{what}: test")
            elif isinstance(test, (tuple, list)) and len(test) == 2:
                Xt, yt = _as_tensors(test[0], test[1], f"{what}: test")
            else:
                raise ProblemError(f"{what}: test must be an (inputs, targets) pair or a Dataset, got "
                                   f"{type(test).__name__}")
            self._test = (_cast(Xt, dtype, self.device), _cast(yt, dtype, self.device))
        else:
            self._test = None
        for option, value, top in (("batch_size", batch_size, self.n_samples),
                                   ("curvature_batch_size", curvature_batch_size, batch_size or self.n_samples)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top):
                raise ProblemError(f"{what}: {option} must be None or an integer in [1, {top}], got {value!r}")
        if curvature_batch_size is not None and batch_size is None:
            raise ProblemError(f"{what}: curvature_batch_size needs a batch_size (full batch has no batches)")

        self._module = self._build_module(0).eval()  # the structure functional_call evaluates at any w
        self._loss_fn = loss_fn
        self.dim = sum(p.numel() for p in self._module.parameters())
        if self.dim == 0:
            raise ProblemError(f"{what}: the module has no parameters")
        self._classify = self._is_classification(accuracy)
        self._accuracy_fn = accuracy if callable(accuracy) else None
        if target_accuracy is not None and not (self._classify or self._accuracy_fn):
            raise ProblemError(f"{what}: target_accuracy needs an accuracy (integer class labels with 2-D outputs, "
                               "or an accuracy callable)")
        self.target_accuracy = None if target_accuracy is None else float(target_accuracy)
        self.fun = module_objective_fun(self._module, loss_fn, self._X, self._y)[0]
        backends = {"hvp_backend": hvp_backend, "grads_backend": grads_backend}
        batching_limit = {"max_hvp_batch": max_hvp_batch}
        if batch_size is None:
            self.oracle = AutogradOracle(self.fun, self.dim, dtype, self.device, **backends, **batching_limit)
        else:
            shared = dict(backends)

            def make(idx: torch.Tensor):
                idx = idx.to(self.device)
                fun = module_objective_fun(self._module, loss_fn, self._X[idx], self._y[idx])[0]
                return SharedBackends(AutogradOracle(fun, self.dim, dtype, self.device, **shared, **batching_limit),
                                       shared)

            self.oracle = SubsampledOracle(make, self.n_samples, batch_size, dim=self.dim, dtype=dtype,
                                           device=self.device, curvature_batch_size=curvature_batch_size)
        self.metrics = self._test_metrics if self._test is not None else None
        batching = "full batch" if batch_size is None else f"mini-batches of {batch_size}"
        self.description = description if description is not None else (
            f"{type(self._module).__name__} (nn.Module), d = {self.dim}, n = {self.n_samples}, "
            f"{getattr(loss_fn, '__name__', type(loss_fn).__name__)}, {batching}")

    # -- the recipe ----------------------------------------------------------------------------------
    def build(self, *, dtype: torch.dtype, device: torch.device | str) -> ModuleProblem:
        """The same problem in ``dtype`` on ``device`` (itself when they are already its own).

        Args:
            dtype: torch.float32 or torch.float64.
            device: e.g. ``"cpu"``, ``"cuda:0"``.

        Returns:
            A ModuleProblem (the data cast and moved; the model callable, loss and options unchanged).
        """
        if dtype == self.dtype and torch.device(device) == self.device:
            return self
        return ModuleProblem(**{**self._recipe, "dtype": dtype, "device": device})

    def shard(self, rank: int, world: int) -> ModuleProblem:
        """The problem on shard ``rank`` of ``world`` of the training rows (contiguous blocks,
        :func:`~sqn_ray.problems.shards.shard_bounds`), for a data-parallel trial: the same model, loss, test set
        and options, the mean over the shard's rows. Full batch only (each worker's rows at every iteration)."""
        from .shards import shard_bounds

        if self._recipe["batch_size"] is not None:
            raise ProblemError(f"ModuleProblem {self.name!r}: a data-parallel shard is full batch; this problem has "
                               f"batch_size={self._recipe['batch_size']} (run it with workers: 1)")
        lo, hi = shard_bounds(self.n_samples, int(world), int(rank))
        return ModuleProblem(**{**self._recipe, "inputs": self._X[lo:hi], "targets": self._y[lo:hi],
                                "dtype": self.dtype, "device": self.device})

    def __reduce__(self):
        return (_rebuild, (self._recipe,))

    def __repr__(self) -> str:
        return (f"ModuleProblem(name={self.name!r}, dim={self.dim}, n_samples={self.n_samples}, dtype={self.dtype}, "
                f"device={self.device})")

    # -- the protocol --------------------------------------------------------------------------------
    def _build_module(self, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):  # the caller's global random stream is left as it was
            torch.manual_seed(int(seed))
            module = self._recipe["model"]()
        if not isinstance(module, torch.nn.Module):
            raise ProblemError(f"ModuleProblem {self.name!r}: model() returned a {type(module).__name__}, not an "
                               "nn.Module")
        return module.to(device=self.device, dtype=self.dtype)

    def init(self, seed: int) -> torch.Tensor:
        """w0: the module's own initialisation after ``torch.manual_seed(seed)``, flat, shape (dim,)."""
        if isinstance(self.oracle, SubsampledOracle):
            self.oracle.reseed(seed)  # the batch stream restarts with the run: batches depend on the seed only
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            module = self._recipe["model"]()  # built on the CPU in float32: one seed, one point everywhere
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).to(self.dtype).to(self.device)

    def _outputs(self, w: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        names = [n for n, _ in self._module.named_parameters()]
        shapes = [p.shape for _, p in self._module.named_parameters()]
        chunks = torch.split(w, [math.prod(s) for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        with torch.no_grad():
            return torch.func.functional_call(self._module, {**params, **dict(self._module.named_buffers())}, (X,))

    def _is_classification(self, accuracy) -> bool:
        if accuracy != "auto" or self._y.is_floating_point() or self._y.dim() != 1:
            return False
        out = self._outputs(torch.cat([p.detach().reshape(-1) for p in self._module.parameters()]), self._X[:2])
        return out.dim() == 2

    def _evaluate(self, w: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(mean loss, accuracy) over all rows, in chunks of EVAL_CHUNK (accuracy NaN where there is none)."""
        loss = correct = 0.0
        for lo in range(0, len(y), EVAL_CHUNK):
            out, yy = self._outputs(w, X[lo:lo + EVAL_CHUNK]), y[lo:lo + EVAL_CHUNK]
            with torch.no_grad():
                loss += float(self._loss_fn(out, yy)) * len(yy)
            if self._accuracy_fn is not None:
                correct += float(self._accuracy_fn(out, yy)) * len(yy)
            elif self._classify:
                correct += float((out.argmax(1) == yy).sum())
        has_accuracy = self._accuracy_fn is not None or self._classify
        return loss / len(y), correct / len(y) if has_accuracy else math.nan

    def accuracy(self, w: torch.Tensor) -> float:
        """Training accuracy at w in [0, 1] (NaN when the problem has none)."""
        if not (self._classify or self._accuracy_fn):
            return math.nan
        return self._evaluate(w, self._X, self._y)[1]

    def _test_metrics(self, w: torch.Tensor) -> dict:
        loss, acc = self._evaluate(w, *self._test)
        return {"test_loss": loss, "test_accuracy": acc}


def _rebuild(recipe: dict) -> ModuleProblem:
    return ModuleProblem(**recipe)
