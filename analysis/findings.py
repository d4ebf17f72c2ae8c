"""A short text of findings, every number computed from the study's data (no sentence is canned).

:func:`findings` returns a list of :class:`Finding` (a topic and one sentence, sometimes two); the report shows
them at the top. Each problem gets one headline sentence and a ranked table of its configurations (the best and
the worst :data:`~analysis.tables.TOP_K`, the rest collapsed into one row that names the CSV holding them), so the
text stays the same length at 10 or 1,000 configurations: no finding lists every configuration inline. Claims of
the paper are stated as "consistent with" or "not what the paper reports", from the numbers of this study only:
a smoke study with 15 iterations says little, and the text says what it saw.

Methods are compared on :meth:`~analysis.load.StudyResults.comparison` (a tuned study's evaluation stage); the
tuning stage gets one finding of its own (the budget, the configurations chosen, where each tuning curve found
its best). The cost claim is stated as measured ratios at equal m (:mod:`analysis.costs`), "comparable" meaning
within :data:`~analysis.costs.COMPARABLE`×, the parallel case as a projection marked as one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import costs as C
from . import tables as T
from . import tuning as TU
from .load import CLASSICAL, EVALUATION, FIRST_ORDER, LN2, TUNING, StudyResults

__all__ = ["Finding", "findings", "markdown_table"]


@dataclass(frozen=True)
class Finding:
    """A topic, its sentence and, for a ranking, the ranked rows it summarises (every row; shown collapsed)."""

    topic: str
    text: str
    #: ranked rows that go with the text, best first (all of them: :meth:`markdown` and the report collapse them)
    table: pd.DataFrame | None = field(default=None, compare=False, repr=False)
    #: the report's CSV holding every row (``tables/<table_name>.csv``), named in the collapsed row
    table_name: str | None = None

    def __str__(self) -> str:
        return f"{self.topic}: {self.text}"

    def markdown(self, k: int = T.TOP_K) -> str:
        """The finding as Markdown: the sentence, then its table's best and worst ``k`` rows, if it has one."""
        out = f"**{self.topic}**: {self.text}"
        if self.table is not None and len(self.table):
            out += "\n\n" + markdown_table(self.table, k, self.table_name)
        return out


def collapsed_row(hidden: int, table_name: str | None) -> str:
    """The text of the row that stands for the ``hidden`` middle rows of a ranked table."""
    where = f" (see tables/{table_name}.csv)" if table_name else ""
    return f"… {hidden} more configuration{'s' if hidden != 1 else ''}{where}"


def markdown_table(df: pd.DataFrame, k: int = T.TOP_K, table_name: str | None = None) -> str:
    """A ranked table as a Markdown table: its first and last ``k`` rows, one collapsed row between them."""
    top, hidden, bottom = T.top_bottom(df, k)

    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rows = [line(df.columns), line(["---"] * len(df.columns))]
    rows += [line(T.fmt_cell(v) for v in r) for r in top.itertuples(index=False, name=None)]
    if hidden:
        rows.append(line([collapsed_row(hidden, table_name)] + [""] * (len(df.columns) - 1)))
        rows += [line(T.fmt_cell(v) for v in r) for r in bottom.itertuples(index=False, name=None)]
    return "\n".join(rows)


def _g(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}g}"


#: the most items a finding lists inline; the rest are counted and left to the table it names
MAX_LISTED = 6
#: early relative Δ across r (Option II) that no round-off amplification over the first steps explains
DEPENDENCE_EARLY = 1e-6


def _listed(items: list[str], table: str, limit: int = MAX_LISTED) -> str:
    """``a, b, c`` or, past ``limit`` items, the first ones and ``and N more (table: ...)``: a finding stays a
    sentence at 1,000 configurations, the whole list is in the report's table."""
    items = list(items)
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])} and {len(items) - limit} more (all in tables/{table}.csv)"


def _frac(k: int, n: int) -> str:
    return f"{k}/{n} ({100.0 * k / n:.0f} %)" if n else "0/0"


def _overview(study: StudyResults) -> list[Finding]:
    t = study.trials
    counts = t["status"].value_counts()
    parts = ", ".join(f"{counts[s]} {s}" for s in ("solved", "budget", "diverged", "failed", "running", "unknown")
                      if s in counts)
    text = (f"{len(t)} trials ({parts}) of {len(study.configs)} configurations on "
            f"{', '.join(study.problems)}; {t['seed'].nunique()} seed(s) per configuration")
    out = [Finding("Study", text + ".")]
    if study.running:
        out.append(Finding("Partial", f"{study.running} trial(s) have no final status yet (the study is running or "
                                      "was interrupted); every figure shows the rows written so far."))
    return out


def _ranked_view(ranking: pd.DataFrame) -> pd.DataFrame:
    """One problem's rows of :func:`~analysis.tables.ranking_table`, as the findings show them."""
    return pd.DataFrame({
        "rank": ranking["rank"].to_numpy(), "config": ranking["config"].to_numpy(),
        "solved/seeds": [f"{int(a)}/{int(b)}" for a, b in zip(ranking["solved"], ranking["trials"])],
        "median iterations to target": ranking["median iterations to target"].to_numpy(),
        "median grad-eq to target": ranking["median grad-eq to target"].to_numpy(),
        "median final loss": ranking["median final loss"].to_numpy()})


def _per_problem(study: StudyResults) -> list[Finding]:
    """Per problem, the headline in one sentence and the ranked configurations (tables/ranking.csv)."""
    out = []
    ranking = T.ranking_table(study)
    for problem, s in ranking.groupby("problem", sort=False):
        t = study.trials[study.trials["problem"] == problem]
        target = pd.to_numeric(t["target_accuracy"], errors="coerce").median()
        tgt = f"{100 * target:.0f} % training accuracy" if not math.isnan(target) else "the target"
        n = len(s)
        of_n = f" of {n} configurations" if n > 1 else ""
        best = s.iloc[0]
        if s["solved"].sum() == 0:
            budget = _g(pd.to_numeric(t["iterations"], errors="coerce").max())
            text = f"no run reached {tgt} within the budget (at most {budget} iterations)"
            if pd.notna(best["median final loss"]):
                text += f"; lowest median final loss{of_n}: {best['config']} ({_g(best['median final loss'])})"
        else:
            text = (f"most robust{of_n}: {best['config']}, {_frac(int(best['solved']), int(best['trials']))} of its "
                    f"seeds reached {tgt}, median {_g(best['median iterations to target'])} iterations and "
                    f"{_g(best['median grad-eq to target'])} gradient-equivalents to get there")
            solvers = s[(s["solved %"] >= 50) & s["median grad-eq to target"].notna()]
            if len(solvers):
                cheap = solvers.loc[solvers["median grad-eq to target"].idxmin()]
                if cheap["config"] != best["config"]:
                    text += (f"; cheapest among configs solving at least half their seeds: {cheap['config']} "
                             f"({_g(cheap['median grad-eq to target'])} gradient-equivalents)")
            never = int((s["solved"] == 0).sum())
            if never:
                text += f"; {never}{' of ' + str(n) if n > 1 else ''} never reached it"
        out.append(Finding(problem, text + ".", table=_ranked_view(s), table_name="ranking"))
    return out


def _claims(study: StudyResults) -> list[Finding]:
    out = []
    t = study.trials
    for problem in study.problems:
        p = t[t["problem"] == problem]
        rate = p.groupby("method")["solved"].agg(["sum", "size"])
        if "s-lsr1" in rate.index:
            others = [m for m in (*CLASSICAL, *FIRST_ORDER) if m in rate.index]
            if others:
                s = rate.loc["s-lsr1"]
                text = (f"S-LSR1 reached the target in {_frac(int(s['sum']), int(s['size']))} of its runs; "
                        + ", ".join(f"{m} in {_frac(int(rate.loc[m, 'sum']), int(rate.loc[m, 'size']))}"
                                    for m in others))
                best_other = max(rate.loc[m, "sum"] / rate.loc[m, "size"] for m in others)
                mine = s["sum"] / s["size"]
                verdict = ("consistent with the paper (S-LSR1 more robust than the classical and first-order methods)"
                           if mine > best_other else
                           "not what the paper reports (S-LSR1 should be the most robust)" if mine < best_other
                           else "no difference in this study")
                out.append(Finding(f"Paper claim, {problem}", f"{text}: {verdict}."))
        if "s-lbfgs" in rate.index and "lbfgs" in rate.index:
            fl = p.groupby("method")["final_loss"].median()
            a, b = rate.loc["s-lbfgs"], rate.loc["lbfgs"]
            ra, rb = a["sum"] / a["size"], b["sum"] / b["size"]
            better = ra > rb or (ra == rb and fl["s-lbfgs"] < fl["lbfgs"])
            text = (f"S-LBFGS solved {_frac(int(a['sum']), int(a['size']))} (median final loss {_g(fl['s-lbfgs'])}), "
                    f"LBFGS {_frac(int(b['sum']), int(b['size']))} ({_g(fl['lbfgs'])})")
            verdict = ("S-LBFGS ahead, as the paper reports" if better else
                       "LBFGS not behind S-LBFGS here, unlike the paper")
            if "s-lsr1" in rate.index:
                c = rate.loc["s-lsr1"]
                rc = c["sum"] / c["size"]
                ahead = rc > ra or (rc == ra and fl["s-lsr1"] < fl["s-lbfgs"])
                verdict += "; S-LSR1 ahead of S-LBFGS, as reported" if ahead else "; S-LSR1 not ahead of S-LBFGS here"
            out.append(Finding(f"Paper claim, {problem}", f"{text}: {verdict}."))
    return out


def _plateau(study: StudyResults) -> list[Finding]:
    pt = T.plateau_table(study)
    if pt.empty:
        return []
    hits = pt[pt["plateau"] > 0]
    rule = f"final loss within 0.01 of ln 2 ≈ {LN2:.4f}"
    if hits.empty:
        return [Finding("Saddle plateau", f"no run ended on the plateau ({rule} without reaching the target).")]
    several = len(study.problems) > 1
    if len(hits) <= MAX_LISTED:
        parts = [f"{r['config']} {int(r['plateau'])}/{int(r['trials'])}" + (f" on {r['problem']}" if several else "")
                 for _, r in hits.iterrows()]
        return [Finding("Saddle plateau", f"runs that ended on the plateau ({rule}, target not reached): "
                                          f"{', '.join(parts)}.")]
    method = study.trials.drop_duplicates("config").set_index("config")["method"]
    by = pt.assign(method=pt["config"].map(method)).groupby("method", sort=False)[["plateau", "trials"]].sum()
    by = by.reindex([m for m in study.methods if m in by.index])
    text = (f"{_frac(int(hits['plateau'].sum()), int(pt['trials'].sum()))} runs ended on the plateau ({rule}, "
            f"target not reached), in {len(hits)} of {len(pt)} configurations; by method: "
            + ", ".join(f"{m} {_frac(int(r['plateau']), int(r['trials']))}" for m, r in by.iterrows()))
    ranked = hits.sort_values(["plateau", "trials"], ascending=[False, True], kind="stable")
    view = pd.DataFrame({"rank": np.arange(1, len(ranked) + 1), "config": ranked["config"].to_numpy(),
                         "plateau/seeds": [f"{int(a)}/{int(b)}" for a, b in zip(ranked["plateau"], ranked["trials"])]})
    if several:
        view.insert(1, "problem", ranked["problem"].to_numpy())
    return [Finding("Saddle plateau", text + ".", table=view, table_name="plateau")]


#: differences within this many units of round-off (machine epsilon, relative) over the first steps are round-off
ROUNDOFF_ULPS = 1e3


def _invariance(study: StudyResults) -> list[Finding]:
    inv = T.radius_invariance(study)
    if inv.empty:
        return []
    out = []
    for sampling, g in inv.groupby("sampling", sort=False):
        name = ("Option II (hvp)" if sampling == "hvp" else
                "Option I (grad-diff)" if sampling == "grad-diff" else sampling)
        dev = float(g["max |Δ loss|"].max())
        radii = sorted({r for s in g["radii"] for r in s.split(", ")}, key=float)
        spread = g["spread"].replace(np.inf, np.nan)
        text = (f"across r ∈ {{{', '.join(radii)}}}, runs with the same method, m and seed differ in loss by at most "
                f"{_g(dev)} ({len(g)} group(s))")
        if spread.notna().any():
            text += f"; iterations to target vary by up to {_g(float(spread.max()))}"
        if (g["spread"] == np.inf).any():
            text += "; some r solve where others do not"
        if sampling == "hvp":
            verdict = _option_ii_verdict(study, g, dev)
        else:
            verdict = "sensitive to r (finite differences)" if dev > 1e-8 else "no sensitivity to r seen here"
        out.append(Finding(f"Radius, {name}", f"{text}: {verdict}."))
    return out


def _option_ii_verdict(study: StudyResults, groups: pd.DataFrame, dev: float) -> str:
    """Option II's r-invariance, checked against its control before it is claimed either way: runs that part
    only after agreeing to round-off over their first steps show round-off amplified by the dynamics, not a
    dependence on r; only a difference beyond round-off in the first steps is one."""
    if dev <= 1e-8:
        return "invariant to r up to round-off, as the theory says (Y = ∇²F·S is linear in S)"
    dtype = (study.metadata.get("sqn_ray.study") or {}).get("dtype", "float64")
    roundoff = ROUNDOFF_ULPS * float(np.finfo(getattr(np, dtype, np.float64)).eps)
    early = float(groups["early relative Δ"].max())
    parted = groups["apart from iteration"].dropna()
    if early <= roundoff:
        where = (f"they part only from iteration {_g(float(parted.min()))} on (median "
                 f"{_g(float(parted.median()))})" if len(parted) else "they part later")
        return (f"invariant to r up to round-off: over iterations 0–{T.EARLY_ITERATIONS} the runs agree to "
                f"{_g(early)} (relative; {dtype} round-off ≤ {_g(roundoff)}); {where}, as round-off amplified by "
                "the dynamics does, not a dependence on r (Y = ∇²F·S is linear in S)")
    if early > DEPENDENCE_EARLY:  # orders of magnitude beyond round-off in the very first steps
        return (f"NOT invariant to r: the runs differ by {_g(early)} (relative) within iterations "
                f"0–{T.EARLY_ITERATIONS}, orders of magnitude above {dtype} round-off ({_g(roundoff)}), although "
                "Y = ∇²F·S is linear in S: r changes the computation (a control run at r one ulp apart would "
                "confirm it)")
    # Beyond the fixed allowance, but not by much. That alone does not show a dependence on r: an ill-conditioned
    # step (a pair-filter decision at its threshold, m close to d) turns a one-ulp change of r into a visible one
    # at once. Only a control run (r one ulp apart) could tell; the study holds none, so no verdict is claimed.
    return (f"not decided: the runs differ by {_g(early)} (relative) within iterations 0–{T.EARLY_ITERATIONS}, "
            f"more than the fixed {dtype} round-off allowance ({_g(roundoff)}) but far from a real change; an "
            "ill-conditioned step (a pair filter deciding at its threshold, m close to d) amplifies round-off "
            "that fast too, and without a control run at r one ulp apart (e.g. radius: [1.0, 1.0000000000000002]) "
            "the data cannot tell that from a dependence on r; the theory says none (Y = ∇²F·S is linear in S)")


def _cost(study: StudyResults) -> list[Finding]:
    ct = T.cost_table(study)
    th = T.theory_table(study)
    out = []
    for problem, c in ct.groupby("problem", sort=False):
        fast = c.loc[c["ms / iteration"].idxmin()]
        slow = c.loc[c["ms / iteration"].idxmax()]
        if len(c) == 1:
            text = (f"per iteration, {fast['config']} costs {_g(fast['ms / iteration'])} ms and "
                    f"{_g(fast['grad-eq / iteration'])} gradient-equivalents")
        else:
            text = (f"per iteration, {fast['config']} is cheapest in time ({_g(fast['ms / iteration'])} ms, "
                    f"{_g(fast['grad-eq / iteration'])} gradient-equivalents) and {slow['config']} dearest "
                    f"({_g(slow['ms / iteration'])} ms, {_g(slow['grad-eq / iteration'])} gradient-equivalents)")
        t = th[th["problem"] == problem] if len(th) else th
        if len(t):
            size = study.problem_size(problem)
            head = (f". Measured gradient-equivalents per iteration vs the poster's cost / nd at n = {size['n']}, "
                    f"d = {size['d']} and the measured κ")
            if len(t) <= MAX_LISTED:
                text += head + ": " + "; ".join(
                    f"{r['config']} {_g(r['measured grad-eq / iteration'])} vs {_g(r['cost / nd'])}"
                    for _, r in t.iterrows())
            else:  # one ratio range instead of a pair per configuration
                ratio = (pd.to_numeric(t["measured grad-eq / iteration"], errors="coerce")
                         / pd.to_numeric(t["cost / nd"], errors="coerce")).replace([np.inf, -np.inf], np.nan).dropna()
                text += (head + f", over {len(t)} configurations: measured / poster from {_g(ratio.min())} to "
                         f"{_g(ratio.max())} (median {_g(ratio.median())}; every pair in tables/cost_poster.csv)"
                         if len(ratio) else head + ": not comparable here (tables/cost_poster.csv)")
        out.append(Finding(f"Cost, {problem}", text + "."))
    return out


def _anchors(study: StudyResults) -> list[Finding]:
    ap = T.anchor_pairs(study)
    out = []
    for _, r in ap.iterrows():
        out.append(Finding(f"Anchors, {r['problem']}",
                           f"{r['ours']} vs {r['anchor']} from the same {r['common seeds']} initial point(s): "
                           f"same outcome on {r['same outcome']}, solved {r['solved (ours)']} vs "
                           f"{r['solved (anchor)']}; median final "
                           f"loss {_g(r['median final loss (ours)'])} vs {_g(r['median final loss (anchor)'])} "
                           f"(median |Δ| {_g(r['median |Δ final loss|'])})."))
    return out


def _eigen(study: StudyResults) -> list[Finding]:
    et = T.eigen_table(study.eigen)
    if et.empty:
        return []
    out = []
    closer = {"s-lsr1": 0, "lsr1": 0, "sr1": 0}
    npts = 0
    for point, g in et.groupby("point", sort=False):
        g = g.set_index("matrix")
        if "hessian" not in g.index:
            continue
        npts += 1
        h = g.loc["hessian"]
        parts = [f"true Hessian λ ∈ [{_g(h['λ_min'])}, {_g(h['λ_max'])}] ({int(h['negative'])} negative)"]
        errs = {}
        for m, label in (("s-lsr1", "S-LSR1"), ("lsr1", "LSR1"), ("sr1", "SR1")):
            if m in g.index:
                r = g.loc[m]
                parts.append(f"{label} [{_g(r['λ_min'])}, {_g(r['λ_max'])}]")
                errs[m] = abs(r["λ_min"] - h["λ_min"]) + abs(r["λ_max"] - h["λ_max"])
        if errs:
            closer[min(errs, key=errs.get)] += 1
        loss = f", loss {_g(h['loss'], 4)}" if "loss" in g.columns else ""
        out.append(Finding(f"Spectra, {point}", f"iteration {int(h['iteration'])}{loss}: " + "; ".join(parts) + "."))
    if npts and any(closer.values()):
        best = max(closer, key=closer.get)
        label = {"s-lsr1": "S-LSR1", "lsr1": "LSR1", "sr1": "SR1"}[best]
        verdict = ("consistent with the poster: the sampled matrix recovers the extreme eigenvalues, "
                   "negative ones included"
                   if best == "s-lsr1" else "not what the poster shows (there S-LSR1 is closest)")
        out.append(Finding("Spectra", f"{label} has the extreme eigenvalues closest to the true Hessian's at "
                                      f"{closer[best]} of {npts} points: {verdict}."))
    return out


def _cost_sentence(r: pd.Series) -> str:
    """One row of :func:`analysis.costs.cost_ratios` as a sentence: the measured ratios with their numbers, the
    poster's model, the projection (named as one) and whether the ratio is within the "comparable" bound."""
    within = f"within {C.COMPARABLE:g}×"

    def verdict(x):
        return "n/a" if x is None or math.isnan(x) else "yes" if x <= C.COMPARABLE else "no"

    m, poster = r["m"], r["poster's model ratio"]
    return (f"{r['pair']} at m = {m}, {r['Option']}, measured on {r['device']}: "
            f"{_g(r['ratio / iteration'])}× the wall time per iteration ({_g(r['ms / iteration, sampled'])} vs "
            f"{_g(r['ms / iteration, classical'])} ms) and {_g(r['ratio / accepted step'])}× per accepted step "
            f"({_g(r['ms / accepted step, sampled'])} vs {_g(r['ms / accepted step, classical'])} ms); "
            f"{_g(r['grad-eq ratio / iteration'])}× the gradient-equivalents per iteration "
            f"({_g(r['grad-eq / iteration, sampled'])} vs {_g(r['grad-eq / iteration, classical'])}); the poster's "
            f"model gives {_g(poster)}×; projected, not measured, with the {m} pair products "
            f"ideally parallel (t_pairs / m): {_g(r['projected ratio / iteration (t_pairs / m)'])}× per iteration. "
            f"Comparable ({within} per iteration): {verdict(r['ratio / iteration'])} as measured, "
            f"{verdict(r['projected ratio / iteration (t_pairs / m)'])} as projected")


def _cost_claim(study: StudyResults) -> list[Finding]:
    """"The per-iteration cost of the sampled methods is comparable to that of the classical limited-memory
    variants", as measured ratios at equal m: a sentence per (problem, pair, Option, m) when there are a few,
    else one per problem and pair with the range of the ratios (every row in tables/cost_ratios.csv)."""
    cr = C.cost_ratios(study)
    if cr.empty:
        return _no_equal_m(study)
    if len(cr) <= MAX_LISTED:
        return [Finding(f"Cost claim, {r['problem']}", _cost_sentence(r) + ".") for _, r in cr.iterrows()]
    out = []
    for (problem, pair), g in cr.groupby(["problem", "pair"], sort=False):
        measured = g["ratio / iteration"].dropna()
        projected = g["projected ratio / iteration (t_pairs / m)"].dropna()
        text = (f"{pair} over {len(g)} (Option, m) combinations: measured wall-time ratio per iteration from "
                f"{_g(measured.min())}× to {_g(measured.max())}× (median {_g(measured.median())}×), within "
                f"{C.COMPARABLE:g}× ('comparable') in {int((measured <= C.COMPARABLE).sum())} of {len(measured)}; "
                f"gradient-equivalents ratio per iteration median {_g(g['grad-eq ratio / iteration'].median())}×; "
                f"projected, not measured, with the m pair products ideally parallel: median "
                f"{_g(projected.median())}× (every row in tables/cost_ratios.csv)")
        out.append(Finding(f"Cost claim, {problem}", text + "."))
    return out


def _no_equal_m(study: StudyResults) -> list[Finding]:
    """A pair whose two methods both ran, never at a common m (a tuned study's choices often differ): said, so
    the missing ratio is not taken for a missing method."""
    out = []
    t = study.trials
    for sampled, classical in C.PAIRS.items():
        ms = {m: sorted(pd.to_numeric(t.loc[t["method"] == m, "memory"], errors="coerce").dropna().unique())
              for m in (sampled, classical)} if "memory" in t else {}
        if ms and ms[sampled] and ms[classical]:
            shown = {m: ", ".join(f"{v:g}" for v in vals) for m, vals in ms.items()}
            out.append(Finding("Cost claim", f"{sampled} ran at m = {shown[sampled]} and {classical} at m = "
                                             f"{shown[classical]} only: no ratio at equal m here "
                                             "(analysis.costs.cost_ratios of every stage pools a tuned study's "
                                             "tuning trials)."))
    return out


def _tuning(results: StudyResults) -> list[Finding]:
    """A tuned study's tuning stage in one finding: the budget every method got, what was chosen on what,
    where each method's tuning curve found its best, and which trials the comparison uses."""
    if not results.tuned:
        return []
    chosen = TU.chosen_table(results)
    if chosen.empty:
        return []
    metric, mode, _ = TU.selection(results)
    tuning = results.stage(TUNING).trials
    budget = (results.tuning or {}).get("trials")
    budget = int(budget) if budget is not None else int(chosen["configurations tried"].max())
    apart = (results.tuning or {}).get("separate") or []
    seeds = int(tuning["seed"].nunique())
    parts = []
    for _, r in chosen.dropna(subset=["chosen #"]).iterrows():
        score = r["score (recorded)"] if pd.notna(r["score (recorded)"]) else r["score (from trials.parquet)"]
        detail = "; ".join(x for x in (r["options"], f"score {_g(float(score))}") if x)
        parts.append(f"{r['variant']} #{int(r['chosen #'])} ({detail})")
    who = f"every method (each value of {', '.join(apart)} apart)" if apart else "every method"
    text = (f"{who} was given up to {budget} configurations, each on the same {seeds} tuning seed(s) "
            f"({len(tuning)} tuning trials), chosen on the mean {metric} ({'lower' if mode == 'min' else 'higher'} "
            f"is better); chosen: {_listed(parts, 'tuning_chosen')}")
    curve = TU.tuning_curve(results)
    late = list(dict.fromkeys(str(v) for (v, _), g in curve.groupby(["variant", "problem"], sort=False)
                              if len(g) > 1 and _improved_last(g, mode)))
    if late:
        text += (f"; still improving at the last configuration on some problem: {_listed(late, 'tuning_curve')} "
                 "(a larger budget might help)")
    if EVALUATION in results.stages:
        ev = results.stage(EVALUATION).trials
        text += (f". Methods are compared on the evaluation stage only: {len(ev)} trials on "
                 f"{int(ev['seed'].nunique())} fresh seed(s); the tuning trials appear only in figure 8")
    else:
        text += ". No evaluation stage yet: the comparisons use the tuning trials"
    return [Finding("Tuning", text + ".")]


#: a tuning curve's last step counts as an improvement beyond this relative change (Option II runs that differ
#: only in r score the same up to round-off)
IMPROVED = 1e-6


def _improved_last(curve: pd.DataFrame, mode: str) -> bool:
    """Whether a tuning curve's last configuration improved on the best of the ones before it, by more than
    round-off (:data:`IMPROVED`, relative)."""
    best = curve["best so far"].to_numpy(dtype=float)
    if not np.isfinite(best[-1]):
        return False
    gain = (best[-2] - best[-1]) if mode == "min" else (best[-1] - best[-2])
    return bool(gain > IMPROVED * max(abs(best[-1]), np.finfo(float).tiny)) if np.isfinite(best[-2]) else True


def findings(results: StudyResults) -> list[Finding]:
    """Every finding the data supports, in report order: the methods compared on ``results.comparison()`` (a
    tuned study's evaluation stage, any other study's every trial), then the tuning stage's own finding."""
    study = results.comparison()
    out = []
    parts = [(part, study) for part in (_overview, _per_problem, _claims, _plateau, _invariance, _cost, _cost_claim,
                                        _anchors, _eigen)] + [(_tuning, results)]
    for part, data in parts:
        try:
            out += part(data)
        except (KeyError, ValueError, IndexError) as e:  # a partial study may lack what one finding needs
            out.append(Finding(part.__name__.strip("_").capitalize(), f"not computed ({type(e).__name__}: {e})."))
    return out
