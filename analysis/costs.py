"""The cost claim, measured: sampled / classical cost per iteration at equal memory m.

The poster (Berahas, Jahani & Takáč, OPT 2019) claims that "the per-iteration cost of the sampled quasi-Newton
methods is comparable to that of the classical limited-memory variants" (O(nd) for m ≪ n, d) and that the m
oracle calls of the pair sampling are independent, hence parallel. :func:`cost_ratios` states it as numbers:
for each problem and memory m, S-LSR1 against LSR1 and S-LBFGS against LBFGS at the *same* m (Option I and II of
the sampled method apart), the median over trials of

* wall seconds per iteration and per accepted step (the optimizer's clock, ``wall_time``, differenced per
  iteration; an accepted step is an iteration whose ``accepted`` flag is set),
* gradient-equivalents per iteration and per accepted step (``grad_equivalents``: n_grad + n_hvp + ½ × loss-only
  evaluations),

and their ratios sampled / classical (ratio of the two medians), beside

* the *poster's model* ratio: the poster's cost formulas (``nd + mnd + nd + κ_tr·md`` for S-LSR1 against
  ``nd + nd + κ_tr·md`` for LSR1, ``nd + mnd + 4md + κ_ls·nd`` against ``nd + 4md + κ_ls·nd`` for the LBFGS pair;
  :data:`analysis.tables.POSTER`) at the problem's n and d (the results' ``sqn_ray.problems`` metadata), the
  common m and each method's measured mean κ (``inner_iters``: CG iterations or line-search evaluations);
* a **projection, not a measurement**, of the ratio when the m pair products run in parallel: the sampled
  method's measured pair-sampling time ``t_pairs`` (its m Hessian-vector products, Option II, or m gradients,
  Option I, and whatever else that phase does) divided by m, as if m workers each computed one product at the
  cost of one m-th of the phase with no communication, synchronisation or start-up cost; every other phase of
  the iteration (new gradient, model, TR / line search, other) and the whole classical iteration as measured.
  That is the ideal case, a lower bound on the ratio a parallel implementation could reach; and the poster's
  model with its mnd term replaced by nd (one product's depth), also a projection.

"Comparable" is given a number here: a ratio of at most :data:`COMPARABLE` (2×).

    >>> from analysis import costs, load_results
    >>> costs.cost_ratios(load_results("results/paper-toy").comparison())
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import tables as T
from .load import StudyResults

__all__ = ["PAIRS", "COMPARABLE", "PROJECTION", "trial_costs", "cost_ratios", "COLUMNS"]

#: sampled method -> its classical limited-memory twin (the same model and globalization, pairs from the path)
PAIRS = {"s-lsr1": "lsr1", "s-lbfgs": "lbfgs"}
#: "comparable" cost: a sampled / classical ratio of at most this
COMPARABLE = 2.0
#: what the projected columns assume, in words (the report's table title and the findings quote it)
PROJECTION = ("projection, not a measurement: the sampled method's pair-sampling time t_pairs divided by m (its m "
              "HVPs, or m gradients under Option I, on m workers with perfect scaling and no communication), every "
              "other phase and the classical method as measured")
_OPTION = {"hvp": "Option II (hvp)", "grad-diff": "Option I (grad-diff)"}

COLUMNS = [
    "problem", "pair", "Option", "m", "trials (sampled)", "trials (classical)", "device",
    "ms / iteration, sampled", "ms / iteration, classical", "ratio / iteration",
    "ms / accepted step, sampled", "ms / accepted step, classical", "ratio / accepted step",
    "grad-eq / iteration, sampled", "grad-eq / iteration, classical", "grad-eq ratio / iteration",
    "grad-eq / accepted step, sampled", "grad-eq / accepted step, classical", "grad-eq ratio / accepted step",
    "κ, sampled", "κ, classical", "n", "d", "poster's model ratio",
    "projected ratio / iteration (t_pairs / m)", "projected ratio / accepted step (t_pairs / m)",
    "projected poster's model ratio (mnd → nd)",
]


@T._memo
def trial_costs(study: StudyResults) -> pd.DataFrame:
    """One row per trial of a sampled method or its classical twin (:data:`PAIRS`), over its iterations ≥ 1:
    problem, method, memory m, sampling (Option; ``hvp`` where not recorded), device, iterations, accepted
    steps, seconds and gradient-equivalents per iteration and per accepted step, mean κ (``inner_iters``),
    mean ``t_pairs`` per iteration and the projected seconds (``t_pairs`` / m, see the module) per iteration
    and per accepted step (a classical method's projection is its measurement)."""
    per = T.iteration_costs(study)
    per = per[per["method"].isin([*PAIRS, *PAIRS.values()])]
    cols = ["trial_id", "problem", "method", "memory", "sampling", "device", "iterations", "accepted steps",
            "s / iteration", "s / accepted step", "ge / iteration", "ge / accepted step", "kappa",
            "t_pairs / iteration", "projected s / iteration", "projected s / accepted step"]
    if per.empty:
        return pd.DataFrame(columns=cols)
    g = per.groupby("trial_id", sort=False)
    df = g.agg(problem=("problem", "first"), method=("method", "first"), iterations=("dt", "size"),
               dt=("dt", "sum"), dge=("dge", "sum"), t_pairs=("t_pairs", "sum"), kappa=("kappa", "mean"),
               accepted=("accepted", lambda a: a.sum() if a.notna().any() else np.nan)).reset_index()
    info = study.trials.drop_duplicates("trial_id").set_index("trial_id")
    for c in ("memory", "sampling", "device"):
        df[c] = df["trial_id"].map(info[c]) if c in info else np.nan
    df["memory"] = pd.to_numeric(df["memory"], errors="coerce")
    sampled = df["method"].isin(list(PAIRS))
    df["sampling"] = df["sampling"].where(~sampled | df["sampling"].notna(), "hvp").where(sampled)
    saved = df["t_pairs"] * (1.0 - 1.0 / df["memory"])  # the m products ideally parallel: one m-th of t_pairs
    projected = df["dt"] - saved.where(sampled, 0.0)
    steps = df["accepted"].where(df["accepted"] > 0)  # no accepted step: no cost per accepted step
    out = df.assign(**{"accepted steps": df["accepted"], "s / iteration": df["dt"] / df["iterations"],
                       "s / accepted step": df["dt"] / steps, "ge / iteration": df["dge"] / df["iterations"],
                       "ge / accepted step": df["dge"] / steps, "t_pairs / iteration": df["t_pairs"] / df["iterations"],
                       "projected s / iteration": projected / df["iterations"],
                       "projected s / accepted step": projected / steps})
    return out[cols]


def _median(s: pd.Series) -> float:
    s = pd.to_numeric(s, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
    return float(s.median()) if len(s) else math.nan


def _ratio(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else math.nan


@T._memo
def cost_ratios(study: StudyResults) -> pd.DataFrame:
    """The cost claim as measured ratios: per problem, pair (S-LSR1 / LSR1, S-LBFGS / LBFGS), Option of the
    sampled method and memory m that both methods of the pair ran at (equal m only; other options, e.g. r,
    pooled), the median over trials of each method's wall milliseconds and gradient-equivalents per iteration
    and per accepted step, the ratios sampled / classical of those medians, each method's median mean κ, the
    poster's model ratio at the problem's n, d, that m and the measured κ, and the projected ratios with the m
    pair products ideally parallel (:data:`PROJECTION`; projections, not measurements: see the module).

    Args:
        study: the results to measure (the report passes ``results.comparison()``; the whole results of a tuned
            study pool its tuning trials too, which ran many m).

    Returns:
        A DataFrame with the columns :data:`COLUMNS`, one row per (problem, pair, Option, m); empty when no
        pair ran at a common m.
    """
    tc = trial_costs(study)
    rows = []
    order = {p: i for i, p in enumerate(study.problems)}
    for problem in sorted(tc["problem"].unique(), key=lambda p: order.get(p, 99)):
        p = tc[tc["problem"] == problem]
        size = study.problem_size(problem)
        n, d = size["n"], size["d"]
        for sampled, classical in PAIRS.items():
            s_all, c_all = p[p["method"] == sampled], p[p["method"] == classical]
            for sampling in sorted(s_all["sampling"].dropna().unique(), key=lambda o: (o != "grad-diff", o)):
                s_opt = s_all[s_all["sampling"] == sampling]
                for m in sorted(set(s_opt["memory"].dropna()) & set(c_all["memory"].dropna())):
                    rows.append(_row(problem, sampled, classical, sampling, m, s_opt[s_opt["memory"] == m],
                                     c_all[c_all["memory"] == m], n, d))
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(problem, sampled, classical, sampling, m, s: pd.DataFrame, c: pd.DataFrame, n, d) -> dict:
    med = {k: (_median(s[k]), _median(c[k])) for k in ("s / iteration", "s / accepted step", "ge / iteration",
                                                       "ge / accepted step", "kappa", "projected s / iteration",
                                                       "projected s / accepted step")}
    (ks, kc), mm = med["kappa"], float(m)
    sizes = n is not None and d is not None
    cost_s, cost_c = T.POSTER[sampled][2], T.POSTER[classical][2]
    poster = _ratio(cost_s(n, d, mm, ks), cost_c(n, d, mm, kc)) if sizes else math.nan
    # the poster's sampled cost has one mnd term (the m products); in parallel its depth is one product's, nd
    parallel = _ratio(cost_s(n, d, mm, ks) - (mm - 1) * n * d, cost_c(n, d, mm, kc)) if sizes else math.nan
    devices = sorted({str(v) for v in pd.concat([s["device"], c["device"]]).dropna()})
    return {"problem": problem, "pair": f"{T.POSTER[sampled][0]} / {T.POSTER[classical][0]}",
            "Option": _OPTION.get(sampling, sampling), "m": int(m) if float(m).is_integer() else m,
            "trials (sampled)": len(s), "trials (classical)": len(c), "device": ", ".join(devices) or "–",
            "ms / iteration, sampled": 1e3 * med["s / iteration"][0],
            "ms / iteration, classical": 1e3 * med["s / iteration"][1],
            "ratio / iteration": _ratio(*med["s / iteration"]),
            "ms / accepted step, sampled": 1e3 * med["s / accepted step"][0],
            "ms / accepted step, classical": 1e3 * med["s / accepted step"][1],
            "ratio / accepted step": _ratio(*med["s / accepted step"]),
            "grad-eq / iteration, sampled": med["ge / iteration"][0],
            "grad-eq / iteration, classical": med["ge / iteration"][1],
            "grad-eq ratio / iteration": _ratio(*med["ge / iteration"]),
            "grad-eq / accepted step, sampled": med["ge / accepted step"][0],
            "grad-eq / accepted step, classical": med["ge / accepted step"][1],
            "grad-eq ratio / accepted step": _ratio(*med["ge / accepted step"]),
            "κ, sampled": ks, "κ, classical": kc, "n": n, "d": d, "poster's model ratio": poster,
            "projected ratio / iteration (t_pairs / m)": _ratio(med["projected s / iteration"][0],
                                                                med["s / iteration"][1]),
            "projected ratio / accepted step (t_pairs / m)": _ratio(med["projected s / accepted step"][0],
                                                                    med["s / accepted step"][1]),
            "projected poster's model ratio (mnd → nd)": parallel}
