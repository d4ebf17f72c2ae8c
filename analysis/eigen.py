"""The data of figure 5: eigenvalue spectra along an S-LSR1 trajectory (the poster's eigenvalue figure).

    sqn-ray eigen --problem toy-small --seed 0 --out results/paper-toy/eigen.parquet

Runs S-LSR1 (``sqn_ray.minimize``) from ``problem.init(seed)`` until the problem's target accuracy (100 % on
the toy networks) or ``max_iters``, then picks three iterates:

* ``start``: iteration 0;
* ``plateau``: the saddle plateau: among iterates before the target with loss within ``plateau_tol`` of ln 2
  (the two-class plateau), the one with the smallest gradient norm; if the run never sits on it, the
  smallest gradient norm among iterates with accuracy below the target;
* ``solution``: the last iterate (the first one at the target accuracy when the run solves the problem).

At each point it writes the eigenvalues (ascending; ``rank`` 1..d) of the true Hessian ∇²F(w) and of six
explicit approximations built by :mod:`sqn_ray.spectral` with the optimizers' own code:

* sampled at the point (Algorithm 1 with the run's m, r and Option; direction seed ``pair_seed + iteration``):
  ``s-lsr1`` (B0 = 0) and ``s-lbfgs``;
* from the trajectory's preceding accepted steps s_k = w_{k+1} − w_k, y_k = ∇F(w_{k+1}) − ∇F(w_k):
  ``lsr1`` (last m pairs, B0 = γI), ``lbfgs`` (last m pairs), ``sr1`` and ``bfgs`` (all pairs, dense).
  At the start there are no pairs: the path matrices are their initial B0.

Everything is deterministic for a given seed: rerunning gives the same file.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .load import LN2

__all__ = ["trajectory", "choose_points", "eigen_frame", "write_eigen", "DEFAULT_OUT"]

DEFAULT_OUT = Path("results") / "eigen" / "eigen.parquet"


def model_kinds() -> tuple[tuple[str, ...], dict[str, bool]]:
    """The method registry's explicit models: the sampled kinds (pairs drawn at the point) and the path kinds,
    each mapped to whether it keeps only the last m pairs (it has a ``memory`` option) or the whole path."""
    from sqn_ray.optim.registry import method_options, methods_of
    from sqn_ray.spectral import model_kinds as explicit

    kinds = explicit()
    sampled = tuple(m for m in methods_of("sampled QN") if m in kinds)
    path = {m: "memory" in method_options(m) for m in methods_of("classical QN") if m in kinds}
    return sampled, path


def trajectory(problem, seed: int = 0, *, memory: int = 10, radius: float = 1.0, sampling: str = "hvp",
               max_iters: int = 1000, **options):
    """Run S-LSR1 and keep every iterate: returns (history with ``accuracy``, iterates [k+1, d],
    gradients [k+1, d]). Gradients are read from the oracle directly (uncounted)."""
    import torch

    import sqn_ray
    from sqn_ray.stopping import StopRules

    rules = StopRules(iterations=max_iters, accuracy=problem.target_accuracy)
    iterates, accuracy = [], []

    def callback(x, record):
        iterates.append(x.detach().clone())
        accuracy.append(float(problem.accuracy(x)))
        return rules.check(record, accuracy=accuracy[-1]) is not None

    result = sqn_ray.minimize(problem.oracle, problem.init(seed), "s-lsr1", **rules.minimize_options(),
                              callback=callback, memory=memory, radius=radius, sampling=sampling, seed=seed, **options)
    history = result.history.iloc[:len(iterates)].copy()
    history["accuracy"] = accuracy
    W = torch.stack(iterates)
    G = torch.stack([problem.oracle.loss_and_grad(w)[1] for w in iterates])
    return history, W, G


def choose_points(history: pd.DataFrame, target: float | None, plateau_tol: float = 0.01) -> dict[str, tuple[int, str]]:
    """{point: (iteration, why)} for start, plateau and solution (see the module docstring)."""
    last = int(history["iteration"].iloc[-1])
    acc = history["accuracy"]
    solved = target is not None and acc.iloc[-1] >= target
    points = {"start": (0, "initial point")}
    inner = history[(history["iteration"] > 0) & (history["iteration"] < last)]
    if target is not None:
        inner = inner[inner["accuracy"] < target]
    on = inner[(inner["loss"] - LN2).abs() <= plateau_tol]
    if len(on):
        row = on.loc[on["grad_norm"].idxmin()]
        why = f"smallest gradient norm among iterates with |loss − ln 2| ≤ {plateau_tol:g}"
    elif len(inner):
        row = inner.loc[inner["grad_norm"].idxmin()]
        why = "smallest gradient norm before the target (the run never sat on the ln 2 plateau)"
    else:
        row = history.iloc[len(history) // 2]
        why = "middle of a trajectory too short to have a plateau"
    points["plateau"] = (int(row["iteration"]), why)
    points["solution"] = (last,
                          "first iterate at the target accuracy" if solved else "last iterate (target not reached)")
    return points


def _distinct_steps(W, G, upto: int):
    """Iterates 0..upto with repeats removed (a rejected trust-region step leaves w unchanged)."""
    import torch

    keep = [0]
    for k in range(1, upto + 1):
        if not torch.equal(W[k], W[keep[-1]]):
            keep.append(k)
    return W[keep], G[keep]


def eigen_frame(problem_name: str = "toy-small", seed: int = 0, *, memory: int = 10, radius: float = 1.0,
                sampling: str = "hvp", max_iters: int = 1000, pair_seed: int | None = None,
                plateau_tol: float = 0.01) -> tuple[pd.DataFrame, dict]:
    """The figure-5 table (one row per point × matrix × eigenvalue) and its metadata."""
    import torch

    from sqn_ray.problems import get_problem
    from sqn_ray.spectral import dense_hessian, model_matrix, path_pairs, sampled_pairs_at, spectrum

    if problem_name not in ("toy-small", "toy-medium", "toy-large", "logistic"):
        from sqn_ray.problems import PROBLEMS

        raise ValueError(f"unknown problem {problem_name!r}; valid names: {', '.join(PROBLEMS)}")
    from sqn_ray import validate_options

    validate_options("s-lsr1", memory=memory, radius=radius, sampling=sampling)  # the registry's own checks
    pair_seed = seed if pair_seed is None else pair_seed
    t0 = time.perf_counter()
    problem = get_problem(problem_name, dtype=torch.float64)
    history, W, G = trajectory(problem, seed, memory=memory, radius=radius, sampling=sampling, max_iters=max_iters)
    points = choose_points(history, problem.target_accuracy, plateau_tol)
    rows = []
    for point, (k, _) in points.items():
        w = W[k]
        rec = history[history["iteration"] == k].iloc[0]
        base = {"problem": problem_name, "seed": seed, "point": point, "iteration": k, "loss": float(rec["loss"]),
                "accuracy": float(rec["accuracy"]), "grad_norm": float(rec["grad_norm"])}
        mats = {"hessian": ("exact", 0, dense_hessian(problem.oracle, w))}
        S, Y = sampled_pairs_at(problem.oracle, w, memory=memory, radius=radius, sampling=sampling,
                                seed=pair_seed + k)
        sampled_kinds, path_kinds = model_kinds()
        for kind in sampled_kinds:
            mats[kind] = ("sampled", S.shape[1], model_matrix(kind, S, Y))
        Wk, Gk = _distinct_steps(W, G, k)
        for kind, limited in path_kinds.items():
            Sp, Yp = path_pairs(Wk, Gk, memory if limited else None)
            mats[kind] = ("path", Sp.shape[1], model_matrix(kind, Sp, Yp))
        for matrix, (source, pairs, M) in mats.items():
            lam = spectrum(M)
            rows += [{**base, "matrix": matrix, "source": source, "pairs": int(pairs), "rank": i + 1,
                      "eigenvalue": float(v)} for i, v in enumerate(lam)]
    df = pd.DataFrame(rows)
    meta = {"problem": problem_name, "seed": seed, "method": "s-lsr1", "memory": memory, "radius": radius,
            "sampling": sampling, "max_iters": max_iters, "pair_seed": pair_seed, "plateau_tol": plateau_tol,
            "trajectory_iterations": int(history["iteration"].iloc[-1]),
            "final_accuracy": float(history["accuracy"].iloc[-1]),
            "points": {p: {"iteration": k, "why": why} for p, (k, why) in points.items()},
            "seconds": round(time.perf_counter() - t0, 3)}
    return df, meta


def write_eigen(path: str | Path = DEFAULT_OUT, **kwargs) -> tuple[Path, pd.DataFrame, dict]:
    """Compute :func:`eigen_frame` and write it atomically to ``path`` with the settings in the metadata."""
    from sqn_ray.io import write_parquet_atomic

    df, meta = eigen_frame(**kwargs)
    try:
        from sqn_ray.study.results import _git_revision, _versions

        extra = {"sqn_ray.versions": _versions(), "sqn_ray.git_revision": _git_revision()}
    except Exception:  # noqa: BLE001 - provenance is best effort (the study layer may be absent)
        extra = {}
    path = write_parquet_atomic(df, path, metadata={"sqn_ray.eigen": meta, **extra})
    return path, df, meta


@functools.lru_cache(maxsize=None)
def library_problem_size(name: str) -> dict[str, Any]:
    """``{"n": samples, "d": parameters, "target": target accuracy}`` of a named problem (None values if the
    problem library does not know it), built from the problem library (this module computes along runs; the
    report's readers take n and d from the results instead)."""
    try:
        from sqn_ray.problems import get_problem

        p = get_problem(name)
        return {"n": int(p.n_samples), "d": int(p.dim), "target": p.target_accuracy}
    except Exception:  # noqa: BLE001 - an unknown or unavailable problem just has no size
        return {"n": None, "d": None, "target": None}
