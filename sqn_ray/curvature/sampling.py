"""Algorithm 1 of the paper: sample m curvature pairs (S, Y) around the current iterate.

Directions σ_i ~ N(0, I_d) (not normalised, as in the reference code: ‖s_i‖ ≈ r√d), or normalised to
‖s_i‖ = r, or supplied by a user callable ``directions(d, m) -> Tensor[d, m]`` (to replay an external
random stream). Then s_i = r σ_i and

* Option II (``sampling="hvp"``):       Y = ∇²F(w) S     (m Hessian-vector products, exact);
* Option I  (``sampling="grad-diff"``): y_i = ∇F(w + s_i) − ∇F(w)   (m gradients, finite differences).

Randomness comes only from the explicit ``torch.Generator`` passed in, always drawn in float64 on the CPU
and then cast and moved, so that one seed gives the same directions in float32 and float64 and on any
device (common random numbers across grid cells).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..objective import Objective

SAMPLINGS = ("hvp", "grad-diff")
DirectionSampler = Callable[[int, int], torch.Tensor]


def gaussian_directions(d: int, m: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(d, m, dtype=torch.float64, generator=generator)


def sample_steps(d: int, m: int, radius: float, *, generator: torch.Generator | None,
                 directions: DirectionSampler | None, normalize: bool, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """S = r · σ (columns), σ from ``directions`` or N(0, I), optionally normalised to unit length."""
    sigma = directions(d, m) if directions is not None else gaussian_directions(d, m, generator)
    if not torch.is_tensor(sigma) or tuple(sigma.shape) != (d, m):
        raise ValueError(f"directions(d={d}, m={m}) must return a tensor of shape ({d}, {m}), "
                         f"got {type(sigma).__name__} of shape {tuple(getattr(sigma, 'shape', ()))}")
    sigma = sigma.to(dtype=dtype, device=device)
    if normalize:
        sigma = sigma / sigma.norm(dim=0, keepdim=True)
    return radius * sigma


def sample_pairs(objective: Objective, w: torch.Tensor, g: torch.Tensor, S: torch.Tensor,
                 sampling: str) -> torch.Tensor:
    """Y for the steps S at w (Algorithm 1, Option I or II)."""
    if sampling == "hvp":
        return objective.hvp(w, S)
    if sampling == "grad-diff":
        return objective.grads_at(w[:, None] + S) - g[:, None]
    raise ValueError(f"sampling={sampling!r} is not one of {SAMPLINGS}")
