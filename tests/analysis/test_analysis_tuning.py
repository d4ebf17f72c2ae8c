"""A tuned study's two stages: methods are compared on the evaluation stage only, the tuning stage is shown as
tuning curves and the configurations chosen; a plain study (no stage column) reports as before. The tuned study
is written by hand (conftest.write_tuned_study), following the runner's contract."""
import dataclasses
import re

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from analysis import figures as F
from analysis import tables as T
from analysis import tuning as TU
from analysis.findings import findings
from analysis.load import load_results
from analysis.report import CAPTIONS

from tuned_study import EVALUATION_SEEDS, TUNED_CHOSEN, TUNED_CONFIGS, TUNING_LOSSES, TUNING_SEEDS, write_tuned_study

#: the tuning configurations the evaluation never ran (lsr1 #2 scores 1e-9 on toy-small and solves it: it would
#: rank first if a tuning row leaked into a comparison)
TUNING_ONLY = ["s-lsr1 [#0, m=4, r=1, Option II]", "s-lsr1 [#1, m=8, r=0.01, Option I]", "lsr1 [#0, m=4]",
               "lsr1 [#2, m=16]"]


@pytest.fixture(scope="module")
def tuned(tuned_dir):
    return load_results(tuned_dir)


def test_both_stages_load_with_readable_labels(tuned):
    assert tuned.stages == ["tuning", "evaluation"] and tuned.tuned
    assert tuned.trials["stage"].value_counts().to_dict() == {"tuning": 24, "evaluation": 40}
    assert str(tuned.trials["tuning_config"].dtype) == "Int64"
    per_trial = tuned.iterations.groupby("trial_id")["stage"].first()
    assert per_trial.to_dict() == tuned.trials.set_index("trial_id")["stage"].to_dict()
    study = tuned.comparison()
    assert set(study.trials["stage"]) == {"evaluation"} and len(study.trials) == 40
    assert study.configs == ["s-lsr1", "lsr1"]  # an evaluation trial reads as its method
    tuning = tuned.stage("tuning")
    assert set(tuning.configs) == set(TUNING_ONLY) | {"s-lsr1 [#2, m=8, r=1, Option II]", "lsr1 [#1, m=8]"}
    assert set(tuning.iterations["trial_id"]) == set(tuning.trials["trial_id"])
    assert tuned.tuning["chosen"]["lsr1"]["tuning_config"] == 1
    assert study.comparison().trials.equals(study.trials)  # idempotent
    with pytest.raises(ValueError, match="stage='tune' is not one of"):
        tuned.stage("tune")


@pytest.mark.slow
def test_comparisons_use_the_evaluation_rows_only(tuned, tuned_report):
    assert tuned_report.errors == {}
    assert len(tuned_report.study.trials) == 40 and len(tuned_report.results.trials) == 64
    for name in ("summary", "ranking", "robustness", "plateau", "cost_measured", "cost_poster", "sensitivity"):
        table = tuned_report.tables[name]
        assert not table.empty, name
        if "config" in table:
            assert set(table["config"]) <= {"s-lsr1", "lsr1"}, name
    ranking = tuned_report.tables["ranking"]
    assert (ranking["trials"] == len(EVALUATION_SEEDS)).all()
    assert list(ranking[ranking["problem"] == "toy-small"]["config"]) == ["s-lsr1", "lsr1"]
    text = " ".join(str(f) for f in tuned_report.findings)
    for f in tuned_report.findings:
        if f.table is not None:
            assert not set(f.table["config"]) & set(TUNING_ONLY)
    page = tuned_report.path.read_text(encoding="utf-8")
    ranked_part = page[page.index("<h2>Findings</h2>"):page.index('<h2 id="fig8-tuning">')]
    for label in TUNING_ONLY:
        assert label not in text and label not in ranked_part
    assert "lsr1 [#2, m=16]" in page[page.index('<h2 id="fig8-tuning">'):]  # shown where it belongs
    # the profiles are over evaluation instances: (problem, evaluation seed)
    from analysis import profiles

    costs = profiles.instance_costs(tuned.comparison(), "iterations")
    assert set(costs.index.get_level_values("seed")) == set(EVALUATION_SEEDS)


def test_the_tuning_curve_is_the_best_so_far_and_matches_the_hand_computation(tuned):
    curve = TU.tuning_curve(tuned)
    assert len(curve) == len(TUNING_LOSSES)
    for (problem, method), g in curve.groupby(["problem", "method"]):
        assert list(g["k"]) == [1, 2, 3]
        best = g["best so far"].to_numpy()
        assert (np.diff(best) <= 0).all()  # mode min: never worse
        expected = [np.mean(TUNING_LOSSES[problem, method, i]) if not np.isnan(TUNING_LOSSES[problem, method, i]).any()
                    else np.inf for i in range(3)]
        assert g["score"].to_numpy() == pytest.approx(expected)
        assert best == pytest.approx(np.minimum.accumulate(expected))
    c = curve.set_index(["problem", "method", "k"]).sort_index()
    # by hand: toy-medium, s-lsr1: scores 0.4, 0.5, 0.2 -> best 0.4, 0.4, 0.2; lsr1 #2 diverged on a seed: ∞
    assert list(c.loc[("toy-medium", "s-lsr1"), "best so far"]) == pytest.approx([0.4, 0.4, 0.2])
    assert c.loc[("toy-medium", "lsr1", 3), "score"] == np.inf
    assert list(c.loc[("toy-medium", "lsr1"), "best so far"]) == pytest.approx([0.7, 0.3, 0.3])
    assert c.loc[("toy-small", "lsr1", 3), "best so far"] == pytest.approx(1e-9)
    assert set(curve.loc[curve["chosen"], "config"]) == {"s-lsr1 [#2, m=8, r=1, Option II]", "lsr1 [#1, m=8]"}


def test_the_chosen_table_matches_the_metadata(tuned):
    chosen = TU.chosen_table(tuned).set_index("method")
    assert list(chosen.index) == ["s-lsr1", "lsr1"]
    for method, (number, score) in TUNED_CHOSEN.items():
        row = chosen.loc[method]
        assert row["chosen #"] == number
        assert row["score (recorded)"] == pytest.approx(score)
        assert row["score (from trials.parquet)"] == pytest.approx(score)  # the platform's rule, recomputed
        assert row["configurations tried"] == row["budget B"] == len(TUNED_CONFIGS[method])
        assert row["tuning trials"] == 3 * 2 * len(TUNING_SEEDS) and row["tuning seeds"] == len(TUNING_SEEDS)
        assert row["evaluation trials"] == 2 * len(EVALUATION_SEEDS)
        assert row["metric"] == "best_loss (min)"
    assert chosen.loc["s-lsr1", "options"] == "m=8, r=1, Option II" and chosen.loc["lsr1", "options"] == "m=8"


@pytest.mark.slow
def test_the_report_draws_the_tuning_figure_its_tables_and_a_finding(tuned_report):
    assert "fig8-tuning" in tuned_report.figures and "fig8-tuning" not in tuned_report.skipped
    assert (tuned_report.out_dir / "tables" / "tuning_chosen.csv").is_file()
    assert len(tuned_report.tables["tuning_curve"]) == len(TUNING_LOSSES)
    page = tuned_report.path.read_text(encoding="utf-8")
    assert CAPTIONS["fig8-tuning"][:60] in page
    assert "<b>stages</b>: tuning (24 trials), evaluation (40 trials); methods compared on the evaluation stage" in page
    (tuning,) = [f for f in tuned_report.findings if f.topic == "Tuning"]
    assert "up to 3 configurations, each on the same 2 tuning seed(s) (24 tuning trials)" in tuning.text
    assert "s-lsr1 #2 (m=8, r=1, Option II; score 0.2), lsr1 #1 (m=8; score 0.35)" in tuning.text
    assert "compared on the evaluation stage only: 40 trials on 10 fresh seed(s)" in tuning.text
    fig = F.tuning_curves(tuned_report.results)
    assert [ax.get_yscale() for ax in fig.axes if ax.get_visible()] == ["log", "log"]
    line = fig.axes[1].get_lines()[0]  # toy-medium, s-lsr1: the best so far, held to the panel's edge
    assert list(line.get_ydata()) == pytest.approx([0.4, 0.4, 0.2, 0.2])


@pytest.mark.slow
def test_a_plain_study_without_stage_columns_reports_as_before(study_dir, tmp_path, copy_study):
    """Files from before stages existed: every trial is "main", the tables are those of the same files with the
    stage columns, and figure 8 is skipped with its one-line reason."""
    d = copy_study(study_dir, tmp_path / "old")
    for name in ("iterations.parquet", "trials.parquet"):  # the same files, metadata kept, minus the two columns
        table = pq.read_table(d / name)
        pq.write_table(table.drop_columns([c for c in ("stage", "tuning_config") if c in table.column_names]),
                       d / name)
    old, new = load_results(d), load_results(study_dir)
    assert "stage" not in pd.read_parquet(d / "trials.parquet")
    assert old.stages == ["main"] and not old.tuned and old.tuning is None and old.comparison() is old
    assert set(old.trials["stage"]) == {"main"} and old.trials["tuning_config"].isna().all()
    assert old.configs == new.configs and "#" not in " ".join(old.configs)
    for table in (T.summary_table, T.ranking_table, T.cost_table):
        pd.testing.assert_frame_equal(table(old), table(new))
    assert [str(f) for f in findings(old)] == [str(f) for f in findings(new)]
    assert not any(f.topic == "Tuning" for f in findings(old))
    fig = F.tuning_curves(old)
    assert fig.skipped and "not a tuned study" in fig.skipped
    assert TU.tuning_curve(old).empty and TU.chosen_table(old).empty


def test_a_tuned_study_without_its_evaluation_stage_compares_the_tuning_trials(tmp_path):
    d = write_tuned_study(tmp_path / "running")
    for name in ("iterations.parquet", "trials.parquet"):  # the evaluation stage not written yet
        table = pq.read_table(d / name)
        pq.write_table(table.filter(pc.equal(table["stage"], "tuning")), d / name)
    results = load_results(d)
    assert results.stages == ["tuning"] and results.comparison() is results
    (tuning,) = [f for f in findings(results) if f.topic == "Tuning"]
    assert "No evaluation stage yet" in tuning.text
    assert TU.chosen_table(results).set_index("method").loc["lsr1", "chosen #"] == 1  # from the metadata


@pytest.mark.slow
def test_the_tuning_figure_is_skipped_in_a_plain_report_and_its_title_fits(report, tuned):
    assert set(report.skipped) == {"fig8-tuning", "fig9-heldout"}  # the toy problems have no test set
    assert "not a tuned study" in report.skipped["fig8-tuning"]
    page = report.path.read_text(encoding="utf-8")
    note, _ = re.findall(r'<p class="nodata">Figure not drawn: ([^<]*)</p>', page)
    assert "not a tuned study" in note
    from test_analysis_scale import _outside

    assert _outside(F.tuning_curves(tuned)) == []


def test_options_tuned_apart_get_their_own_curve_and_choice(tuned):
    """``tuning.separate: [sampling]``: Option I and II of S-LSR1 are tuned as two variants (the platform names
    them ``s-lsr1/sampling=hvp``), each with its own k and its own choice; LSR1, without the option, is one."""
    record = {**tuned.tuning, "separate": ["sampling"],
              "chosen": {"s-lsr1/sampling=hvp": {"method": "s-lsr1", "tuning_config": 2, "score": 0.2,
                                                 "options": TUNED_CONFIGS["s-lsr1"][2]},
                         "s-lsr1/sampling=grad-diff": {"method": "s-lsr1", "tuning_config": 1, "score": 0.4,
                                                       "options": TUNED_CONFIGS["s-lsr1"][1]},
                         "lsr1": {"method": "lsr1", "tuning_config": 1, "score": 0.35,
                                  "options": TUNED_CONFIGS["lsr1"][1]}}}
    apart = dataclasses.replace(tuned, metadata={**tuned.metadata, "sqn_ray.tuning": record})
    curve = TU.tuning_curve(apart)
    medium = curve[curve["problem"] == "toy-medium"].set_index(["variant", "k"]).sort_index()
    assert set(curve["variant"]) == {"s-lsr1 [Option I]", "s-lsr1 [Option II]", "lsr1"}
    # Option II: configurations #0 (0.4) and #2 (0.2) are its k = 1, 2; Option I: #1 (0.5) alone
    assert list(medium.loc["s-lsr1 [Option II]", "tuning_config"]) == [0, 2]
    assert list(medium.loc["s-lsr1 [Option II]", "best so far"]) == pytest.approx([0.4, 0.2])
    assert list(medium.loc["s-lsr1 [Option I]", "best so far"]) == pytest.approx([0.5])
    assert list(medium.loc["lsr1", "best so far"]) == pytest.approx([0.7, 0.3, 0.3])
    chosen = TU.chosen_table(apart).set_index("variant")
    assert list(chosen.index) == ["s-lsr1 [Option I]", "s-lsr1 [Option II]", "lsr1"]
    assert chosen.loc["s-lsr1 [Option I]", "score (from trials.parquet)"] == pytest.approx(np.mean([0.3, 0.5]))
    assert chosen.loc["s-lsr1 [Option II]", "configurations tried"] == 2
    assert chosen.loc["s-lsr1 [Option II]", "evaluation trials"] == 20  # the evaluation ran #2 (Option II) only
    assert chosen.loc["s-lsr1 [Option I]", "evaluation trials"] == 0
    (finding,) = [f for f in findings(apart) if f.topic == "Tuning"]
    assert finding.text.startswith("every method (each value of sampling apart) was given up to 3 configurations")
    fig = F.tuning_curves(apart)
    assert {ln.get_label() for ln in fig.axes[0].get_lines()} == set(chosen.index)


def test_a_round_off_gain_is_no_improvement():
    from analysis.findings import _improved_last

    curve = pd.DataFrame({"best so far": [0.7, 0.48488471951085876, 0.4848847195105158]})  # Option II across r
    assert not _improved_last(curve, "min")
    assert _improved_last(pd.DataFrame({"best so far": [0.7, 0.5, 0.4]}), "min")
    assert _improved_last(pd.DataFrame({"best so far": [np.inf, 0.4]}), "min")
    assert not _improved_last(pd.DataFrame({"best so far": [0.9, 0.9]}), "max")
