"""The tuning stage of a tuned study: each method's selection scores, its tuning curve and the configuration chosen.

A tuned study (:mod:`sqn_ray.study.tuning`) gives every method the same budget, B configurations, each run on
the same tuning seeds, and reruns each method's chosen configuration on fresh evaluation seeds. The methods are
compared on the evaluation stage only (:meth:`~analysis.load.StudyResults.comparison`); this module shows the
tuning stage, the DeepOBS / AlgoPerf way: a *tuning curve* per problem and method, the best selection score found
among the first k configurations (k = 1..B, in the order drawn), so a reader sees that every method got the same
budget and whether it was still improving at the end of it.

The selection score of a configuration on a problem is the mean over the tuning seeds of its trials' metric
(``trials.parquet``; metric and mode from the ``sqn_ray.tuning`` metadata, else ``best_loss`` / ``min``); a trial
without a finite value (diverged, failed) scores the worst value (+∞ for ``min``), and so does its mean: the
platform's rule (:func:`sqn_ray.study.tuning.scores`).

A study may tune some options apart (``tuning.separate``, e.g. ``[sampling]``: Option I and II each get their own
budget and choice). Each such *variant* (the platform's name ``s-lsr1/sampling=hvp``, shown as
``s-lsr1 [Option II]``) then has its own tuning curve, k counting its own configurations, and its own choice; without
``separate`` a variant is its method.

    >>> from analysis import load_results, tuning
    >>> results = load_results("results/tuned-toy")
    >>> tuning.tuning_curve(results)      # problem, method, k, score, best so far
    >>> tuning.chosen_table(results)      # per method: the configuration chosen, its options and score
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .load import EVALUATION, TUNING, StudyResults, _method_rank, config_label, options_text
from .tables import _memo

try:  # the trials.parquet column each ranking metric is read from: the platform's, where it has them
    from sqn_ray.study.results import METRIC_COLUMNS
except ImportError:  # a platform from before tuned studies (same mapping)
    METRIC_COLUMNS = {"loss": "final_loss", "best_loss": "best_loss", "accuracy": "final_accuracy",
                      "best_accuracy": "best_accuracy", "grad_norm": "final_grad_norm"}

__all__ = ["selection", "variants", "variant_label", "config_scores", "tuning_curve", "chosen_table",
           "METRIC_COLUMNS", "DEFAULT_METRIC"]

#: what the choice is made on when the results do not record it
DEFAULT_METRIC = ("best_loss", "min")
#: metrics on a log scale (positive, spanning decades); the others (accuracies) on a linear one
LOG_METRICS = ("loss", "best_loss", "grad_norm")


def selection(results: StudyResults) -> tuple[str, str, str]:
    """``(metric, mode, column)``: what the tuning stage chose on (``sqn_ray.tuning`` metadata, else
    :data:`DEFAULT_METRIC`) and the trials.parquet column it is read from."""
    record = results.tuning or {}
    metric = str(record.get("metric") or DEFAULT_METRIC[0])
    mode = str(record.get("mode") or (DEFAULT_METRIC[1] if metric == DEFAULT_METRIC[0] else
                                      "max" if "accuracy" in metric else "min"))
    return metric, mode, METRIC_COLUMNS.get(metric, metric)


def _recorded_options(results: StudyResults, method: str, number) -> dict | None:
    """The options of configuration ``number`` of ``method`` as the metadata lists them (None: not listed)."""
    listed = ((results.tuning or {}).get("configurations") or {}).get(method)
    if number is None or pd.isna(number) or not isinstance(listed, list) or not 0 <= int(number) < len(listed):
        return None
    return listed[int(number)] if isinstance(listed[int(number)], dict) else None


def _value(text: str):
    """A separate option's value as it appears in a variant's name, back to a number where it is one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def variant_label(variant: str) -> str:
    """The platform's variant name as a label: ``s-lsr1/sampling=hvp`` -> ``s-lsr1 [Option II]``; a variant
    without separate options is its method."""
    method, *tags = variant.split("/")
    return config_label(method, {k: _value(v) for k, v in (t.split("=", 1) for t in tags)})


def variants(results: StudyResults, trials: pd.DataFrame) -> pd.Series:
    """The variant (:func:`sqn_ray.study.tuning.variant`'s name) each trial of a tuned study belongs to: its
    method, plus the values of the ``tuning.separate`` options its configuration has (from the metadata's
    ``configurations``, else the trial's own columns)."""
    separate = sorted((results.tuning or {}).get("separate") or [])
    if not separate:
        return trials["method"].astype(str)
    out = {}
    for idx, row in trials.iterrows():
        options = _recorded_options(results, row["method"], row.get("tuning_config"))
        if options is None:
            options = {k: row[k] for k in separate if k in row and pd.notna(row[k])}
        out[idx] = "/".join([str(row["method"]), *(f"{k}={options[k]}" for k in separate if k in options)])
    return pd.Series(out, index=trials.index, dtype=object)


def _options_of(results: StudyResults, tuning_trials: pd.DataFrame) -> dict[tuple[str, int], str]:
    """(method, configuration number) -> its options as text: from the metadata's ``configurations`` when it
    has them, else the options that vary among the method's tuning trials."""
    out = {}
    for method, t in tuning_trials.groupby("method", sort=False):
        varying = [o for o in results.options if o in t and t[o].astype(str).nunique() > 1]
        for number, g in t.groupby("tuning_config", sort=True):
            listed = _recorded_options(results, method, number)
            row = g.iloc[0]
            out[method, int(number)] = options_text(
                listed if listed is not None else {o: row[o] for o in varying if pd.notna(row[o])})
    return out


@_memo
def config_scores(results: StudyResults) -> pd.DataFrame:
    """Per problem × method × tuning configuration: its variant (:func:`variant_label`; the method unless some
    options are tuned apart), its selection score (the mean over the tuning seeds of the metric; non-finite values
    count as the worst), the seeds it ran on, its options and config label. Empty (with the columns) when the
    results hold no tuning stage."""
    cols = ["problem", "method", "variant", "tuning_config", "config", "options", "seeds", "score"]
    t = results.stage(TUNING).trials if results.tuned else results.trials.iloc[:0]
    t = t[t["tuning_config"].notna()]
    metric, mode, column = selection(results)
    if t.empty or column not in t:
        return pd.DataFrame(columns=cols)
    worst = math.inf if mode == "min" else -math.inf
    value = pd.to_numeric(t[column], errors="coerce").astype(float)
    t = t.assign(_v=value.where(np.isfinite(value), worst), tuning_config=t["tuning_config"].astype("int64"),
                 _variant=variants(results, t))
    df = (t.groupby(["problem", "method", "tuning_config"], sort=False)
          .agg(config=("config", "first"), _variant=("_variant", "first"), seeds=("seed", "nunique"),
               score=("_v", "mean")).reset_index())
    df["variant"] = df["_variant"].map(variant_label)
    options = _options_of(results, t)
    df["options"] = [options.get((m, n), "") for m, n in zip(df["method"], df["tuning_config"])]
    prob = {p: i for i, p in enumerate(results.problems)}
    df = df.assign(_p=df["problem"].map(prob), _m=df["method"].map(lambda m: _method_rank(str(m))))
    return df.sort_values(["_p", "_m", "tuning_config"], kind="stable")[cols + ["_variant"]].reset_index(drop=True)


def _chosen_numbers(results: StudyResults) -> dict[str, int]:
    """variant (the platform's name) -> the number of its chosen configuration: the metadata's ``chosen``, else
    the configuration its evaluation trials ran."""
    chosen = {v: int(c["tuning_config"]) for v, c in ((results.tuning or {}).get("chosen") or {}).items()
              if isinstance(c, dict) and c.get("tuning_config") is not None}
    if EVALUATION in results.stages:
        ev = results.stage(EVALUATION).trials
        ev = ev[ev["tuning_config"].notna()]
        for variant, g in ev.groupby(variants(results, ev), sort=False):
            chosen.setdefault(str(variant), int(g["tuning_config"].iloc[0]))
    return chosen


@_memo
def tuning_curve(results: StudyResults) -> pd.DataFrame:
    """Per problem and variant (a method, or one of its values of the options tuned apart), the tuning curve:
    for k = 1..B (its k-th configuration in ``tuning_config`` order, the order drawn) the score of that
    configuration and the best score among the first k (``best so far``: running min for ``mode`` min, max for
    max), and whether it is the configuration chosen."""
    scores = config_scores(results)
    cols = ["problem", "method", "variant", "k", "tuning_config", "config", "score", "best so far", "chosen"]
    if scores.empty:
        return pd.DataFrame(columns=cols)
    _, mode, _ = selection(results)
    chosen = _chosen_numbers(results)
    g = scores.groupby(["problem", "_variant"], sort=False)
    best = g["score"].cummin() if mode == "min" else g["score"].cummax()
    return scores.assign(k=g.cumcount() + 1, **{"best so far": best},
                         chosen=[chosen.get(v) == n for v, n in zip(scores["_variant"], scores["tuning_config"])])[cols]


@_memo
def chosen_table(results: StudyResults) -> pd.DataFrame:
    """Per method (per variant, when options are tuned apart), the configuration chosen in the tuning stage: its
    number and options, its selection score as recorded (the metadata's ``score``) and as recomputed from
    trials.parquet (the mean over problems of its per-problem scores, the platform's), the configurations tried
    (of the budget B), the tuning trials used and the evaluation trials run with it. Empty when the results hold
    no tuning stage."""
    cols = ["method", "variant", "chosen #", "options", "metric", "score (recorded)", "score (from trials.parquet)",
            "configurations tried", "budget B", "tuning trials", "tuning seeds", "evaluation trials"]
    scores = config_scores(results)
    if scores.empty:
        return pd.DataFrame(columns=cols)
    metric, mode, _ = selection(results)
    record = results.tuning or {}
    recorded = record.get("chosen") or {}
    chosen = _chosen_numbers(results)
    tuning_trials = results.stage(TUNING).trials
    tuning_trials = tuning_trials.assign(_variant=variants(results, tuning_trials))
    ev = results.stage(EVALUATION).trials if EVALUATION in results.stages else tuning_trials.iloc[:0]
    ev = ev.assign(_variant=variants(results, ev))
    rows = []
    for variant in sorted(scores["_variant"].unique(), key=lambda v: (_method_rank(v.split("/")[0]), v)):
        s = scores[scores["_variant"] == variant]
        number = chosen.get(variant)
        mine = s[s["tuning_config"] == number] if number is not None else s.iloc[:0]
        entry = recorded.get(variant) if isinstance(recorded.get(variant), dict) else {}
        options = (options_text(entry["options"]) if isinstance(entry.get("options"), dict)
                   else mine["options"].iloc[0] if len(mine) else "")
        trials = tuning_trials[tuning_trials["_variant"] == variant]
        rows.append({"method": s["method"].iloc[0], "variant": variant_label(variant),
                     "chosen #": number if number is not None else pd.NA, "options": options,
                     "metric": f"{metric} ({mode})", "score (recorded)": float(entry.get("score", math.nan)),
                     "score (from trials.parquet)": float(mine["score"].mean()) if len(mine) else math.nan,
                     "configurations tried": int(s["tuning_config"].nunique()),
                     "budget B": record.get("trials", pd.NA), "tuning trials": len(trials),
                     "tuning seeds": int(trials["seed"].nunique()),
                     "evaluation trials": int((ev["_variant"] == variant).sum())})
    return pd.DataFrame(rows, columns=cols)
