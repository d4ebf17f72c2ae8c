"""What a problem is, for ``minimize``, ``sqn-ray run`` and a study: the public problem protocol.

A problem is any object with the attributes of :class:`ProblemProtocol`: the built-in
:class:`~sqn_ray.problems.Problem`, :class:`~sqn_ray.problems.ModuleProblem` (an ``nn.Module``, a loss and
data) and whatever a plugin returns. A plugin or a notebook may also hand over a *recipe*: an object with
``build(dtype=..., device=...)`` returning the problem in the dtype and on the device a study asks for
(``ModuleProblem`` is both). :func:`check_problem` says, naming the problem, what an object lacks.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from ..objective import Oracle

#: the attributes every problem has (``metrics`` and ``fun`` are optional)
REQUIRED_ATTRIBUTES = ("name", "dim", "n_samples", "dtype", "device", "oracle", "init", "accuracy",
                       "target_accuracy", "description")
ORACLE_METHODS = ("loss", "loss_and_grad", "hvps", "grads")


class ProblemError(ValueError):
    """A problem (built-in, plugin or notebook-defined) that cannot be used; the message names it."""


@runtime_checkable
class ProblemProtocol(Protocol):
    """A named minimisation problem min_w F(w), F a mean over ``n_samples`` points, w flat of shape (dim,).

    Attributes:
        name: the problem's name (what study files and ``sqn-ray run --problem`` use).
        dim: d, the number of parameters (a cost axis of the analysis).
        n_samples: n, the number of training points F averages over (the other cost axis).
        dtype, device: what the oracle computes in and on.
        oracle: the :class:`~sqn_ray.objective.Oracle` of F; its optional ``batch_fraction`` (|B| / n, 1 when
            absent) is the share of the data one evaluation touches, for the epochs axis.
        init: ``init(seed) -> w0``, the seeded starting point of shape (dim,).
        accuracy: ``accuracy(w) -> float``, the training accuracy in [0, 1] (NaN where there is none).
        target_accuracy: the training accuracy at which a run counts as solved (None: no such target).
        description: one line: data, model, d, loss.
        metrics: optional ``metrics(w) -> dict`` of held-out metrics (``test_loss``, ``test_accuracy``), recorded
            by a study every ``accuracy_every`` iterations; absent or None when there is no test set.
        fun: optional ``fun(w) -> F(w)``, a plain differentiable definition of the same F.
        shard: optional ``shard(rank, world) -> problem``, the same problem on block ``rank`` of ``world`` of the
            training rows (:func:`shard_of`); a problem with one can run in data-parallel trials
            (``resources: {workers: k}``). The MNIST full-batch problems and ModuleProblem have one.
    """

    name: str
    dim: int
    n_samples: int
    dtype: torch.dtype
    device: torch.device
    oracle: Oracle
    init: Callable[[int], torch.Tensor]
    accuracy: Callable[[torch.Tensor], float]
    target_accuracy: float | None
    description: str


def check_problem(problem: Any, name: str, *, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> Any:
    """``problem`` if it follows :class:`ProblemProtocol` (and has ``name``, ``dtype`` and ``device`` when given).

    Args:
        problem: the object a plugin, a notebook or the library handed over.
        name: the name it was asked for (entry point or study name).
        dtype, device: what the caller asked for; None: not checked.

    Returns:
        ``problem`` itself.

    Raises:
        ProblemError: naming the problem and every attribute it lacks, or the one that is wrong.
    """
    missing = [a for a in REQUIRED_ATTRIBUTES if not hasattr(problem, a)]
    if missing:
        raise ProblemError(f"problem {name!r}: a {type(problem).__name__} is not a problem: it lacks {missing} "
                           f"(see sqn_ray.problems.ProblemProtocol)")
    lacking = [m for m in ORACLE_METHODS if not callable(getattr(problem.oracle, m, None))]
    if lacking:
        raise ProblemError(f"problem {name!r}: its oracle ({type(problem.oracle).__name__}) lacks the methods "
                           f"{lacking} of sqn_ray.objective.Oracle")
    if problem.name != name:
        raise ProblemError(f"problem {name!r}: the object returned is named {problem.name!r}; a problem is "
                           f"registered under its own name")
    if isinstance(problem.dim, bool) or not isinstance(problem.dim, int) or problem.dim < 1:
        raise ProblemError(f"problem {name!r}: dim must be a positive integer, got {problem.dim!r}")
    if isinstance(problem.n_samples, bool) or not isinstance(problem.n_samples, int) or problem.n_samples < 1:
        raise ProblemError(f"problem {name!r}: n_samples must be a positive integer, got {problem.n_samples!r}")
    target = problem.target_accuracy
    if target is not None and not (isinstance(target, (int, float)) and math.isfinite(target) and 0 <= target <= 1):
        raise ProblemError(f"problem {name!r}: target_accuracy must be None or a number in [0, 1], got {target!r}")
    if dtype is not None and problem.dtype != dtype:
        raise ProblemError(f"problem {name!r} computes in {problem.dtype}, not the {dtype} asked for (return a "
                           "recipe with build(dtype=..., device=...), e.g. a ModuleProblem)")
    if device is not None and torch.device(problem.device) != torch.device(device):
        raise ProblemError(f"problem {name!r} lives on {problem.device}, not on the {device} asked for (return a "
                           "recipe with build(dtype=..., device=...), e.g. a ModuleProblem)")
    return problem


def materialize(recipe: Any, name: str, *, dtype: torch.dtype, device: torch.device | str) -> Any:
    """The problem a recipe or a problem stands for, in ``dtype`` on ``device``, checked.

    Args:
        recipe: an object with ``build(dtype=..., device=...)``, or a problem already (checked as it is), or a
            zero-argument callable returning either (an entry point's object).
        name: the name it is registered under.
        dtype, device: what the caller asks for.

    Returns:
        The problem (:func:`check_problem` passed).

    Raises:
        ProblemError: for anything that is not a problem, or one in another dtype or on another device.
    """
    device = torch.device(device)
    if not hasattr(recipe, "build") and not hasattr(recipe, "oracle") and callable(recipe):
        recipe = recipe()
    if hasattr(recipe, "build") and callable(recipe.build):
        problem = recipe.build(dtype=dtype, device=device)
    else:
        problem = recipe
    return check_problem(problem, name, dtype=dtype, device=device)


def shard_of(problem: Any, name: str, rank: int, world: int) -> Any:
    """Shard ``rank`` of ``world`` of a problem, for a data-parallel trial: ``problem.shard(rank, world)``, a
    problem over that block of the training rows (F_k, the mean over its ``n_samples`` rows), checked.

    Raises:
        ProblemError: naming the problem when it has no ``shard`` method (it runs with ``workers: 1`` only) or
            its shard is not a problem of the same dimension.
    """
    shard = getattr(problem, "shard", None)
    if not callable(shard):
        raise ProblemError(f"problem {name!r} cannot be split across workers: it has no shard(rank, world) method "
                           "(the MNIST full-batch problems and ModuleProblem have one); run it with workers: 1")
    part = check_problem(shard(int(rank), int(world)), name)
    if part.dim != problem.dim:
        raise ProblemError(f"problem {name!r}: shard {rank} of {world} has dim {part.dim}, not {problem.dim}")
    return part
