"""The numbers behind the report: tables computed from a loaded :class:`~analysis.load.StudyResults`.

Every table is a plain DataFrame with readable column names, used by the figures, the findings, the HTML
report and the notebooks alike. "Median" is across seeds (trials of one config); a run that never reached
the target accuracy has no iterations-to-target and is counted in ``solved`` / ``trials`` instead, except in
:func:`sensitivity_table`, where unsolved runs count as ∞ (so a cell is finite only if most seeds solved).
:func:`ranking_table` ranks every config of a problem (best first) and :func:`top_bottom` keeps its best and worst
:data:`TOP_K` for display. Tables are computed with grouped (vectorized) aggregations, so they cost milliseconds at
1,000 trials; inside :func:`cached` (the report) each is computed once per study.

The poster's cost and storage table (Berahas, Jahani & Takáč, OPT 2019), per iteration, with κ_ls the
line-search evaluations and κ_tr the CG iterations of an iteration:

    BFGS    nd + d² + κ_ls·nd            storage d²
    LBFGS   nd + 4md + κ_ls·nd           storage 2md
    S-LBFGS nd + mnd + 4md + κ_ls·nd     storage 2md   (poster: "no extra storage")
    SR1     nd + d² + nd + κ_tr·d²       storage d²
    LSR1    nd + nd + κ_tr·md            storage 2md
    S-LSR1  nd + mnd + nd + κ_tr·md      storage 2md   (poster: "no extra storage")

:func:`theory_table` evaluates it at the problem's n and d, the config's m and the κ measured in the study;
cost / nd is then in the same unit as the measured gradient-equivalents (one gradient ≈ nd).
"""
from __future__ import annotations

import functools
import math
from contextlib import contextmanager

import numpy as np
import pandas as pd

from .load import ANCHORS, LN2, SAMPLED, StudyResults, problem_size  # noqa: F401 - problem_size: its old home

__all__ = ["summary_table", "profile", "sensitivity_table", "radius_invariance", "iteration_costs", "cost_table",
           "theory_table", "anchor_table", "anchor_pairs", "eigen_table", "plateau_table", "POSTER", "PHASES",
           "KINDS", "median_inf", "ranking_table", "top_bottom", "TOP_K", "fmt_cell", "cached"]

#: measured time split of an iteration: record column -> label
PHASES = {"t_grad": "gradient", "t_pairs": "pair sampling", "t_model": "linear algebra (model, direction)",
          "t_search": "line search / TR trial", "t_other": "other"}
#: gradient-equivalents of an iteration by kind of oracle call
KINDS = {"ge_grad": "gradients", "ge_hvp": "Hessian-vector products", "ge_fun": "loss-only evaluations (×½)"}

#: method -> (poster name, cost formula, cost(n, d, m, κ), storage formula, storage(n, d, m), κ kind)
POSTER = {
    "bfgs": ("BFGS", "nd + d² + κ_ls·nd", lambda n, d, m, k: n * d + d * d + k * n * d, "d²",
             lambda n, d, m: d * d, "κ_ls"),
    "lbfgs": ("LBFGS", "nd + 4md + κ_ls·nd", lambda n, d, m, k: n * d + 4 * m * d + k * n * d, "2md",
              lambda n, d, m: 2 * m * d, "κ_ls"),
    "s-lbfgs": ("S-LBFGS", "nd + mnd + 4md + κ_ls·nd", lambda n, d, m, k: n * d + m * n * d + 4 * m * d + k * n * d,
                "2md", lambda n, d, m: 2 * m * d, "κ_ls"),
    "sr1": ("SR1", "nd + d² + nd + κ_tr·d²", lambda n, d, m, k: 2 * n * d + d * d + k * d * d, "d²",
            lambda n, d, m: d * d, "κ_tr"),
    "lsr1": ("LSR1", "nd + nd + κ_tr·md", lambda n, d, m, k: 2 * n * d + k * m * d, "2md",
             lambda n, d, m: 2 * m * d, "κ_tr"),
    "s-lsr1": ("S-LSR1", "nd + mnd + nd + κ_tr·md", lambda n, d, m, k: 2 * n * d + m * n * d + k * m * d, "2md",
               lambda n, d, m: 2 * m * d, "κ_tr"),
}


#: the tables computed so far inside :func:`cached` (None outside it)
_CACHE: dict | None = None


@contextmanager
def cached():
    """Within this block each table of a given study is computed once: the report asks for some several times
    (its page, the findings and the figures all read the summary and cost tables). Outside it nothing is kept,
    so a notebook that edits ``study.trials`` always gets fresh numbers. Callers get copies, free to change."""
    global _CACHE
    if _CACHE is not None:  # nested: the outer block owns the cache
        yield
        return
    _CACHE = {}
    try:
        yield
    finally:
        _CACHE = None


def _memo(fn):
    """``fn(study, ...)`` computed once per study object and arguments inside :func:`cached`."""
    @functools.wraps(fn)
    def wrapper(study, *args, **kwargs):
        if _CACHE is None:
            return fn(study, *args, **kwargs)
        key = (fn.__name__, id(study), args, tuple(sorted(kwargs.items())))
        hit = _CACHE.get(key)
        if hit is None or hit[0] is not study:  # the study is kept with its tables: its id is not reused
            hit = _CACHE[key] = (study, fn(study, *args, **kwargs))
        return hit[1].copy()
    return wrapper


def median_inf(values) -> float:
    """Median that treats NaN as ∞ (an unsolved run): ∞ when at least half the values are missing."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return math.nan
    v = np.where(np.isnan(v), np.inf, v)
    return float(np.median(v)) if np.isfinite(np.median(v)) else math.inf


def _order(df: pd.DataFrame, study: StudyResults, by=("problem", "config")) -> pd.DataFrame:
    """``df`` in the study's problem order, then its config display order (unknown values last, stable)."""
    if not len(df):
        return df.reset_index(drop=True)
    prob = {p: i for i, p in enumerate(study.problems)}
    conf = {c: i for i, c in enumerate(study.configs)}
    keys = {"_k0": df[by[0]].map(prob).astype(float).fillna(99), "_k1": df[by[1]].map(conf).astype(float).fillna(999)}
    return (df.assign(**keys).sort_values(["_k0", "_k1"], kind="stable").drop(columns=list(keys))
            .reset_index(drop=True))


def fmt_cell(v) -> str:
    """A table cell as the report prints it: integers as such, other numbers to 4 significant digits, ∞, and
    missing values as '–'."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}".replace(",", " ")
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v.is_integer() and abs(v) < 1e7:
            return f"{int(v)}"
        return f"{v:.4g}"
    return str(v)


def _med(s: pd.Series) -> float:
    s = pd.to_numeric(s, errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
    return float(s.median()) if len(s) else math.nan


# ------------------------------------------------------------------------------------------- outcomes
def _num(s: pd.Series) -> pd.Series:
    """``s`` as floats, ±∞ and non-numbers as NaN (what :func:`_med` skips)."""
    return pd.to_numeric(s, errors="coerce").astype(float).replace([np.inf, -np.inf], np.nan)


@_memo
def summary_table(study: StudyResults) -> pd.DataFrame:
    """Per problem × config: trials, outcomes, median final loss / accuracy, iterations and cost to target."""
    t = study.trials
    if t.empty:
        return pd.DataFrame()
    solved = t["solved"].astype(bool)
    status = t["status"].astype(object)
    per = pd.DataFrame({
        "problem": t["problem"], "config": t["config"], "trials": 1, "solved": solved.astype("int64"),
        "solved %": 100.0 * solved, "diverged": (status == "diverged").astype("int64"),
        "failed": (status == "failed").astype("int64"), "running": (status == "running").astype("int64"),
        "median final loss": _num(t["final_loss"]), "median best accuracy": _num(t["best_accuracy"]),
        "median iterations": _num(t["iterations"]),
        "median iterations to target": _num(t["iters_to_target"]).where(solved),
        "median grad-eq to target": _num(t["grad_equivalents_to_target"]).where(solved),
        "median wall s to target": _num(t["wall_time_to_target"]).where(solved)})
    how = {c: ("sum" if c in ("trials", "solved", "diverged", "failed", "running") else
               "mean" if c == "solved %" else "median") for c in per.columns[2:]}
    df = per.groupby(["problem", "config"], sort=False).agg(how).reset_index()
    return _order(df, study)


#: how many of the best and of the worst rows a ranked table shows; the rest are collapsed into one row
TOP_K = 5
RANKING_COLUMNS = ["problem", "rank", "config", "trials", "solved", "solved %", "median iterations to target",
                   "median grad-eq to target", "median final loss"]


@_memo
def ranking_table(study: StudyResults) -> pd.DataFrame:
    """Per problem, every config ranked best first: most seeds at the target, then fewest gradient-equivalents
    to it (median over the solved runs), then lowest median final loss; ``rank`` 1 is the best."""
    s = summary_table(study)
    if s.empty:
        return pd.DataFrame(columns=RANKING_COLUMNS)
    s = s.assign(_ge=s["median grad-eq to target"].fillna(np.inf), _loss=s["median final loss"].fillna(np.inf),
                 _p=s["problem"].map({p: i for i, p in enumerate(study.problems)}).astype(float).fillna(99))
    s = s.sort_values(["_p", "solved %", "_ge", "_loss"], ascending=[True, False, True, True], kind="stable")
    s["rank"] = s.groupby("problem", sort=False).cumcount() + 1
    return s[RANKING_COLUMNS].reset_index(drop=True)


def top_bottom(df: pd.DataFrame, k: int = TOP_K) -> tuple[pd.DataFrame, int, pd.DataFrame]:
    """(first ``k`` rows, how many rows lie between, last ``k`` rows) of a ranked table; every row in the first
    part when there are at most 2k + 1 (collapsing a single row would hide nothing)."""
    if len(df) <= 2 * k + 1:
        return df, 0, df.iloc[:0]
    return df.iloc[:k], len(df) - 2 * k, df.iloc[-k:]


@_memo
def plateau_table(study: StudyResults, tol: float = 0.01) -> pd.DataFrame:
    """Per problem × config: runs that end on the saddle plateau (final loss within ``tol`` of ln 2, not
    solved): the paper's failure mode of the classical methods."""
    t = study.trials
    on = (t["final_loss"] - LN2).abs() <= tol
    df = t.assign(plateau=on & ~t["solved"]).groupby(["problem", "config"], sort=False).agg(
        trials=("trial_id", "size"), plateau=("plateau", "sum")).reset_index()
    return _order(df, study) if len(df) else df


@_memo
def profile(study: StudyResults, axis: str = "grad_equivalents") -> pd.DataFrame:
    """Data/performance profile: per problem × config, the fraction of trials that reached the target
    accuracy within each budget. ``axis``: iteration, grad_equivalents or wall_time. One row per step."""
    col = {"iteration": "iters_to_target", "grad_equivalents": "grad_equivalents_to_target",
           "wall_time": "wall_time_to_target"}[axis]
    rows = []
    for (problem, config), t in study.trials.groupby(["problem", "config"], sort=False):
        hits = np.sort(pd.to_numeric(t.loc[t["solved"], col], errors="coerce").dropna().to_numpy())
        n = len(t)
        rows.append({"problem": problem, "config": config, "budget": 0.0, "fraction": 0.0, "trials": n})
        for i, b in enumerate(hits):
            rows.append({"problem": problem, "config": config, "budget": float(b), "fraction": (i + 1) / n,
                         "trials": n})
    return pd.DataFrame(rows, columns=["problem", "config", "budget", "fraction", "trials"])


# ----------------------------------------------------------------------------------------- sensitivity
@_memo
def sensitivity_table(study: StudyResults) -> pd.DataFrame:
    """Sampled methods: per problem × method × Option × m × r, median over seeds of iterations and
    gradient-equivalents to target (unsolved = ∞), solved count, median best loss."""
    t = study.trials[study.trials["method"].isin(SAMPLED)]
    cols = ["problem", "method", "sampling", "memory", "radius"]
    if t.empty or not set(cols) <= set(t.columns):
        return pd.DataFrame(columns=cols + ["trials", "solved", "iterations to target", "grad-eq to target",
                                            "best loss"])
    solved = t["solved"].astype(bool)

    def to_target(c):  # median_inf's convention, vectorized: unsolved (NaN) counts as ∞
        return pd.to_numeric(t[c].where(solved), errors="coerce").astype(float).fillna(np.inf)

    per = pd.DataFrame({**{c: t[c] for c in cols}, "sampling": t["sampling"].fillna("hvp"), "trials": 1,
                        "solved": solved.astype("int64"), "iterations to target": to_target("iters_to_target"),
                        "grad-eq to target": to_target("grad_equivalents_to_target"),
                        "best loss": _num(t["best_loss"])})
    df = per.groupby(cols, sort=True, dropna=False).agg(
        {"trials": "sum", "solved": "sum", "iterations to target": "median", "grad-eq to target": "median",
         "best loss": "median"}).reset_index()
    order = {p: i for i, p in enumerate(study.problems)}
    return df.sort_values(["problem", "method", "sampling", "memory", "radius"], kind="stable",
                          key=lambda c: c.map(order) if c.name == "problem" else
                          c.map(SAMPLED.index) if c.name == "method" else c).reset_index(drop=True)


#: iterations 0..EARLY_ITERATIONS are "the first steps" of the r-invariance control
EARLY_ITERATIONS = 3
#: a relative loss difference above this: the runs have parted
APART = 1e-6


@_memo
def radius_invariance(study: StudyResults) -> pd.DataFrame:
    """For sampled runs that differ only in r (same problem, method, Option, m, seed): the largest
    difference between their loss trajectories (aligned by iteration), the largest relative difference over
    the first steps (iterations 0..EARLY_ITERATIONS; relative to max(1, |loss|)), the first iteration where they
    differ by more than APART (NaN: never), and the spread of their iterations to target. Under Option II
    exact arithmetic makes the runs identical (Y = ∇²F·S is linear in S); in floating point they agree to
    round-off over the first steps and may part later, when the dynamics amplify the last bits."""
    t = study.trials[study.trials["method"].isin(SAMPLED)]
    cols = ["problem", "method", "sampling", "memory", "seed"]
    out_cols = cols + ["radii", "max |Δ loss|", "early relative Δ", "apart from iteration",
                       "iterations to target (min..max)", "spread"]
    if t.empty or "radius" not in t or not set(cols) <= set(t.columns):
        return pd.DataFrame(columns=out_cols)
    t = t.assign(sampling=t["sampling"].fillna("hvp"))
    it = study.iterations
    it = it.loc[it["trial_id"].isin(t["trial_id"]), ["trial_id", "iteration", "loss"]]
    it = it.sort_values(["trial_id", "iteration"], kind="stable")
    loss = pd.to_numeric(it["loss"], errors="coerce").to_numpy(dtype=float)
    rows_of = it.groupby("trial_id", sort=False).indices  # trial -> its rows of `loss`, in iteration order
    rows = []
    for key, g in t.groupby(cols, sort=True, dropna=False):
        if g["radius"].nunique() < 2:
            continue
        curves = [loss[rows_of[tid]] for tid in g["trial_id"] if tid in rows_of]
        dev = early = apart = math.nan
        if len(curves) >= 2:
            n = min(len(c) for c in curves)
            stack = np.vstack([c[:n] for c in curves])
            dev = float(np.nanmax(np.abs(stack - stack[0]))) if n else math.nan
            # the control for "r changes the result": where the runs part. Round-off amplified by the dynamics
            # starts at the last bits and grows over many iterations; a dependence on r shows from the first steps.
            rel = np.nanmax(np.abs(stack - stack[0]) / np.maximum(1.0, np.abs(stack[0])), axis=0) if n else []
            early = float(np.max(rel[:EARLY_ITERATIONS + 1])) if n else math.nan
            parted = np.flatnonzero(rel > APART)
            apart = float(parted[0]) if parted.size else math.nan
        its = g["iters_to_target"].where(g["solved"]).astype(float)
        finite = its.dropna()
        if not len(finite):
            spread, span = math.nan, "not solved"
        elif len(finite) < len(its):
            spread, span = math.inf, f"{finite.min():.0f}..{finite.max():.0f} (some unsolved)"
        else:
            spread, span = float(finite.max() - finite.min()), f"{finite.min():.0f}..{finite.max():.0f}"
        rows.append({**dict(zip(cols, key)), "radii": ", ".join(f"{r:g}" for r in sorted(g["radius"].unique())),
                     "max |Δ loss|": dev, "early relative Δ": early, "apart from iteration": apart,
                     "iterations to target (min..max)": span, "spread": spread})
    return pd.DataFrame(rows, columns=out_cols)


# ------------------------------------------------------------------------------------------------ cost
def iteration_costs(study: StudyResults) -> pd.DataFrame:
    """One row per iteration ≥ 1: its wall time split by phase (seconds) and its gradient-equivalents split
    by kind of oracle call, plus κ (line-search evaluations or CG iterations, ``inner_iters``) and whether its
    step was taken (``accepted``; NaN where the file does not record it)."""
    it = study.iterations
    if it.empty:
        return pd.DataFrame(columns=["trial_id", "problem", "config", "method", "dt", *PHASES, "dge", *KINDS, "kappa",
                                     "accepted"])
    it = it.sort_values(["trial_id", "iteration"])
    g = it.groupby("trial_id")
    accepted = (it["accepted"].astype("boolean").astype("Float64").astype(float) if "accepted" in it
                else pd.Series(np.nan, index=it.index))
    df = pd.DataFrame({"trial_id": it["trial_id"], "problem": it["problem"], "config": it["config"],
                       "method": it["method"], "iteration": it["iteration"],
                       "dt": g["wall_time"].diff(), "dge": g["grad_equivalents"].diff(),
                       "ge_grad": g["n_grad"].diff(), "ge_hvp": g["n_hvp"].diff(), "kappa": it["inner_iters"],
                       "accepted": accepted})
    for c in ("t_grad", "t_pairs", "t_model", "t_search"):
        df[c] = pd.to_numeric(it[c], errors="coerce").fillna(0.0)
    df["t_other"] = (df["dt"] - df[["t_grad", "t_pairs", "t_model", "t_search"]].sum(axis=1)).clip(lower=0.0)
    df["ge_fun"] = df["dge"] - df["ge_grad"] - df["ge_hvp"]
    return df[df["iteration"] >= 1].dropna(subset=["dt", "dge"]).reset_index(drop=True)


@_memo
def heldout_table(study: StudyResults) -> pd.DataFrame:
    """Per problem × config, where a study recorded held-out metrics: the medians over seeds of each run's last
    evaluated row (test accuracy and loss, training accuracy) and of its epochs, iterations and wall time at the
    end. Empty when no run has a test accuracy."""
    cols = ["problem", "config", "trials", "median test accuracy", "median test loss", "median train accuracy",
            "median epochs", "median iterations", "median wall s"]
    it = study.iterations
    if it.empty or "test_accuracy" not in it or pd.to_numeric(it["test_accuracy"], errors="coerce").notna().sum() == 0:
        return pd.DataFrame(columns=cols)
    it = it.sort_values(["trial_id", "iteration"])
    last = it.groupby("trial_id").tail(1).set_index("trial_id")
    evaluated = it[pd.to_numeric(it["test_accuracy"], errors="coerce").notna()].groupby("trial_id").tail(1)
    evaluated = evaluated.set_index("trial_id")
    per_run = pd.DataFrame({"problem": last["problem"], "config": last["config"],
                            "test_accuracy": pd.to_numeric(evaluated["test_accuracy"], errors="coerce"),
                            "test_loss": pd.to_numeric(evaluated.get("test_loss"), errors="coerce"),
                            "accuracy": pd.to_numeric(evaluated["accuracy"], errors="coerce"),
                            "epochs": last["epochs"], "iteration": last["iteration"], "wall_time": last["wall_time"]})
    rows = []
    for (problem, config), g in per_run.groupby(["problem", "config"], sort=False):
        rows.append({"problem": problem, "config": config, "trials": len(g),
                     "median test accuracy": _med(g["test_accuracy"]), "median test loss": _med(g["test_loss"]),
                     "median train accuracy": _med(g["accuracy"]), "median epochs": _med(g["epochs"]),
                     "median iterations": _med(g["iteration"]), "median wall s": _med(g["wall_time"])})
    return _order(pd.DataFrame(rows, columns=cols), study)


@_memo
def cost_table(study: StudyResults) -> pd.DataFrame:
    """Per problem × config: median over seeds of the per-iteration mean cost, in ms by phase and in
    gradient-equivalents by kind, and the mean κ."""
    per = iteration_costs(study)
    if per.empty:
        return pd.DataFrame(columns=["problem", "config", "ms / iteration", "grad-eq / iteration"])
    trial = per.groupby(["problem", "config", "trial_id"], sort=False).agg(
        iterations=("dt", "size"), dt=("dt", "mean"), dge=("dge", "mean"), kappa=("kappa", "mean"),
        **{c: (c, "mean") for c in [*PHASES, *KINDS]}).reset_index()
    g = trial.groupby(["problem", "config"], sort=False)
    med = g[["dt", *PHASES, "dge", *KINDS, "kappa"]].median()
    df = pd.DataFrame({"trials": g.size(), "iterations": g["iterations"].sum().astype("int64"),
                       "ms / iteration": 1e3 * med["dt"],
                       **{f"ms {PHASES[c]}": 1e3 * med[c] for c in PHASES},
                       "grad-eq / iteration": med["dge"], **{f"grad-eq {KINDS[c]}": med[c] for c in KINDS},
                       "κ (inner iterations)": med["kappa"]}).reset_index()
    return _order(df, study)


@_memo
def theory_table(study: StudyResults) -> pd.DataFrame:
    """The poster's cost and storage per iteration at the problem's n, d, the config's m and the measured κ,
    beside the measured gradient-equivalents per iteration (methods of the poster's table only)."""
    measured = cost_table(study)
    keys = list(zip(measured["problem"], measured["config"]))

    def lookup(col):
        return dict(zip(keys, measured[col])) if col in measured else {}

    kappas, ges = lookup("κ (inner iterations)"), lookup("grad-eq / iteration")
    rows = []
    for (problem, config), t in study.trials.groupby(["problem", "config"], sort=False):
        method = t["method"].iloc[0]
        if method not in POSTER:
            continue
        name, cost_f, cost, store_f, store, kname = POSTER[method]
        size = study.problem_size(problem)
        n, d = size["n"], size["d"]
        m = float(pd.to_numeric(t["memory"], errors="coerce").median()) if "memory" in t else math.nan
        if method in ("bfgs", "sr1"):
            m = math.nan  # dense methods keep no m
        kappa = float(kappas.get((problem, config), math.nan))
        ge = float(ges.get((problem, config), math.nan))
        ok = n is not None and d is not None
        mm = 0.0 if math.isnan(m) else m
        flops = cost(n, d, mm, kappa) if ok and not math.isnan(kappa) else math.nan
        floats = store(n, d, mm) if ok else math.nan
        rows.append({"problem": problem, "config": config, "poster method": name, "n": n, "d": d,
                     "m": m, kname.replace("κ_", "measured κ_"): kappa, "cost formula": cost_f,
                     "cost (flops)": flops, "cost / nd": flops / (n * d) if ok else math.nan,
                     "measured grad-eq / iteration": ge, "storage formula": store_f, "storage (floats)": floats,
                     "storage (KiB, float64)": floats * 8 / 1024 if ok else math.nan})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if "measured κ_ls" in df and "measured κ_tr" in df:
        df["measured κ"] = df["measured κ_ls"].fillna(df["measured κ_tr"])
        df["κ"] = np.where(df["measured κ_ls"].notna(), "κ_ls", "κ_tr")
        df = df.drop(columns=["measured κ_ls", "measured κ_tr"])
    else:
        k = "measured κ_ls" if "measured κ_ls" in df else "measured κ_tr"
        df["κ"] = k.removeprefix("measured ")
        df = df.rename(columns={k: "measured κ"})
    front = ["problem", "config", "poster method", "n", "d", "m", "κ", "measured κ"]
    return _order(df[front + [c for c in df.columns if c not in front]], study)


# --------------------------------------------------------------------------------------------- anchors
ANCHOR_TWINS = {"torch-lbfgs": "lbfgs", "scipy-lbfgsb": "lbfgs", "scipy-bfgs": "bfgs"}


def anchor_table(study: StudyResults) -> pd.DataFrame:
    """Our LBFGS / BFGS beside the external anchors: outcomes and per-iteration cost per problem × config."""
    sub = study.of(["lbfgs", "bfgs", *ANCHORS])
    if not sub.trials["method"].isin(ANCHORS).any():
        return pd.DataFrame()
    t = sub.trials
    rows = []
    for (problem, config), g in t.groupby(["problem", "config"], sort=False):
        iters = pd.to_numeric(g["iterations"], errors="coerce").replace(0, np.nan)
        it = sub.iterations[sub.iterations["trial_id"].isin(g["trial_id"])]
        last = it.sort_values("iteration").groupby("trial_id").last()
        fun_per = (last["n_fun"] / last["iteration"].replace(0, np.nan)) if len(last) else pd.Series(dtype=float)
        rows.append({"problem": problem, "config": config, "trials": len(g), "solved": int(g["solved"].sum()),
                     "median final loss": _med(g["final_loss"]), "median best accuracy": _med(g["best_accuracy"]),
                     "median iterations": _med(g["iterations"]),
                     "median grad-eq / iteration": _med(g["grad_equivalents"] / iters),
                     "median loss evaluations / iteration": _med(fun_per),
                     "median ms / iteration": _med(1e3 * g["wall_time"] / iters)})
    return _order(pd.DataFrame(rows), study)


def anchor_pairs(study: StudyResults) -> pd.DataFrame:
    """Each anchor against our twin (torch-lbfgs and scipy-lbfgsb vs lbfgs, scipy-bfgs vs bfgs) on the same
    problem and seed (same initial point): agreement of outcomes and final losses."""
    t = study.trials
    rows = []
    for anchor, ours in ANCHOR_TWINS.items():
        a, o = t[t["method"] == anchor], t[t["method"] == ours]
        if a.empty or o.empty:
            continue
        both = a.merge(o, on=["problem", "seed"], suffixes=("_a", "_o"))
        for problem, g in both.groupby("problem", sort=False):
            rows.append({"problem": problem, "ours": ours, "anchor": anchor, "common seeds": len(g),
                         "solved (ours)": int(g["solved_o"].sum()), "solved (anchor)": int(g["solved_a"].sum()),
                         "same outcome": int((g["solved_o"] == g["solved_a"]).sum()),
                         "median final loss (ours)": _med(g["final_loss_o"]),
                         "median final loss (anchor)": _med(g["final_loss_a"]),
                         "median |Δ final loss|": _med((g["final_loss_o"] - g["final_loss_a"]).abs())})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- eigen
EIGEN_MATRICES = ("hessian", "s-lsr1", "lsr1", "sr1", "s-lbfgs", "lbfgs", "bfgs")
POINTS = ("start", "plateau", "solution")


def eigen_table(eigen: pd.DataFrame | None) -> pd.DataFrame:
    """Per point × matrix: λ_min, λ_max, negative and non-zero eigenvalue counts (relative tolerance 1e-8)."""
    if eigen is None or eigen.empty:
        return pd.DataFrame()
    rows = []
    pt_rank = {p: i for i, p in enumerate(POINTS)}
    mat_rank = {m: i for i, m in enumerate(EIGEN_MATRICES)}
    for (point, matrix), g in eigen.groupby(["point", "matrix"], sort=False):
        lam = g["eigenvalue"].to_numpy(dtype=float)
        tol = 1e-8 * max(1.0, float(np.abs(lam).max()) if lam.size else 1.0)
        row = {"point": point, "iteration": int(g["iteration"].iloc[0]), "matrix": matrix}
        if "loss" in g:
            row["loss"] = float(g["loss"].iloc[0])
        if "pairs" in g:
            row["pairs"] = int(g["pairs"].iloc[0])
        row.update({"λ_min": float(lam.min()), "λ_max": float(lam.max()), "negative": int((lam < -tol).sum()),
                    "non-zero": int((np.abs(lam) > tol).sum()), "dimension": int(lam.size)})
        rows.append(row)
    df = pd.DataFrame(rows)
    key = df.apply(lambda r: (pt_rank.get(r["point"], 9), mat_rank.get(r["matrix"], 99)), axis=1)
    return df.assign(_k=key).sort_values("_k").drop(columns="_k").reset_index(drop=True)
