"""The report of a small real study: every figure and table is there, computed from the data, and moves
when the data moves; partial studies still give a report."""
import dataclasses
import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import figures as F
from analysis import tables as T
from analysis.findings import findings
from analysis.load import load_results
from analysis.report import TABLE_TITLES, _fmt
from sqn_ray.cli import main

pytestmark = pytest.mark.slow

TABLES = ("summary", "robustness", "plateau", "sensitivity", "radius_invariance", "cost_measured", "cost_poster",
          "cost_ratios", "eigen", "anchors", "anchor_pairs", "trials")


def test_every_figure_and_table_is_in_the_report_and_beside_it(report):
    assert report.errors == {}
    assert report.no_data == {}, "the test study has data for every figure"
    assert set(report.skipped) == {"fig8-tuning", "fig9-heldout"}, "a plain toy study: no tuning, no test set"
    page = report.path.read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == len(F.FIGURES) - 2 == 7
    for stem, _, _ in F.FIGURES:
        assert f'id="{stem}"' in page
        if stem in report.skipped:
            continue
        png, svg = report.out_dir / f"{stem}.png", report.out_dir / f"{stem}.svg"
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 20_000
        assert b"<svg" in svg.read_bytes()[:2000]
    for name in TABLES:
        assert name in report.tables and not report.tables[name].empty, name
        assert (report.out_dir / "tables" / f"{name}.csv").is_file()
        if name in TABLE_TITLES:
            assert html.escape(TABLE_TITLES[name]) in page
    # self-contained: nothing fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page and "<link" not in page
    assert len(report.findings) >= 8


def test_numbers_in_the_report_are_those_of_the_parquet(report, study_dir):
    page = report.path.read_text(encoding="utf-8")
    trials = pd.read_parquet(study_dir / "trials.parquet")
    it = pd.read_parquet(study_dir / "iterations.parquet")
    # median final loss of LBFGS over its seeds, straight from trials.parquet
    lbfgs = trials.loc[trials.method == "lbfgs", "final_loss"].median()
    summary = report.tables["summary"].set_index("config")
    assert summary.loc["lbfgs", "median final loss"] == pytest.approx(lbfgs)
    assert f"<td>{_fmt(float(lbfgs))}</td>" in page
    # S-LSR1 solved count in the findings text
    s = trials[trials.method == "s-lsr1"]
    k = int(s.iters_to_target.notna().sum())
    assert any(f"S-LSR1 reached the target in {k}/{len(s)}" in str(f) for f in report.findings)
    # per-iteration cost from the counters and clocks of iterations.parquet
    cost = report.tables["cost_measured"].set_index("config")
    lb = it[it.method == "lbfgs"].sort_values(["trial_id", "iteration"])
    step = lb.groupby("trial_id")[["wall_time", "grad_equivalents", "n_hvp"]].diff().assign(trial_id=lb.trial_id)
    per_trial = step.dropna().groupby("trial_id").mean()
    assert cost.loc["lbfgs", "ms / iteration"] == pytest.approx(1e3 * per_trial.wall_time.median())
    assert cost.loc["lbfgs", "grad-eq / iteration"] == pytest.approx(per_trial.grad_equivalents.median())
    assert cost.loc["lbfgs", "grad-eq Hessian-vector products"] == 0
    hvp = cost.loc["s-lsr1 [r=1, Option II]"]
    assert hvp["grad-eq Hessian-vector products"] == pytest.approx(6.0)  # m = 6 HVPs per iteration
    # the poster's table at n = 100, d = 36, m = 6: LBFGS = nd + 4md + κ nd
    poster = report.tables["cost_poster"].set_index("config")
    kappa = poster.loc["lbfgs", "measured κ"]
    assert poster.loc["lbfgs", "cost (flops)"] == pytest.approx(100 * 36 + 4 * 6 * 36 + kappa * 100 * 36)
    assert poster.loc["lbfgs", "storage (floats)"] == 2 * 6 * 36
    # Option II is invariant to r in this real study, Option I is not
    inv = report.tables["radius_invariance"].groupby("sampling")["max |Δ loss|"].max()
    assert inv["hvp"] <= 1e-8 < inv["grad-diff"]


def test_changing_the_data_changes_the_numbers(study_dir, tmp_path, copy_study):
    base = load_results(study_dir)
    d = copy_study(study_dir, tmp_path / "perturbed")
    it = pd.read_parquet(d / "iterations.parquet")
    tr = pd.read_parquet(d / "trials.parquet")
    eig = pd.read_parquet(d / "eigen.parquet")
    it["loss"] *= 1.5
    it["wall_time"] *= 2.0
    tr[["final_loss", "best_loss"]] *= 1.5
    first = tr.index[tr.iters_to_target.notna()][0]
    tr.loc[first, "iters_to_target"] += 7
    eig["eigenvalue"] *= 2.0
    it.to_parquet(d / "iterations.parquet")
    tr.to_parquet(d / "trials.parquet")
    eig.to_parquet(d / "eigen.parquet")
    new = load_results(d)

    a, b = T.summary_table(base), T.summary_table(new)
    assert np.allclose(b["median final loss"], 1.5 * a["median final loss"])
    assert not np.allclose(a["median iterations to target"].fillna(0), b["median iterations to target"].fillna(0))
    ca, cb = T.cost_table(base), T.cost_table(new)
    assert np.allclose(cb["ms / iteration"], 2 * ca["ms / iteration"])
    assert np.allclose(cb["grad-eq / iteration"], ca["grad-eq / iteration"])
    ea, eb = T.eigen_table(base.eigen), T.eigen_table(new.eigen)
    assert np.allclose(eb["λ_min"], 2 * ea["λ_min"]) and np.allclose(eb["λ_max"], 2 * ea["λ_max"])
    fa, fb = [str(f) for f in findings(base)], [str(f) for f in findings(new)]
    assert fa != fb and any("Spectra" in x for x in set(fb) - set(fa))
    assert fa[0].startswith("Study: ")  # the overview finding's topic, as the report prints it
    # the figures draw the data: the convergence figure's first loss curve is scaled too
    ya = F.convergence(base).axes[0].get_lines()[0].get_ydata()
    yb = F.convergence(new).axes[0].get_lines()[0].get_ydata()
    assert np.allclose(np.asarray(yb, float), 1.5 * np.asarray(ya, float), equal_nan=True)


def test_partial_study_without_trials_file_or_eigen_still_reports(study_dir, tmp_path, capsys):
    d = tmp_path / "partial"
    d.mkdir()
    it = pd.read_parquet(study_dir / "iterations.parquet")
    keep = it[it.method.isin(["s-lsr1", "lbfgs"])]
    # a study being written: the last trial has only its first rows
    last = keep.trial_id.max()
    keep = keep[(keep.trial_id != last) | (keep.iteration < 5)]
    keep.to_parquet(d / "iterations.parquet")
    rc = main(["report", str(d), "-o", str(tmp_path / "out"), "--format", "png"])
    out = capsys.readouterr().out
    assert rc == 0, out
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert page.count("No data for this figure") == 2  # no eigen.parquet, no anchors in the study
    assert "fig5-eigen: no data" in out and "fig6-anchors: no data" in out
    assert page.count('src="data:image/png;base64,') == len(F.FIGURES) - 3  # fig3: a single m × r cell; fig8; fig9
    study = load_results(d)
    assert set(study.methods) == {"s-lsr1", "lbfgs"} and len(study.trials) == keep.trial_id.nunique()


def test_big_grids_show_the_best_config_of_each_method(study_dir):
    from analysis.figures import _select_configs

    study = load_results(study_dir)
    assert _select_configs(study) == (study.configs, "")  # 7 configs: all shown
    chosen, note = _select_configs(study, limit=4)
    assert [c.split(" [")[0] for c in chosen] == study.methods and "4 of 7 configs" in note
    # the S-LSR1 config kept is one that solved every seed
    s = T.summary_table(study).set_index("config")
    assert s.loc[chosen[0], "solved %"] == 100


def _radius_study(curves: dict[float, list[float]], dtype: str = "float64"):
    """A StudyResults of S-LSR1 Option II runs that differ only in r, with the given loss curves."""
    from analysis.load import StudyResults

    trials, rows = [], []
    for i, (r, losses) in enumerate(curves.items()):
        tid = f"t{i}"
        trials.append({"trial_id": tid, "problem": "toy-small", "method": "s-lsr1", "sampling": "hvp", "memory": 2,
                       "seed": 0, "radius": r, "solved": False, "iters_to_target": np.nan, "config": f"r={r}"})
        rows += [{"trial_id": tid, "iteration": k, "loss": v} for k, v in enumerate(losses)]
    return StudyResults(path=Path("."), iterations=pd.DataFrame(rows), trials=pd.DataFrame(trials),
                        metadata={"sqn_ray.study": {"dtype": dtype}})


@pytest.mark.parametrize("perturb, dtype, verdict", [
    (lambda k: 0.0, "float64", "invariant to r up to round-off, as the theory says"),
    # agree to the last bits, then the difference grows tenfold per iteration: round-off amplified
    (lambda k: 1e-16 * 10.0 ** k, "float64", "invariant to r up to round-off: over iterations 0–3"),
    (lambda k: 1e-7 * 3.0 ** k, "float32", "invariant to r up to round-off: over iterations 0–3"),
    # different from the first step on: r changes the computation
    (lambda k: 1e-3 * (k > 0), "float64", "NOT invariant to r: the runs differ by 0.00063 (relative)"),
    (lambda k: 1e-3 * (k > 0), "float32", "NOT invariant to r"),
    # a little beyond the allowance at once (an ill-conditioned step can do that to round-off): no verdict
    (lambda k: 1e-11 * 10.0 ** k * (k > 0), "float64", "not decided: the runs differ by"),
])
def test_option_ii_r_invariance_is_judged_against_round_off_before_it_is_claimed(perturb, dtype, verdict):
    """The report never calls round-off chaos a dependence on r (nor hides a real one): the control is whether
    the runs already differ, beyond the dtype's round-off, within their first steps."""
    from analysis.findings import _invariance

    base = [0.7 * 0.9 ** k for k in range(30)]
    study = _radius_study({1.0: base, 100.0: [v * (1 + perturb(k)) for k, v in enumerate(base)]}, dtype)
    (finding,) = _invariance(study)
    assert verdict in finding.text, finding.text
    if "up to round-off: over" in verdict:
        assert "part only from iteration" in finding.text and "not a dependence on r" in finding.text


def test_a_finding_lists_a_few_items_and_counts_the_rest():
    from analysis.findings import MAX_LISTED, _listed

    few = [f"c{i}" for i in range(MAX_LISTED)]
    assert _listed(few, "summary") == ", ".join(few)
    many = [f"c{i}" for i in range(80)]
    text = _listed(many, "plateau")
    assert text == f"{', '.join(many[:MAX_LISTED])} and {80 - MAX_LISTED} more (all in tables/plateau.csv)"


def test_the_heldout_figure_draws_test_metrics_carried_forward_between_evaluations(study_dir):
    """Figure 9 (the poster's MNIST panels): drawn only when the rows hold test metrics, evaluated every k-th
    iterate; between evaluations the last value is carried forward, never read as missing."""
    study = load_results(study_dir)
    assert getattr(F.heldout(study), "skipped", None)  # toy problems: no test set
    it = study.iterations.copy()
    every = it["iteration"] % 5 == 0
    it["test_loss"] = np.where(every, it["loss"] * 1.1, np.nan)
    it["test_accuracy"] = np.where(every, 0.5, np.nan)
    with_test = dataclasses.replace(study, iterations=it)
    fig = F.heldout(with_test)
    assert getattr(fig, "skipped", None) is None
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 4 * 2 * len(study.problems)  # 4 metrics x (epochs, wall time) per problem
    filled = it.assign(test_accuracy=it.groupby("trial_id")["test_accuracy"].ffill())
    long = F.resample(filled, "wall_time", "test_accuracy", log=True)
    assert set(long["y"].dropna()) == {0.5}
    # and its table: each run's last evaluated row and its end, medians over seeds, per problem x config
    from analysis import tables as T

    assert T.heldout_table(study).empty
    table = T.heldout_table(with_test)
    runs = it.groupby("trial_id").tail(1)
    assert len(table) == runs.groupby(["problem", "config"]).ngroups and table["trials"].sum() == len(runs)
    assert set(table["median test accuracy"]) == {0.5}
    last_eval = it[every].sort_values("iteration").groupby("trial_id").tail(1)
    first = table.iloc[0]
    mine = last_eval[(last_eval["problem"] == first["problem"]) & (last_eval["config"] == first["config"])]
    assert first["median test loss"] == pytest.approx(float(np.median(mine["loss"] * 1.1)))
