"""The tuning protocol: a tuning: block, each method's configurations, the choice, and both stages in Parquet."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sqn_ray.study import tuning as T
from sqn_ray.study.results import read_metadata
from sqn_ray.study.runner import run_study
from sqn_ray.study.spec import TUNING_FIRST_SEED, StudySpecError, parse_study

STUDIES = Path(__file__).resolve().parents[2] / "studies"

TUNED = {
    "name": "tuned",
    "problems": ["toy-small"],
    "methods": {"gd": {"lr": {"loguniform": [0.01, 10.0]}}, "s-lsr1": {"memory": [2, 4, 8]}, "lsr1": {}},
    "seeds": 2,
    "budget": {"iterations": 12},
    "tuning": {"trials": 2, "seeds": 1},
}


def _tuned(**over):
    return parse_study({**TUNED, **over})


# ------------------------------------------------------------------------------------------------ the file
def test_a_tuning_block_takes_ranges_without_a_random_search_and_counts_both_stages():
    study = _tuned()
    assert study.tuning == {"trials": 2, "seeds": [TUNING_FIRST_SEED], "seed": 0, "metric": "loss", "mode": "min"}
    # 2 gd draws + 2 of the 3 s-lsr1 cells + lsr1's one configuration, on 1 tuning seed; 3 methods × 2 seeds
    assert T.stage_trials(study) == {"tuning": 5, "evaluation": 6}
    assert study.num_trials == 11


@pytest.mark.parametrize("tuning, path, words", [
    ({"seeds": 2}, "tuning.trials", "missing"),
    ({"trials": 0}, "tuning.trials", ">= 1"),
    ({"trials": 2, "seeds": [5, 1]}, "tuning.seeds[1]", "also an evaluation seed"),
    ({"trials": 2, "budget": 3}, "tuning.budget", "trials"),
    ({"trials": 2, "metric": "speed"}, "tuning.metric.name", "best_loss"),
])
def test_a_bad_tuning_block_names_its_field(tuning, path, words):
    with pytest.raises(StudySpecError) as e:
        _tuned(tuning=tuning)
    assert path in str(e.value) and words in str(e.value)


def test_a_tuned_study_refuses_a_search_algorithm_and_a_scheduler():
    with pytest.raises(StudySpecError, match="search.algorithm"):
        _tuned(search={"algorithm": "random", "num_samples": 2})
    with pytest.raises(StudySpecError, match="scheduler"):
        _tuned(scheduler={"type": "asha"})


def test_a_plain_study_keeps_its_definition_and_fingerprint_fields():
    plain = parse_study({k: v for k, v in TUNED.items() if k != "tuning"} | {"methods": ["gd", "lsr1"]})
    body = plain.to_json()
    assert plain.tuning is None and plain.stage == "main"
    assert not {"tuning", "stage", "configurations"} & set(body)  # so earlier studies' fingerprints still match


# ------------------------------------------------------------------------------------------------ the draws
def test_configurations_small_grids_whole_large_grids_without_repeats_ranges_in_bounds():
    study = _tuned(methods={"gd": {"lr": {"loguniform": [0.01, 10.0]}}, "lsr1": {"memory": [2, 4]},
                            "s-lsr1": {"memory": [2, 4, 8, 16], "radius": [0.1, 1.0, 10.0]}},
                   tuning={"trials": 5, "seeds": 1})
    configs = T.draw_configurations(study)
    assert [n for n, _ in configs["lsr1"]] == [0, 1]
    assert [o for _, o in configs["lsr1"]] == [{"memory": 2}, {"memory": 4}]  # the whole grid, in grid order
    cells = [tuple(sorted(o.items())) for _, o in configs["s-lsr1"]]
    assert len(cells) == 5 == len(set(cells))  # 5 of the 12 cells, none twice
    assert all(o["memory"] in (2, 4, 8, 16) and o["radius"] in (0.1, 1.0, 10.0) for _, o in configs["s-lsr1"])
    lrs = [o["lr"] for _, o in configs["gd"]]
    assert len(lrs) == 5 and all(0.01 <= v <= 10.0 for v in lrs)
    assert T.draw_configurations(study) == configs  # deterministic
    # a method's draws are its own: another method in the study changes none of them
    alone = _tuned(methods={"gd": {"lr": {"loguniform": [0.01, 10.0]}}}, tuning={"trials": 5, "seeds": 1})
    assert T.draw_configurations(alone)["gd"] == configs["gd"]
    other_seed = _tuned(methods={"gd": {"lr": {"loguniform": [0.01, 10.0]}}}, tuning={"trials": 5, "seed": 1})
    assert T.draw_configurations(other_seed)["gd"] != configs["gd"]


def test_the_tuning_stage_is_a_grid_of_the_configurations_on_the_tuning_seeds():
    study = _tuned()
    stage = T.stage_spec(study, "tuning")
    cells = list(stage.grid)
    assert stage.stage == "tuning" and stage.tuning is None and stage.num_trials == len(cells) == 5
    assert {c["seed"] for c in cells} == {10_000}
    drawn = T.draw_configurations(study)
    assert sorted((c["method"], c["tuning_config"], json.dumps(c["options"], sort_keys=True)) for c in cells) == \
        sorted((m, n, json.dumps(o, sort_keys=True)) for m, cs in drawn.items() for n, o in cs)
    picked = {m: (cs[-1],) for m, cs in drawn.items()}
    evaluation = T.stage_spec(study, "evaluation", picked)
    assert {(c["method"], c["tuning_config"], c["seed"]) for c in evaluation.grid} == \
        {(m, cs[-1][0], s) for m, cs in drawn.items() for s in (0, 1)}
    assert len({stage.fingerprint, evaluation.fingerprint, study.fingerprint}) == 3


def test_separate_options_give_each_of_their_values_its_own_budget_and_choice():
    study = _tuned(methods={"s-lsr1": {"sampling": ["hvp", "grad-diff"], "memory": {"logint": [2, 32]}},
                            "gd": {"lr": {"loguniform": [0.01, 10.0]}}},
                   tuning={"trials": 3, "seeds": 1, "separate": ["sampling"]})
    configs = T.draw_configurations(study)
    assert [o["sampling"] for _, o in configs["s-lsr1"]] == ["hvp"] * 3 + ["grad-diff"] * 3
    assert [n for n, _ in configs["s-lsr1"]] == list(range(6))
    plain = _tuned(methods={"gd": {"lr": {"loguniform": [0.01, 10.0]}}}, tuning={"trials": 3, "seeds": 1})
    assert configs["gd"] == T.draw_configurations(plain)["gd"]  # a method without the option: its own draws
    assert T.stage_trials(study) == {"tuning": 9, "evaluation": 3 * 2}  # 3 variants x 2 evaluation seeds

    rows = [("s-lsr1", n, o["sampling"], float(10 - n)) for n, o in configs["s-lsr1"]] + \
           [("gd", n, None, float(n)) for n, _ in configs["gd"]]
    trials = pa.table({"method": [r[0] for r in rows], "problem": ["toy-small"] * len(rows),
                       "tuning_config": [r[1] for r in rows], "final_loss": [r[3] for r in rows]})
    scores = T.scores(trials, "loss", "min", configs, ["sampling"])
    assert set(scores) == {"s-lsr1/sampling=hvp", "s-lsr1/sampling=grad-diff", "gd"}
    record = T.record(study, configs, scores, T.choose(scores, "min"))
    assert record["chosen"]["s-lsr1/sampling=hvp"]["tuning_config"] == 2  # the lowest loss of configs 0-2
    assert record["chosen"]["s-lsr1/sampling=grad-diff"]["tuning_config"] == 5
    picked = T.chosen_configurations(record)
    assert [n for n, _ in picked["s-lsr1"]] == [2, 5] and [n for n, _ in picked["gd"]] == [0]
    evaluation = T.stage_spec(study, "evaluation", picked)
    assert len(list(evaluation.grid)) == 6
    with pytest.raises(StudySpecError, match="tuning.separate"):
        _tuned(tuning={"trials": 2, "separate": ["memroy"]})


# ------------------------------------------------------------------------------------------------ the choice
def test_scores_are_means_over_seeds_and_a_failed_trial_scores_worst():
    trials = pa.table({"method": ["gd"] * 4 + ["adam"] * 2, "problem": ["p"] * 6,
                       "tuning_config": [0, 0, 1, 1, 0, 0], "best_loss": [1.0, 3.0, 0.5, None, 2.0, float("nan")]})
    s = T.scores(trials, "best_loss", "min")
    assert s == {"adam": {"p": {0: math.inf}}, "gd": {"p": {0: 2.0, 1: math.inf}}}
    assert T.scores(trials, "best_loss", "max")["gd"]["p"][1] == -math.inf


def test_the_choice_is_the_best_mean_rank_across_problems_ties_to_the_earlier_configuration():
    scores = {"gd": {"a": {0: 1.0, 1: 2.0, 2: 3.0}, "b": {0: 30.0, 1: 10.0, 2: 20.0}},  # ranks 1+3, 2+1, 3+2
              "adam": {"a": {0: 5.0, 1: 5.0}}}                                         # a tie
    chosen = T.choose(scores, "min")
    assert chosen["gd"]["tuning_config"] == 1 and chosen["gd"]["mean_rank"] == 1.5
    assert chosen["gd"]["scores"] == {"a": 2.0, "b": 10.0} and chosen["gd"]["score"] == 6.0
    assert chosen["adam"]["tuning_config"] == 0 and chosen["adam"]["mean_rank"] == 1.5
    assert T.choose({"gd": {"a": {0: 1.0, 1: 2.0}}}, "max")["gd"]["tuning_config"] == 1
    # two configurations apart only by round-off (Option II across r) tie: the earlier one is chosen
    roundoff = {"s-lsr1": {"a": {0: 0.48488471951086, 1: 0.48488471951052, 2: 0.6}}}
    assert T.choose(roundoff, "min")["s-lsr1"]["tuning_config"] == 0


def test_combine_streams_the_stages_rows_in_order_with_unified_columns(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"stage": ["tuning"] * 3, "x": [1, 2, 3]}), a, row_group_size=2)
    pq.write_table(pa.table({"stage": ["evaluation"] * 2, "x": [4, 5], "y": [0.5, 1.5]}), b)
    out = T.combine(tmp_path / "all.parquet", [a, b], {b"sqn_ray.tuning": b'{"trials": 2}'})
    table = pq.read_table(out)
    assert table.column_names == ["stage", "x", "y"]
    assert table.column("x").to_pylist() == [1, 2, 3, 4, 5]
    assert table.column("y").to_pylist() == [None, None, None, 0.5, 1.5]
    assert read_metadata(out)["sqn_ray.tuning"] == {"trials": 2}
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []  # no temporary file left


# ------------------------------------------------------------------------------------------------ end to end
def test_a_tuned_study_runs_both_stages_into_one_dataset_and_resumes(ray_cluster, tmp_path):
    study = _tuned()
    outcome = run_study(study, tmp_path / "out", progress=False)
    assert not outcome.interrupted and outcome.done == outcome.total == 11
    trials = pd.read_parquet(outcome.trials_path)
    rows = pd.read_parquet(outcome.iterations_path)
    assert trials.groupby("stage").size().to_dict() == {"evaluation": 6, "tuning": 5}
    assert set(rows["stage"]) == {"tuning", "evaluation"} and rows["trial_id"].nunique() == 11
    assert (rows.groupby("trial_id").size() == 13).all()  # iterations 0..12 of every trial, none twice

    record = T.read_record(outcome.out_dir)
    assert read_metadata(outcome.trials_path)["sqn_ray.tuning"] == record
    assert read_metadata(outcome.trials_path)["sqn_ray.study"]["tuning"]["trials"] == 2
    tuning = trials[trials.stage == "tuning"]
    for method, chosen in record["chosen"].items():
        mine = tuning[tuning.method == method]
        best = mine.groupby("tuning_config")["final_loss"].mean().idxmin()  # the study's metric: loss (min)
        assert chosen["tuning_config"] == best
        evaluated = trials[(trials.stage == "evaluation") & (trials.method == method)]
        assert set(evaluated["tuning_config"]) == {best} and sorted(evaluated["seed"]) == [0, 1]
        for option, value in chosen["options"].items():
            assert np.allclose(evaluated[option].astype(float), float(value))
    assert (outcome.out_dir / "tuning" / "trials.parquet").is_file()
    assert (outcome.out_dir / "evaluation" / "trials.parquet").is_file()

    again = run_study(study, tmp_path / "out", resume=True, progress=False)
    assert again.resumed and again.done == 11  # nothing reruns: Tune restores finished stages as finished
    pd.testing.assert_frame_equal(pd.read_parquet(again.iterations_path), rows)
    with pytest.raises(Exception, match="--resume"):
        run_study(study, tmp_path / "out", progress=False)


@pytest.mark.parametrize("smoke", [False, True])
def test_the_shipped_tuned_study_gives_every_method_the_same_budget(smoke):
    import sqn_ray
    from sqn_ray.optim.registry import method_family
    from sqn_ray.study.spec import load_study_spec

    study = load_study_spec(STUDIES / "paper-toy-tuned.yaml", smoke=smoke)
    compared = {m for m in sqn_ray.METHODS if method_family(m) != "external anchor"}
    assert set(study.methods) == compared and study.tuning is not None
    if not smoke:
        assert len(study.seeds) >= 10 and study.stop["accuracy"] == "target" and study.budget["iterations"] == 1000
    assert not set(study.tuning["seeds"]) & set(study.seeds)
    for method, configs in T.draw_configurations(study).items():
        cells = math.prod(len(v) for v in study.methods[method].values() if isinstance(v, tuple))
        ranged = any(not isinstance(v, tuple) for v in study.methods[method].values())
        assert len(configs) == (study.tuning["trials"] if ranged else min(cells, study.tuning["trials"])), method


def test_the_shipped_mnist_study_tunes_each_option_apart_and_needs_no_data_to_validate(tmp_path, monkeypatch):
    from sqn_ray.study.spec import load_study_spec

    monkeypatch.setenv("SQN_RAY_DATA", str(tmp_path))  # no cache: validating builds no problem
    study = load_study_spec(STUDIES / "mnist-quick.yaml")
    assert study.tuning["separate"] == ["sampling"] and study.problems == ("mnist-mlp-b1000", "mnist-mlp")
    variants = {T.variant(m, o, ["sampling"]) for m, cs in T.draw_configurations(study).items() for _, o in cs}
    assert variants == {"s-lsr1/sampling=hvp", "s-lsr1/sampling=grad-diff", "s-lbfgs/sampling=hvp",
                        "s-lbfgs/sampling=grad-diff", "lsr1", "lbfgs", "adam", "gd"}
    assert T.stage_trials(study) == {"tuning": 8 * 2 * 2, "evaluation": 8 * 2 * 5}
