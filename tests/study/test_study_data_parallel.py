"""Data-parallel trials: ``resources: {workers: k}`` validated like every field, and a study mixing 1-worker and
2-worker trials run end to end on the multi-node test cluster through Ray Train (gloo): the 2-worker trials
follow the 1-worker trajectories to round-off, with the same counters, and record their communication."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sqn_ray.study.spec import StudySpecError, parse_study

BASE = {"problems": ["mnist-mlp"], "methods": {"s-lsr1": {"memory": 4}, "lbfgs": {}}}


def parse(**over):
    return parse_study({**BASE, **over}, source="t.yaml")


def test_a_worker_count_is_an_option_of_every_method():
    study = parse(resources={"workers": 2, "cpu": 1})
    assert study.resources == {"cpu": 1, "gpu": 0, "workers": 2}
    assert study.worker_counts == (2,) and study.data_parallel
    assert parse().worker_counts == (1,) and not parse().data_parallel
    assert parse(resources={"workers": [1, 2]}).worker_counts == (1, 2)
    assert {c["options"]["workers"] for c in study.cells()} == {2}
    assert "workers" in study.option_names and study.defaults["lbfgs"]["workers"] == 1


def test_a_list_of_counts_is_a_grid_axis():
    study = parse(resources={"workers": [1, 2]})
    cells = study.cells()
    assert len(cells) == 2 * len(parse().cells())
    assert sorted({(c["method"], c["options"]["workers"]) for c in cells}) == [
        ("lbfgs", 1), ("lbfgs", 2), ("s-lsr1", 1), ("s-lsr1", 2)]


def test_single_process_studies_keep_their_cells_and_fingerprint():
    plain = parse()
    for same in (parse(resources={"cpu": 1}), parse(resources={"workers": 1})):
        assert same.cells() == plain.cells()
    assert parse(resources={"cpu": 1}).fingerprint == plain.fingerprint
    assert parse(resources={"workers": [1, 2]}).fingerprint != plain.fingerprint


@pytest.mark.parametrize("workers, path, needle", [
    (0, "resources.workers", ">= 1"),
    ("two", "resources.workers", "integer"),
    ([], "resources.workers", "non-empty"),
    ([1, 2, 2], "resources.workers[2]", "listed twice"),
    (5000, "resources.workers", "limit"),
])
def test_bad_worker_counts_name_the_field(workers, path, needle):
    with pytest.raises(StudySpecError) as err:
        parse(resources={"workers": workers})
    assert err.value.option == path and needle in str(err.value)


@pytest.mark.parametrize("problem", ["toy-small", "logistic", "mnist-mlp-b1000"])
def test_problems_that_cannot_be_split_are_refused_before_ray(problem):
    with pytest.raises(StudySpecError, match="cannot be split across workers") as err:
        parse(problems=[problem], resources={"workers": 2})
    assert err.value.option == "problems[0]"
    parse(problems=[problem], resources={"workers": 1})  # one worker: anything goes


def test_a_tuned_study_does_not_sweep_the_worker_count():
    tuned = {"tuning": {"trials": 2, "seeds": 1}, "methods": {"adam": {"lr": {"loguniform": [1e-3, 1e-1]}}}}
    with pytest.raises(StudySpecError, match="one count"):
        parse(**tuned, resources={"workers": [1, 2]})
    assert {c["options"]["workers"] for c in parse(**tuned, resources={"workers": 2}).cells()} == {2}


def _problem(loss_fn=torch.nn.functional.cross_entropy):
    from torch import nn

    from sqn_ray.problems import ModuleProblem

    gen = torch.Generator().manual_seed(0)
    X = torch.randn(203, 5, generator=gen, dtype=torch.float64)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()

    def net():
        return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))

    return ModuleProblem("blobs", net, loss_fn, X, y, test=(X[:50], y[:50]), dtype=torch.float64)


@pytest.mark.slow
def test_a_study_mixing_one_and_two_worker_trials(ray_cluster, tmp_path):
    from sqn_ray.study.runner import run_study

    study = {"name": "dp", "problems": ["blobs"], "seeds": 1, "budget": {"iterations": 12}, "dtype": "float64",
             # (the line-searched methods' replicated runs are covered on two gloo ranks in tests/core/test_collective)
             "methods": {"s-lsr1": {"memory": 4, "sampling": ["hvp", "grad-diff"], "radius": 1e-3}},
             "resources": {"workers": [1, 2], "cpu": 1}, "accuracy_every": 3, "report_interval": 0.2}
    outcome = run_study(study, tmp_path / "out", problems={"blobs": _problem()}, progress=False)
    assert outcome.counts == {"budget": 4}
    trials = pd.read_parquet(outcome.trials_path)
    rows = pd.read_parquet(outcome.iterations_path)
    assert sorted(trials["workers"]) == [1, 1, 2, 2] and (trials["iterations"] == 12).all()
    two = trials[trials["workers"] == 2]
    assert two["replicas_agree"].all() and trials[trials["workers"] == 1]["replicas_agree"].isna().all()
    assert (two["comm_collectives"] > 12).all() and (two["comm_values"] > 0).all() and (two["comm_seconds"] > 0).all()
    assert set(two["device"]) == {"cpu"} and (trials["problem"] == "blobs").all()
    # a 2-worker trial's start-up (its worker group) is its own column, and inside its trial_time
    assert (trials["startup_seconds"] > 0).all() and (trials["trial_time"] > trials["startup_seconds"]).all()
    assert (two["startup_seconds"] > trials[trials["workers"] == 1]["startup_seconds"].max()).all()
    for (method, sampling), group in rows.groupby(["method", "sampling"], dropna=False):
        one = group[group["workers"] == 1].sort_values("iteration")
        dp = group[group["workers"] == 2].sort_values("iteration")
        assert list(one["iteration"]) == list(dp["iteration"]) == list(range(0, 13)), (method, sampling)
        np.testing.assert_allclose(dp["loss"], one["loss"], rtol=1e-10, err_msg=f"{method} {sampling}")
        for counter in ("n_fun", "n_grad", "n_hvp", "accepted"):
            assert list(dp[counter]) == list(one[counter]), (method, sampling, counter)
        # training accuracy all-reduced over the shards, the test set's evaluated on rank 0: as one process
        np.testing.assert_allclose(dp["accuracy"], one["accuracy"], atol=1e-12)
        np.testing.assert_allclose(dp["test_accuracy"], one["test_accuracy"], atol=1e-12)


@pytest.mark.slow
def test_a_failing_worker_fails_its_trial_with_the_error_and_the_study_goes_on(ray_cluster, tmp_path):
    from sqn_ray.study.runner import run_study

    def loss_failing_on_the_second_shard(out, target):  # 203 rows: shard 1 of 2 has 101, the whole set 203
        if target.shape[0] == 101:
            raise RuntimeError("the second shard's loss is broken")
        return torch.nn.functional.cross_entropy(out, target)

    study = {"name": "dp-fail", "problems": ["blobs"], "seeds": 1, "budget": {"iterations": 5}, "dtype": "float64",
             "methods": {"lbfgs": {"memory": 4}}, "resources": {"workers": [1, 2], "cpu": 1}, "max_failures": 0}
    outcome = run_study(study, tmp_path / "out", problems={"blobs": _problem(loss_failing_on_the_second_shard)},
                        progress=False)
    trials = pd.read_parquet(outcome.trials_path).set_index("workers")
    assert trials.loc[1, "status"] == "budget" and trials.loc[1, "iterations"] == 5
    assert trials.loc[2, "status"] == "failed"
    # the root cause (rank 1's exception), not only rank 0's echo of it (gloo: "Connection closed by peer")
    assert "the second shard's loss is broken" in trials.loc[2, "error"]
