"""Spectral tools for the eigenvalue figure: the true Hessian and each method's explicit approximation.

At a point w of a trajectory, the poster compares the spectrum of ∇²F(w) with those of the SR1, LSR1 and
S-LSR1 matrices (and the BFGS family). Here every approximation is built from pairs by the same code the
optimizers use, materialised as a dense float64 matrix (fine for the toy networks, d ≤ 908):

* sampled pairs at w (:func:`sampled_pairs_at`, Algorithm 1 with the method's options),
* path pairs from consecutive iterates of a trajectory (:func:`path_pairs`).
"""
from __future__ import annotations

import numpy as np
import torch

from .curvature.models import gram_blocks, lbfgs_selection
from .curvature.sources import SampledPairs
from .linalg.lbfgs import dense_lbfgs_inverse, lbfgs_gamma
from .linalg.sr1 import CompactSR1, dense_sr1, sr1_filter, sr1_gamma
from .objective import Objective



def dense_hessian(oracle, w: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """∇²F(w) as a symmetric float64 matrix, from blocks of Hessian-vector products."""
    d = w.numel()
    eye = torch.eye(d, dtype=w.dtype, device=w.device)
    H = torch.cat([oracle.hvps(w, eye[:, i:i + chunk]) for i in range(0, d, chunk)], dim=1).double().cpu()
    return 0.5 * (H + H.T)


def sampled_pairs_at(oracle, w: torch.Tensor, *, memory: int = 10, radius: float = 1.0, sampling: str = "hvp",
                     seed: int = 0, normalize: bool = False):
    """The (S, Y) pairs a sampled method draws at ``w`` (the same source its iterations use)."""
    objective = Objective(oracle)
    source = SampledPairs(memory, radius, sampling, normalize, torch.Generator().manual_seed(seed))
    g = objective.value_and_grad(w)[1] if sampling == "grad-diff" else None
    return source.pairs(objective, w, g)


def path_pairs(iterates: torch.Tensor, gradients: torch.Tensor, memory: int | None = None):
    """s_k = w_{k+1} − w_k, y_k = g_{k+1} − g_k from rows of a trajectory (oldest first), the last ``memory``."""
    S = (iterates[1:] - iterates[:-1]).T
    Y = (gradients[1:] - gradients[:-1]).T
    if memory is not None:
        S, Y = S[:, -memory:], Y[:, -memory:]
    return S, Y


def compact_sr1_matrix(S: torch.Tensor, Y: torch.Tensor, *, eps: float = 1e-8, b0: str = "zero") -> torch.Tensor:
    """B of the compact (limited-memory) SR1 model: B0 = 0 (``b0="zero"``, S-LSR1) or γI (``"gamma"``, LSR1)
    plus the pairs kept by the sequential SR1 filter, as the methods build it."""
    S, Y = S.double().cpu(), Y.double().cpu()
    SY, SS, YY, _, _ = gram_blocks(S, Y, torch.zeros(S.shape[0], dtype=torch.float64))
    gamma = 0.0 if b0 == "zero" else sr1_gamma(SY, SS)
    keep = sr1_filter(SY, SS, YY, gamma, eps).kept
    return CompactSR1.from_pairs(S[:, keep], Y[:, keep], gamma).dense()


def dense_sr1_matrix(S: torch.Tensor, Y: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """B of classical SR1: the dense recursion over the pairs in order from B0 = I, with the SR1 safeguard."""
    S, Y = S.double().cpu(), Y.double().cpu()
    return dense_sr1(S, Y, torch.eye(S.shape[0], dtype=torch.float64), eps)[0]


def bfgs_family_matrix(S: torch.Tensor, Y: torch.Tensor, *, eps: float = 1e-8,
                       scale_from: str = "last") -> torch.Tensor:
    """B = H⁻¹ of the BFGS family from the pairs that pass the angle test: H0 = γI scaled by the newest kept
    pair (``scale_from="last"``: L-BFGS and S-LBFGS, rescaled at every iteration) or by the first (``"first"``:
    dense BFGS scales H0 once, before its first update, N&W eq. 6.20); I when no pair passes."""
    S, Y = S.double().cpu(), Y.double().cpu()
    d = S.shape[0]
    SY, SS, YY, _, _ = gram_blocks(S, Y, torch.zeros(d, dtype=torch.float64))
    keep, gamma = lbfgs_selection(SY, SS, YY, eps)
    if keep.size == 0:
        return torch.eye(d, dtype=torch.float64)
    if scale_from == "first":
        gamma = lbfgs_gamma(float(SY[keep[0], keep[0]]), float(YY[keep[0], keep[0]]))
    return torch.linalg.inv(dense_lbfgs_inverse(S[:, keep], Y[:, keep], gamma))


def model_matrix(kind: str, S: torch.Tensor, Y: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """The explicit Hessian approximation B (float64, d×d) that method ``kind`` builds from the pairs.

    The method registry says which builder each method's model is (``MethodSpec.model_matrix``):
    s-lsr1: compact SR1 with B0 = 0; lsr1: B0 = γI; sr1: the dense recursion from B0 = I. The BFGS family is
    built as the inverse-Hessian H and returned as B = H⁻¹ so that all spectra are of Hessian approximations.

    Args:
        kind: a method with an explicit model (:data:`MODEL_KINDS`).
        S, Y: the pairs, shape (d, k) each, oldest first.
        eps: ε of the pair filters.

    Returns:
        B as a dense float64 CPU tensor of shape (d, d).

    Raises:
        ValueError: ``kind`` has no explicit model.
    """
    from .optim.registry import REGISTRY  # the registry imports this module's builders

    spec = REGISTRY.get(kind)
    if spec is None or spec.model_matrix is None:
        raise ValueError(f"kind={kind!r} is not one of {model_kinds()}")
    return spec.model_matrix(S, Y, eps=eps)


def model_kinds() -> tuple[str, ...]:
    """The registered methods with an explicit model matrix, in registry order."""
    from .optim.registry import METHODS, REGISTRY

    return tuple(m for m in METHODS if REGISTRY[m].model_matrix is not None)


def __getattr__(name):  # MODEL_KINDS, the registry's answer (computed on use: the registry imports this module)
    if name == "MODEL_KINDS":
        return model_kinds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def spectrum(matrix: torch.Tensor) -> np.ndarray:
    """Eigenvalues in ascending order."""
    return torch.linalg.eigvalsh(0.5 * (matrix + matrix.T)).numpy()
