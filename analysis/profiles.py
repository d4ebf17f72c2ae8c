"""Performance profiles (Dolan & Moré 2002) and data profiles (Moré & Wild 2009) of a study's solvers.

The optimization community compares solvers on a set of problem instances this way instead of by averages
that one hard instance can dominate. Here an *instance* is a (problem, seed) pair (the seed fixes the initial
point), a *solver* a configuration (``config``: method + the options that vary), and the cost of a solver on an
instance what it spent until it first met the convergence test: iterations, gradient-equivalents, epochs or
wall time; +inf where it never did.

* **performance profile** ρ_s(τ) = the fraction of instances on which solver s is within a factor τ of the best
  solver on that instance (ratio r_{p,s} = t_{p,s} / min_s t_{p,s}); ρ_s(1) is how often s is the fastest,
  ρ_s(∞) how often it solves at all.
* **data profile** d_s(κ) = the fraction of instances solver s solves within a budget of κ cost units
  (``per_dimension=True``: κ units of (d + 1), Moré & Wild's simplex-gradient normalisation).

Convergence tests: ``"target"`` (the study's own: the trial reached its target accuracy or stop-rule loss; the
``*_to_target`` columns of trials.parquet), or a number τ ∈ (0, 1): Moré & Wild's test on the loss,
F(x0) − F(x) ≥ (1 − τ)(F(x0) − F_L), F_L the lowest loss any solver reached on that instance (computed from
the iteration rows).

    >>> from analysis import load_results, profiles
    >>> study = load_results("results/paper-toy")
    >>> costs = profiles.instance_costs(study, cost="grad_equivalents")
    >>> profiles.performance_profile(costs)          # tidy: tau, solver, fraction
    >>> profiles.plot(study).savefig("profiles.png")
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .load import StudyResults

__all__ = ["COSTS", "instance_costs", "performance_profile", "data_profile", "plot"]

#: cost name -> (column of trials.parquet at the target, column of iterations.parquet)
COSTS = {
    "iterations": ("iters_to_target", "iteration"),
    "grad_equivalents": ("grad_equivalents_to_target", "grad_equivalents"),
    "wall_time": ("wall_time_to_target", "wall_time"),
    "epochs": (None, "epochs"),
}
INSTANCE = ["problem", "seed"]


def _check_cost(cost: str) -> None:
    if cost not in COSTS:
        raise ValueError(f"cost={cost!r} is not one of {tuple(COSTS)}")


def instance_costs(study: "StudyResults", cost: str = "grad_equivalents", test: str | float = "target",
                   ) -> pd.DataFrame:
    """Cost of every solver (config) on every instance (problem, seed) until its first success.

    Args:
        study: the study's results (:func:`analysis.load_results`).
        cost: one of :data:`COSTS`.
        test: ``"target"`` (the study's own target) or τ in (0, 1) (Moré & Wild's loss test, see the module).

    Returns:
        A DataFrame indexed by (problem, seed), one column per config, values the cost (+inf: not solved).
        Several trials of one config on one instance (a grid's other options) keep the cheapest.

    Raises:
        ValueError: for an unknown ``cost``, a ``test`` that is neither ``"target"`` nor in (0, 1), or
            ``cost="epochs"`` with ``test="target"`` (trials.parquet records no epochs at the target).
    """
    _check_cost(cost)
    trials = study.trials
    if isinstance(test, str):
        if test != "target":
            raise ValueError(f"test={test!r} is not 'target' or a number in (0, 1)")
        column = COSTS[cost][0]
        if column is None:
            raise ValueError(f"cost={cost!r} has no column at the target; use test=τ (a number in (0, 1))")
        values = trials[column].astype(float).where(trials["solved"].astype(bool))
        frame = trials[INSTANCE + ["config"]].assign(cost=values.fillna(math.inf).to_numpy())
    else:
        tau = float(test)
        if not 0.0 < tau < 1.0:
            raise ValueError(f"test={test!r} is not 'target' or a number in (0, 1)")
        frame = _tolerance_costs(study, cost, tau)
    table = frame.pivot_table(index=INSTANCE, columns="config", values="cost", aggfunc="min")
    order = [c for c in study.configs if c in table.columns]
    return table[order].fillna(math.inf)


def _tolerance_costs(study: "StudyResults", cost: str, tau: float) -> pd.DataFrame:
    """Per trial: the cost at the first row passing Moré & Wild's test with F_L per instance (vectorized)."""
    it = study.iterations
    column = COSTS[cost][1]
    rows = it[["trial_id", "problem", "seed", "iteration", "loss", column]].copy()
    rows["loss"] = rows["loss"].astype(float)
    finite = rows["loss"].where(np.isfinite(rows["loss"]))
    rows["f0"] = rows.groupby("trial_id")["loss"].transform("first")
    best = finite.groupby([rows["problem"], rows["seed"]]).transform("min")
    passed = (rows["f0"] - finite) >= (1.0 - tau) * (rows["f0"] - best)
    passed &= finite.notna()
    hits = rows[passed].groupby("trial_id")[column].first()
    per_trial = study.trials[["trial_id", *INSTANCE, "config"]].copy()
    per_trial["cost"] = per_trial["trial_id"].map(hits).astype(float).fillna(math.inf).to_numpy()
    return per_trial


def performance_profile(costs: pd.DataFrame, taus: np.ndarray | None = None) -> pd.DataFrame:
    """Dolan–Moré profile of a cost table (instances × solvers, as :func:`instance_costs` returns).

    Args:
        costs: positive costs, +inf (or NaN) where a solver failed; an instance no solver solved counts as
            failed for all (it stays in the denominator).
        taus: the ratios to evaluate at (default: every distinct ratio, plus 1, so the steps are exact).

    Returns:
        Tidy DataFrame: ``tau``, ``solver``, ``fraction`` (ρ_s(τ), non-decreasing in τ).
    """
    t = costs.to_numpy(dtype=float)
    t = np.where(np.isnan(t), np.inf, t)
    best = np.min(t, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(np.isfinite(t) & (best > 0), t / best, np.where(np.isfinite(t), 1.0, np.inf))
    if taus is None:
        finite = ratio[np.isfinite(ratio)]
        taus = np.unique(np.concatenate([[1.0], finite]))
    return _fractions(ratio, np.asarray(taus, dtype=float), costs.columns, "tau")


def _fractions(values: np.ndarray, thresholds: np.ndarray, solvers, key: str) -> pd.DataFrame:
    """Tidy (key, solver, fraction): for each solver (column of ``values``, instances × solvers) the fraction
    of instances whose value is ≤ each threshold."""
    n = max(values.shape[0], 1)
    frames = [pd.DataFrame({key: thresholds, "solver": solver,
                            "fraction": (values[:, j][None, :] <= thresholds[:, None]).sum(axis=1) / n})
              for j, solver in enumerate(solvers)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[key, "solver", "fraction"])


def data_profile(costs: pd.DataFrame, kappas: np.ndarray | None = None, dims: pd.Series | None = None,
                 ) -> pd.DataFrame:
    """Moré–Wild data profile: the fraction of instances each solver solves within a budget κ.

    Args:
        costs: as for :func:`performance_profile`.
        kappas: budgets to evaluate at (default: every distinct cost, in the units used).
        dims: the dimension d of each instance's problem, aligned with ``costs``' index (or a mapping
            problem -> d): when given, budgets are in units of d + 1 (Moré & Wild's normalisation).

    Returns:
        Tidy DataFrame: ``kappa``, ``solver``, ``fraction`` (non-decreasing in κ).
    """
    t = costs.to_numpy(dtype=float)
    t = np.where(np.isnan(t), np.inf, t)
    if dims is not None:
        problems = costs.index.get_level_values(0) if isinstance(costs.index, pd.MultiIndex) else costs.index
        d = np.array([float(dims[p]) for p in problems]) if not isinstance(dims, pd.Series) or \
            not dims.index.equals(costs.index) else dims.to_numpy(dtype=float)
        t = t / (d[:, None] + 1.0)
    if kappas is None:
        kappas = np.unique(t[np.isfinite(t)])
    return _fractions(t, np.asarray(kappas, dtype=float), costs.columns, "kappa")


def plot(study: "StudyResults", costs: tuple[str, ...] = ("iterations", "grad_equivalents", "wall_time"),
         test: str | float = "target", max_solvers: int = 12):
    """A figure: one performance profile per cost (log₂ τ axis) and the data profile in gradient-equivalents.

    Solvers beyond ``max_solvers`` (by how often they are fastest) are left out, and the title says so.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * (len(costs) + 1), 3.9), layout="constrained")
    axes = fig.subplots(1, len(costs) + 1)
    kept = None
    for ax, cost in zip(axes, costs):
        table = instance_costs(study, cost, test)
        if kept is None:
            prof = performance_profile(table, taus=np.array([1.0]))
            kept = list(prof.sort_values("fraction", ascending=False).solver[:max_solvers])
        table = table[[c for c in table.columns if c in kept]]
        prof = performance_profile(table)
        for solver, g in prof.groupby("solver", sort=False):
            ax.step(np.log2(g.tau), g.fraction, where="post", label=solver)
        ax.set_xlabel("log₂ τ (within a factor τ of the best)")
        ax.set_title(f"performance profile: {cost.replace('_', '-')}", fontsize=9)
        ax.set_ylim(0, 1.02)
    ax = axes[-1]
    table = instance_costs(study, "grad_equivalents", test)
    table = table[[c for c in table.columns if c in (kept or table.columns)]]
    prof = data_profile(table)
    for solver, g in prof.groupby("solver", sort=False):
        ax.step(g.kappa, g.fraction, where="post", label=solver)
    ax.set_xscale("log")
    ax.set_xlabel("budget κ (gradient-equivalents)")
    ax.set_title("data profile", fontsize=9)
    ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("fraction of (problem, seed) instances")
    axes[-1].legend(fontsize=6, loc="lower right")
    return fig
