"""MNIST problems: a fully connected net and a small conv net, full batch or sub-sampled.

Problems (:data:`MNIST_PROBLEMS`, plus the Fashion-MNIST twins in :data:`FASHION_PROBLEMS`):

* ``mnist-mlp``: 784-100-10, tanh hidden layer, softmax cross-entropy, d = 79,510. Oracle: the hand-batched
  :class:`~sqn_ray.problems.mlp.MLPOracle` (R-operator HVPs, all m in one pass), over chunks of 10,000 rows.
* ``mnist-cnn``: conv 5×5/2 (1→8) · tanh · conv 5×5/2 (8→16) · tanh · linear 256→10, d = 5,994
  (strided convolutions instead of pooling keep F twice differentiable). Oracle:
  :class:`~sqn_ray.objective.AutogradOracle` on :func:`~sqn_ray.objective.module_objective_fun`, per chunk.

Inputs are the pixel values / 255 in [0, 1] (flattened for the MLP, 1×28×28 for the CNN); F is the mean
cross-entropy over the 60,000 training images; ``accuracy(w)`` is the training accuracy, ``test_accuracy(w)``
and ``test_loss(w)`` those on the 10,000 test images. ``init(seed)``: every weight i.i.d. N(0, 1/fan_in)
(LeCun normal) drawn in float64 from ``torch.Generator().manual_seed(seed)``, biases 0.

Sub-sampling (the stochastic extension the poster names as future work)
-----------------------------------------------------------------------
With ``batch_size`` (or a name such as ``mnist-mlp-b1000``) the oracle is a :class:`SubsampledOracle`:
F is replaced by F_B, the mean over a mini-batch B, and B changes exactly when the optimizer asks for a
gradient at a NEW point. So within one iteration everything is consistent: the gradient, the m curvature
pairs and the trial losses of the ratio test or line search all use the same B (the curvature pairs use
the first ``curvature_batch_size`` points H ⊆ B for Option II; Option I's gradients at w + s_i use B, so
y_i = ∇F_B(w + s_i) − ∇F_B(w) stays a difference of one function); a rejected step keeps B, an accepted one
moves to the next batch. Batches are consecutive slices of a fresh permutation every epoch (the last partial
batch is dropped), drawn from the problem's seed: ``init(seed)`` re-seeds the stream, so a run's batches
depend only on its seed. GD and Adam become mini-batch SG and Adam. Path methods (LBFGS, LSR1) see
y = ∇F_{B_{k+1}}(w_{k+1}) − ∇F_{B_k}(w_k), a difference over two batches (noisy, as in plain stochastic LBFGS).

The data is read from the local cache only (never the network): ``sqn-ray data fetch mnist`` first.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data import DataNotFetchedError
from ..data import load as load_dataset
from ..objective import AutogradOracle, module_objective_fun
from . import Problem
from .mlp import MLPOracle, mlp_logits, param_count
from .batches import SharedBackends
from .batches import SubsampledOracle  # noqa: F401 - its earlier home (the MNIST problems' batches)
from .shards import Shard, chunked_oracle, shard_bounds

__all__ = ["MNIST_PROBLEMS", "FASHION_PROBLEMS", "MNISTProblem", "make_mnist_problem", "parse_mnist_name",
           "SubsampledOracle", "MNISTShards", "make_cnn", "MLP_SIZES", "ACTIVATION", "CHUNK_SIZE"]

MNIST_PROBLEMS = ("mnist-mlp", "mnist-cnn")
FASHION_PROBLEMS = ("fashion-mnist-mlp", "fashion-mnist-cnn")
MLP_SIZES = (784, 100, 10)
ACTIVATION = "tanh"
CHUNK_SIZE = 10_000  # rows per chunk of the full-batch oracles (bounds the memory of the batched passes)
_NAME = re.compile(r"^(?P<dataset>mnist|fashion-mnist)-(?P<model>mlp|cnn)(?:-b(?P<batch>[1-9][0-9]*))?$")


@dataclass(frozen=True)
class MNISTProblem(Problem):
    """A :class:`~sqn_ray.problems.Problem` with the held-out test set: ``test_accuracy(w)``, ``test_loss(w)``,
    and ``metrics(w)`` (both, as a dict, for a study's records). ``batch_size`` None: full batch."""

    test_accuracy: Callable[[torch.Tensor], float] = None
    test_loss: Callable[[torch.Tensor], float] = None
    metrics: Callable[[torch.Tensor], dict] = None
    dataset: str = "mnist"
    model: str = "mlp"
    batch_size: int | None = None
    curvature_batch_size: int | None = None
    recipe: dict = None

    def shard(self, rank: int, world: int) -> "MNISTProblem":
        """The problem on shard ``rank`` of ``world`` of the training rows (full batch only; see
        :func:`make_mnist_problem`), for a data-parallel trial."""
        return _rebuild({**self.recipe, "shard": (int(rank), int(world))})

    def __reduce__(self):
        """Pickle the recipe, not the arrays: unpickling (e.g. in a Ray actor) rebuilds the problem from that
        machine's local cache, so shipping a problem costs bytes, not the 60,000 images."""
        return (_rebuild, (self.recipe,))


def parse_mnist_name(name: str) -> tuple[str, str, int | None]:
    """(dataset, model, batch size or None) of a problem name such as ``mnist-mlp`` or ``mnist-cnn-b1000``."""
    m = _NAME.match(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"unknown MNIST problem {name!r}; valid: {', '.join(MNIST_PROBLEMS + FASHION_PROBLEMS)}, "
                         "optionally with a batch-size suffix such as mnist-mlp-b1000")
    return m["dataset"], m["model"], int(m["batch"]) if m["batch"] else None


# -------------------------------------------------------------------------------------------- the data
@lru_cache(maxsize=4)
def _arrays(dataset: str, data_dir: str | None):
    try:
        return load_dataset(dataset, data_dir)
    except DataNotFetchedError as e:
        raise DataNotFetchedError(f"{e} (needed by the {dataset} problems; the problems never download)") from None


def _inputs(images: np.ndarray, model: str, dtype, device) -> torch.Tensor:
    x = torch.from_numpy(images).to(dtype=dtype, device=device).div_(255.0)
    return x.reshape(len(images), -1) if model == "mlp" else x.reshape(len(images), 1, 28, 28)


def _labels(labels: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(labels.astype(np.int64)).to(device)


# -------------------------------------------------------------------------------------------- the models
def make_cnn() -> torch.nn.Module:
    """The small conv net of ``mnist-cnn`` (parameters laid out in ``named_parameters`` order)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 5, stride=2), torch.nn.Tanh(),     # 8 × 12 × 12
        torch.nn.Conv2d(8, 16, 5, stride=2), torch.nn.Tanh(),    # 16 × 4 × 4
        torch.nn.Flatten(), torch.nn.Linear(256, 10))


def _param_shapes(model: str) -> list[tuple[int, ...]]:
    if model == "mlp":
        out = []
        for p, q in zip(MLP_SIZES[:-1], MLP_SIZES[1:]):
            out += [(p, q), (q,)]  # MLPOracle layout: W_l (p × q, fan-in p) row-major, then b_l
        return out
    return [tuple(p.shape) for p in make_cnn().parameters()]


def _fan_in(shape: tuple[int, ...], model: str) -> int:
    if model == "mlp":
        return shape[0]
    return math.prod(shape[1:])  # torch layout: (out, in, kh, kw) or (out, in)


def lecun_init(model: str, dtype, device) -> Callable[[int], torch.Tensor]:
    """``init(seed)``: weights N(0, 1/fan_in), biases 0, drawn in float64 on the host, then cast and moved."""
    shapes = _param_shapes(model)

    def init(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(int(seed))
        parts = []
        for shape in shapes:
            if len(shape) == 1:
                parts.append(torch.zeros(shape[0], dtype=torch.float64))
            else:
                std = 1.0 / math.sqrt(_fan_in(shape, model))
                parts.append(torch.randn(math.prod(shape), generator=gen, dtype=torch.float64) * std)
        return torch.cat(parts).to(dtype=dtype, device=device)

    return init


class _Model:
    """Oracles, logits and loss of one model on given data (tensors already on the device, in the dtype)."""

    def __init__(self, model: str, dtype, device):
        self.model, self.dtype, self.device = model, dtype, torch.device(device)
        if model == "mlp":
            self.dim = param_count(MLP_SIZES)
        else:
            self.module = make_cnn().to(device)
            self.dim = sum(p.numel() for p in self.module.parameters())
        # AutogradOracle backends: on a CPU the conv net is FLOP-bound and the batched paths lose (1,024 images,
        # m = 16, one thread: 16 HVPs 1.03 s looped vs 1.46 s batched; 16 gradients 0.35 s vs 0.61 s with vmap),
        # so loop over one reused graph; elsewhere probe once on the first chunk/batch and reuse the choice
        choice = "loop" if self.device.type == "cpu" else "auto"
        self.backends = {"hvp_backend": choice, "grads_backend": choice}

    def oracle(self, X: torch.Tensor, y: torch.Tensor):
        if self.model == "mlp":
            return MLPOracle(MLP_SIZES, ACTIVATION, X, y, self.dtype, self.device)
        fun, _ = module_objective_fun(self.module, F.cross_entropy, X, y)
        return SharedBackends(AutogradOracle(fun, self.dim, self.dtype, self.device, **self.backends), self.backends)

    def fun(self, X, y) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.model == "mlp":
            return lambda w: F.cross_entropy(mlp_logits(w, MLP_SIZES, ACTIVATION, X), y)
        return module_objective_fun(self.module, F.cross_entropy, X, y)[0]

    def logits(self, w: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.model == "mlp":
                return mlp_logits(w, MLP_SIZES, ACTIVATION, X)
            names = [n for n, _ in self.module.named_parameters()]
            shapes = [p.shape for _, p in self.module.named_parameters()]
            chunks = torch.split(w, [math.prod(s) for s in shapes])
            params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
            return torch.func.functional_call(self.module, params, (X,))

    def evaluate(self, w: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
                 chunk: int = CHUNK_SIZE) -> tuple[float, float]:
        """(mean loss, accuracy) over all rows, in chunks."""
        loss, correct = 0.0, 0
        for lo in range(0, len(y), chunk):
            z = self.logits(w, X[lo:lo + chunk])
            yy = y[lo:lo + chunk]
            loss += float(F.cross_entropy(z, yy, reduction="sum"))
            correct += int((z.argmax(1) == yy).sum())
        return loss / len(y), correct / len(y)


# -------------------------------------------------------------------------------------------- the problems
def make_mnist_problem(name: str, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                       batch_size: int | None = None, curvature_batch_size: int | None = None,
                       data_dir: str | None = None, chunk_size: int = CHUNK_SIZE,
                       shard: tuple[int, int] | None = None) -> MNISTProblem:
    """The problem ``name`` (``mnist-mlp``, ``mnist-cnn``, their ``fashion-`` twins, or any of them with a
    ``-b<N>`` batch-size suffix) on the cached data. Raises :class:`~sqn_ray.data.DataNotFetchedError` telling
    the user to run ``sqn-ray data fetch mnist`` when the data is not in the cache.

    ``shard=(rank, world)``: the problem on shard ``rank`` of ``world`` of the training rows only (the block
    :func:`~sqn_ray.problems.shards.shard_bounds` gives it; full batch only), for a data-parallel trial: its
    oracle, ``accuracy`` and ``n_samples`` are the shard's, the test metrics the whole test set's."""
    dataset, model, suffix_batch = parse_mnist_name(name)
    if shard is not None and (batch_size is not None or suffix_batch is not None):
        raise ValueError(f"{name}: a data-parallel shard is full batch (every worker's rows, every iteration); "
                         f"a mini-batch problem runs with workers: 1")
    if batch_size is not None and suffix_batch is not None and batch_size != suffix_batch:
        raise ValueError(f"{name!r} names batch size {suffix_batch} but batch_size={batch_size} was given")
    batch_size = batch_size if batch_size is not None else suffix_batch
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype {dtype!r} is not supported; use torch.float32 or torch.float64")
    device = torch.device(device)
    arrays = _arrays(dataset, None if data_dir is None else str(data_dir))
    rows = slice(None) if shard is None else slice(*shard_bounds(len(arrays.train_labels), shard[1], shard[0]))
    X = _inputs(arrays.train_images[rows], model, dtype, device)
    y = _labels(arrays.train_labels[rows], device)
    Xt = _inputs(arrays.test_images, model, dtype, device)
    yt = _labels(arrays.test_labels, device)
    net = _Model(model, dtype, device)
    n = len(y)
    init = lecun_init(model, dtype, device)
    if batch_size is None:
        if curvature_batch_size is not None:
            raise ValueError("curvature_batch_size needs a batch_size (the full-batch problem has no batches)")
        oracle = chunked_oracle(lambda lo, hi: net.oracle(X[lo:hi], y[lo:hi]), n, chunk_size)
        problem_init = init
    else:
        oracle = SubsampledOracle(lambda idx: net.oracle(X[idx.to(device)], y[idx.to(device)]), n, batch_size,
                                  dim=net.dim, dtype=dtype, device=device, curvature_batch_size=curvature_batch_size)

        def problem_init(seed: int) -> torch.Tensor:
            oracle.reseed(seed)  # the batch stream restarts with the run: batches depend on the seed only
            return init(seed)

    def accuracy(w):
        return net.evaluate(w, X, y)[1]

    def test_metrics(w):
        loss, acc = net.evaluate(w, Xt, yt)
        return {"test_loss": loss, "test_accuracy": acc}

    label = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}[dataset]
    if shard is not None:
        label += f" (shard {shard[0]} of {shard[1]})"
    arch = ("MLP 784-100-10 (tanh)" if model == "mlp" else
            "CNN conv5x5/2(1->8)-tanh-conv5x5/2(8->16)-tanh-linear(256->10)")
    batching = ("full batch" if batch_size is None else
                f"mini-batches of {batch_size} (curvature pairs on {oracle.curvature_batch_size})")
    return MNISTProblem(
        name=name, dim=net.dim, n_samples=n, dtype=dtype, device=device, oracle=oracle, fun=net.fun(X, y),
        init=problem_init, accuracy=accuracy, target_accuracy=None,
        description=f"{label} {n} training images, {arch}, d = {net.dim}, softmax cross-entropy, {batching}",
        test_accuracy=lambda w: test_metrics(w)["test_accuracy"], test_loss=lambda w: test_metrics(w)["test_loss"],
        metrics=test_metrics, dataset=dataset, model=model, batch_size=batch_size,
        curvature_batch_size=None if batch_size is None else oracle.curvature_batch_size,
        recipe={"name": name, "dtype": str(dtype).removeprefix("torch."), "device": str(device),
                "batch_size": batch_size, "curvature_batch_size": curvature_batch_size,
                "data_dir": None if data_dir is None else str(data_dir), "chunk_size": chunk_size,
                **({"shard": tuple(shard)} if shard is not None else {})})


def _rebuild(recipe: dict) -> MNISTProblem:
    recipe = dict(recipe)
    return make_mnist_problem(recipe.pop("name"), dtype=getattr(torch, recipe.pop("dtype")), **recipe)


# -------------------------------------------------------------------------------------------- data-parallel
@dataclass
class MNISTShards:
    """Picklable shard builder for :class:`~sqn_ray.distributed.DataParallelOracle`: each worker reads the cached
    data from ITS OWN disk (``sqn-ray data fetch mnist`` on every node, or a shared ``data_dir``), keeps the
    contiguous block of training rows :func:`~sqn_ray.problems.shards.shard_bounds` gives it, and builds the
    problem's full-batch oracle on it (chunked). ``n_train`` limits the training set to its first rows."""

    name: str = "mnist-mlp"
    dtype: str = "float64"
    data_dir: str | None = None
    chunk_size: int | None = CHUNK_SIZE
    n_train: int | None = None

    def __call__(self, rank: int, world: int, device: str = "cpu") -> Shard:
        dataset, model, batch = parse_mnist_name(self.name)
        if batch is not None:
            raise ValueError(f"{self.name}: a data-parallel shard is full batch; drop the -b{batch} suffix")
        dtype = getattr(torch, self.dtype)
        arrays = _arrays(dataset, self.data_dir)
        n = len(arrays.train_labels) if self.n_train is None else min(self.n_train, len(arrays.train_labels))
        lo, hi = shard_bounds(n, world, rank)
        X = _inputs(arrays.train_images[lo:hi], model, dtype, device)
        y = _labels(arrays.train_labels[lo:hi], device)
        net = _Model(model, dtype, device)

        def rows(a, b):
            return net.oracle(X[a:b], y[a:b])

        return Shard(oracle=chunked_oracle(rows, hi - lo, self.chunk_size), n=hi - lo, rows=rows)


