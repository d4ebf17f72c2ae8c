"""The paper's toy classification problem (Berahas, Jahani & Takáč; OptMLGroup/SQN reference code).

Data (deterministic, no noise): x_j = j/50 for j = 0..49,

    class 1: (x_j, sin(8 x_j) + 0.8),        class 0: (x_j, sin(8 x_j) − 0.8),

100 points, the 50 of class 1 first. The two sine bands are not linearly separable, so the nets need their
hidden layers. Nets: sigmoid hidden layers, a linear 2-unit output, softmax cross-entropy averaged over the
100 points; flat parameters layer by layer (W row-major, then b), see :mod:`sqn_ray.problems.mlp`.

    small  [2, 2, 2, 2, 2, 2, 2]      d = 36
    medium [2, 4, 8, 8, 4, 2, 2]      d = 176
    large  [2, 10, 20, 20, 10, 2, 2]  d = 908

(The poster's "2-4-8-8-4-2" labels omit the 2-unit output layer; only this reading gives 36/176/908.)
"""
from __future__ import annotations

import math

import torch

from .mlp import MLPOracle, mlp_loss, plain_sigmoid_net_fun

TOY_SIZES: dict[str, tuple[int, ...]] = {
    "small": (2, 2, 2, 2, 2, 2, 2),
    "medium": (2, 4, 8, 8, 4, 2, 2),
    "large": (2, 10, 20, 20, 10, 2, 2),
}
TOY_ACTIVATION = "sigmoid"
N_PER_CLASS = 50
OFFSET = 0.8  # vertical half-gap between the two sine bands
FREQUENCY = 8.0
PLATEAU_LOSS = math.log(2.0)  # loss where both classes get probability 1/2 (e.g. all weights zero)


def toy_data(dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"):
    """The toy data set, the same points in every dtype and on every device.

    Returns:
        (X, labels): X of shape (100, 2) in ``dtype`` with rows (x_j, sin(8 x_j) ± 0.8); labels (100,) int64,
        1 for the first 50 points (the + band), 0 for the rest.
    """
    # Built in float64 on the host and then cast, so every dtype/device sees the same rounded points.
    x = torch.arange(N_PER_CLASS, dtype=torch.float64) / N_PER_CLASS
    wave = torch.sin(FREQUENCY * x)
    X = torch.stack([torch.cat([x, x]), torch.cat([wave + OFFSET, wave - OFFSET])], dim=1)
    labels = torch.cat([torch.ones(N_PER_CLASS, dtype=torch.long), torch.zeros(N_PER_CLASS, dtype=torch.long)])
    return X.to(dtype=dtype, device=device), labels.to(device)


def toy_sizes(size: str) -> tuple[int, ...]:
    """Layer widths of the "small", "medium" or "large" toy net."""
    try:
        return TOY_SIZES[size]
    except KeyError:
        raise ValueError(f"toy net size {size!r} is not one of {tuple(TOY_SIZES)}") from None


def toy_oracle(size: str, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> MLPOracle:
    """The hand-batched oracle of a toy net.

    Args:
        size: ``"small"``, ``"medium"`` or ``"large"`` (:data:`TOY_SIZES`).
        dtype, device: what it computes in and on.

    Returns:
        An :class:`~sqn_ray.problems.mlp.MLPOracle` of F on the toy data (d = 36, 176 or 908).

    Raises:
        ValueError: for an unknown ``size``.
    """
    X, labels = toy_data(dtype, device)
    return MLPOracle(toy_sizes(size), TOY_ACTIVATION, X, labels, dtype, device)


def toy_fun(size: str, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"):
    """The plain definition of a toy net's F.

    Args:
        size: ``"small"``, ``"medium"`` or ``"large"`` (:data:`TOY_SIZES`).
        dtype, device: those of the data (and of the w it expects).

    Returns:
        ``fun(w) -> F(w)`` (0-dim tensor) for flat w of shape (d,), autograd- and vmap-differentiable.

    Raises:
        ValueError: for an unknown ``size``.
    """
    X, labels = toy_data(dtype, device)
    sizes = toy_sizes(size)

    def fun(w: torch.Tensor) -> torch.Tensor:
        return mlp_loss(w, sizes, TOY_ACTIVATION, X, labels)

    return fun


def toy_user_fun(size: str = "large", dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"):
    """The toy net's F written as a user writes it (:func:`~sqn_ray.problems.mlp.plain_sigmoid_net_fun` on the
    toy data): what the generic oracle's whole-run figures are measured on, beside the hand-batched oracle."""
    X, labels = toy_data(dtype, device)
    return plain_sigmoid_net_fun(toy_sizes(size), X, labels)
