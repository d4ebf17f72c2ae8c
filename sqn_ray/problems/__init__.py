"""The problem library: named test problems, each a flat-parameter oracle plus what a study needs around it.

    >>> from sqn_ray.problems import get_problem
    >>> prob = get_problem("toy-small")
    >>> w0 = prob.init(seed=0)                      # every weight and bias i.i.d. N(0, 1)
    >>> f, g = prob.oracle.loss_and_grad(w0)        # the fast hand-written oracle
    >>> float(prob.fun(w0)) == float(f)             # the plain autograd-differentiable definition

Problems (``PROBLEMS``):

* ``toy-small``, ``toy-medium``, ``toy-large``: the paper's sine-band classification with sigmoid nets of
  d = 36, 176, 908 (:mod:`sqn_ray.problems.toy`); target accuracy 1.0, as in the paper's stopping rule.
* ``logistic``: L2-regularised logistic regression on breast cancer, d = 31, a convex problem whose
  minimiser :func:`~sqn_ray.problems.logistic.solution` is known (:mod:`sqn_ray.problems.logistic`).
* the MNIST and Fashion-MNIST networks (:mod:`sqn_ray.problems.mnist`; the data cache first).

A researcher's own model: :class:`~sqn_ray.problems.module.ModuleProblem` (an ``nn.Module``, a loss and data),
registered by an installed package through the ``sqn_ray.problems`` entry-point group
(:mod:`sqn_ray.problems.plugins`) or handed to a study from a notebook (``run_study(..., problems={...})``).
Anything with the attributes of :class:`~sqn_ray.problems.protocol.ProblemProtocol` is a problem.

Importing this package needs neither Ray nor scikit-learn (the breast-cancer data loads on first use).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..objective import Oracle
from .module import ModuleProblem
from .plugins import ENTRY_POINT_GROUP, PluginError, load_plugin, plugin_entry_points
from .protocol import ProblemError, ProblemProtocol, check_problem, materialize, shard_of
from .logistic import DEFAULT_LAMBDA, LogisticOracle, logistic_fun, logistic_oracle, solution
from .mlp import ACTIVATIONS, MLPOracle, layer_shapes, mlp_logits, mlp_loss, param_count
from .toy import TOY_SIZES, toy_data, toy_fun, toy_oracle

# MNIST problems need the data cache (`sqn-ray data fetch mnist`); "-b<N>" sub-samples N points per batch.
MNIST_PROBLEMS = ("mnist-mlp", "mnist-cnn", "mnist-mlp-b1000", "mnist-cnn-b1000")
# the same networks on Fashion-MNIST (`sqn-ray data fetch fashion-mnist`)
FASHION_MNIST_PROBLEMS = tuple(f"fashion-{name}" for name in MNIST_PROBLEMS)
PROBLEMS = ("toy-small", "toy-medium", "toy-large", "logistic", *MNIST_PROBLEMS, *FASHION_MNIST_PROBLEMS)
DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class Problem:
    """A named minimisation problem min_w F(w), w ∈ R^dim, F a mean over ``n_samples`` points.

    What :func:`get_problem` returns (the MNIST problems: :class:`~sqn_ray.problems.mnist.MNISTProblem`, which
    adds the test set's ``test_accuracy(w)``, ``test_loss(w)`` and ``metrics(w)``). Every w is a flat tensor of
    shape (dim,) in ``dtype`` on ``device``.

    Attributes:
        name: its name in :data:`PROBLEMS`.
        dim: d, the number of parameters.
        n_samples: the number of training points F averages over.
        dtype, device: what the oracle computes in and on.
        oracle: the fast :class:`~sqn_ray.objective.Oracle` of F (hand-batched HVPs and gradients); pass it
            to ``minimize``.
        fun: ``fun(w) -> F(w)`` (0-dim tensor), the plain differentiable definition of the same F (for
            autograd, vmap and cross-checks).
        init: ``init(seed) -> w0``, the seeded starting point, shape (dim,) (the same point for a seed in
            every dtype and on every device).
        accuracy: ``accuracy(w) -> float``, the training accuracy, a fraction in [0, 1].
        target_accuracy: the accuracy at which a run counts as solved and may stop (1.0 for the toy
            problems); None: no such target.
        description: one line: the data, the model, d and the loss.
    """
    name: str
    dim: int
    n_samples: int
    dtype: torch.dtype
    device: torch.device
    oracle: Oracle
    fun: Callable[[torch.Tensor], torch.Tensor]
    init: Callable[[int], torch.Tensor]
    accuracy: Callable[[torch.Tensor], float]
    target_accuracy: float | None
    description: str


def gaussian_init(dim: int, dtype: torch.dtype, device: torch.device) -> Callable[[int], torch.Tensor]:
    """``init(seed)``: w_i i.i.d. N(0, 1), drawn in float64 on the host from ``torch.Generator().manual_seed(seed)``
    and then cast and moved, so one seed gives the same point in every dtype and on every device.

    Args:
        dim: d, the length of the points.
        dtype, device: those of the points ``init`` returns.

    Returns:
        ``init(seed: int) -> Tensor`` of shape (dim,).
    """
    def init(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(int(seed))
        return torch.randn(dim, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    return init


def zeros_init(dim: int, dtype: torch.dtype, device: torch.device) -> Callable[[int], torch.Tensor]:
    """``init(seed)`` = 0 for every seed (a convex problem has one answer; the seed is accepted for uniformity).

    Args:
        dim: d, the length of the points.
        dtype, device: those of the points ``init`` returns.

    Returns:
        ``init(seed: int) -> Tensor``, zeros of shape (dim,) (``int(seed)`` must succeed).
    """
    def init(seed: int) -> torch.Tensor:
        int(seed)  # still validate it: a bad seed should fail here as it does for the other problems
        return torch.zeros(dim, dtype=dtype, device=device)
    return init


def _toy_problem(name: str, size: str, dtype: torch.dtype, device: torch.device) -> Problem:
    oracle = toy_oracle(size, dtype, device)
    sizes = TOY_SIZES[size]
    return Problem(
        name=name, dim=oracle.dim, n_samples=oracle.n, dtype=dtype, device=device, oracle=oracle,
        fun=toy_fun(size, dtype, device), init=gaussian_init(oracle.dim, dtype, device),
        accuracy=oracle.accuracy, target_accuracy=1.0,
        description=(f"toy sine bands (100 points, 2 classes), sigmoid MLP {list(sizes)}, d = {oracle.dim}, "
                     "softmax cross-entropy"))


def _logistic_problem(dtype: torch.dtype, device: torch.device) -> Problem:
    oracle = logistic_oracle(DEFAULT_LAMBDA, dtype, device)
    return Problem(
        name="logistic", dim=oracle.dim, n_samples=oracle.n, dtype=dtype, device=device, oracle=oracle,
        fun=logistic_fun(DEFAULT_LAMBDA, dtype, device), init=zeros_init(oracle.dim, dtype, device),
        accuracy=oracle.accuracy, target_accuracy=None,
        description=(f"L2-regularised logistic regression (lambda = {DEFAULT_LAMBDA:g}, intercept unpenalised) "
                     f"on standardised breast cancer, n = {oracle.n}, d = {oracle.dim}; convex, "
                     "minimiser from sqn_ray.problems.logistic.solution()"))


def get_problem(name: str, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                problems: dict | None = None, shard: tuple[int, int] | None = None) -> Problem:
    """Build a problem: of the library, of an installed plugin, or one handed over in ``problems``.

    Args:
        name: one of :func:`problem_names` (``problems``' names included).
        dtype: ``torch.float64`` or ``torch.float32``: what the oracle computes in.
        device: where its data and computations live (``"cpu"``, ``"cuda"``, ``"cuda:0"``, ...).
        problems: name -> problem or recipe (``build(dtype=..., device=...)``, e.g. a ModuleProblem) defined by
            the caller (a notebook); these names come first.
        shard: ``(rank, world)``: only that shard of the training rows (:func:`~sqn_ray.problems.protocol.shard_of`;
            the MNIST problems read only those rows), for a data-parallel trial; None: all of them.

    Returns:
        The problem: a :class:`Problem` (an :class:`~sqn_ray.problems.mnist.MNISTProblem` for the MNIST and
        Fashion-MNIST names), or what the plugin or ``problems`` provides, checked against
        :class:`~sqn_ray.problems.protocol.ProblemProtocol`.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones) or an unsupported dtype.
        PluginError: (a ProblemError, a ValueError) a plugin that cannot be imported, called or checked; the
            message names its entry point and package.
        DataNotFetchedError: (:mod:`sqn_ray.data`; a ValueError) for an MNIST or Fashion-MNIST problem whose data
            is not in the local cache; the message says which ``sqn-ray data fetch`` command to run.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {DTYPES}")
    device = torch.device(device)
    if shard is not None:
        rank, world = shard
        if (name in MNIST_PROBLEMS or name in FASHION_MNIST_PROBLEMS) and not (problems and name in problems):
            from .mnist import make_mnist_problem

            return make_mnist_problem(name, dtype=dtype, device=device, shard=(int(rank), int(world)))
        return shard_of(get_problem(name, dtype=dtype, device=device, problems=problems), name, rank, world)
    if problems and name in problems:
        return materialize(problems[name], name, dtype=dtype, device=device)
    if name not in PROBLEMS:
        plugins = plugin_entry_points(PROBLEMS)
        if name in plugins:
            from .plugins import describe

            try:
                return materialize(load_plugin(plugins[name]), name, dtype=dtype, device=device)
            except PluginError:
                raise
            except ProblemError as e:
                raise PluginError(f"problem plugin {describe(plugins[name])}: {e}") from e
        raise ValueError(f"unknown problem {name!r}; valid names: {', '.join(problem_names(problems))}")
    if name in MNIST_PROBLEMS or name in FASHION_MNIST_PROBLEMS:
        from .mnist import make_mnist_problem  # imported here: mnist.py builds on this module's Problem

        return make_mnist_problem(name, dtype=dtype, device=device)
    if name == "logistic":
        return _logistic_problem(dtype, device)
    return _toy_problem(name, name.removeprefix("toy-"), dtype, device)


def problem_names(problems: dict | None = None) -> tuple[str, ...]:
    """Every problem name a study may use: the library's (:data:`PROBLEMS`), then the installed plugins' (sorted),
    then ``problems``' own (a notebook's). Nothing is imported: plugins are listed by their entry points.

    Args:
        problems: name -> problem or recipe handed over by the caller, or None.

    Returns:
        The names, each once, in that order.
    """
    names = dict.fromkeys([*PROBLEMS, *plugin_entry_points(PROBLEMS), *(problems or {})])
    return tuple(names)


def problem_dim(name: str, problems: dict | None = None) -> int | None:
    """d of a problem without building it (no data is loaded, no plugin imported).

    Args:
        name: a problem name.
        problems: name -> problem or recipe handed over by the caller: its ``dim`` attribute, where it has one.

    Returns:
        Its number of parameters, or None where only building it tells (``logistic``: d follows from its data
        set) or for a name that is not a toy or MNIST problem.
    """
    if problems and name in problems:
        dim = getattr(problems[name], "dim", None)
        return dim if isinstance(dim, int) and not isinstance(dim, bool) else None
    if name.startswith("toy-") and name.removeprefix("toy-") in TOY_SIZES:
        return param_count(TOY_SIZES[name.removeprefix("toy-")])
    if name in MNIST_PROBLEMS or name in FASHION_MNIST_PROBLEMS:
        from .mnist import _param_shapes, parse_mnist_name

        return sum(math.prod(shape) for shape in _param_shapes(parse_mnist_name(name)[1]))
    return None


__all__ = ["PROBLEMS", "MNIST_PROBLEMS", "FASHION_MNIST_PROBLEMS", "Problem", "get_problem", "problem_dim",
           "problem_names", "ModuleProblem", "ProblemProtocol", "ProblemError", "PluginError", "check_problem",
           "materialize", "shard_of", "plugin_entry_points", "load_plugin", "ENTRY_POINT_GROUP",
           "gaussian_init", "zeros_init", "MLPOracle", "LogisticOracle",
           "ACTIVATIONS", "layer_shapes", "param_count", "mlp_logits", "mlp_loss", "TOY_SIZES", "toy_data",
           "toy_fun", "toy_oracle", "logistic_oracle", "logistic_fun", "solution"]
