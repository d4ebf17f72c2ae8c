"""Studies run for real on the session's multi-node Ray cluster (head without CPUs + two raylets with one
CPU and one logical GPU each): grids, failures, divergence, GPU pinning, random search with ASHA, Optuna."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from sqn_ray.study.results import TERMINAL_STATUSES, read_metadata
from sqn_ray.study.runner import run_study
from sqn_ray.study.spec import parse_study

pytestmark = pytest.mark.slow


def study_of(**fields):
    base = {"name": "t", "problems": ["toy-small"], "budget": {"iterations": 10}, "report_interval": 0.2}
    return parse_study({**base, **fields}, source="test.yaml")


def read(out):
    return pd.read_parquet(out / "iterations.parquet"), pd.read_parquet(out / "trials.parquet")


def test_grid_study_end_to_end(ray_cluster, tmp_path):
    study = study_of(problems=["toy-small", "logistic"],
                     methods={"s-lsr1": {"memory": 4, "sampling": "hvp", "radius": [1e-3, 1.0, 100.0]},
                              "gd": {"lr": [0.5, 1e300]}},
                     seeds=[0, 1], budget={"iterations": 12}, stop={"accuracy": "target"})
    stream = io.StringIO()
    outcome = run_study(study, tmp_path, stream=stream)
    it, tr = read(tmp_path)

    assert outcome.done == outcome.total == 20 and not outcome.interrupted
    assert len(tr) == 20 and set(tr.status) <= set(TERMINAL_STATUSES)
    assert not it.duplicated(["trial_id", "iteration"]).any()
    for _, g in it.groupby("trial_id"):  # every iterate, in order, from the initial point
        assert list(g.iteration) == list(range(len(g)))
    assert (tr.set_index("trial_id").iterations == it.groupby("trial_id").iteration.max()).all()

    # common random numbers: one seed, one initial point, in every cell
    start = it[it.iteration == 0].groupby(["problem", "seed"]).loss.nunique()
    assert (start == 1).all()
    # ... and one direction stream: under Option II S-LSR1 is invariant to r (Y = HS is linear in S)
    s = it[(it.method == "s-lsr1") & (it.problem == "toy-small")]
    for _, g in s.groupby("seed"):
        losses = g.pivot(index="iteration", columns="radius", values="loss").dropna()
        assert np.allclose(losses.to_numpy(), losses.to_numpy()[:, :1], rtol=1e-6, atol=0)

    boom = tr[(tr.problem == "logistic") & (tr.lr == 1e300)]
    assert (boom.status == "diverged").all() and (boom.stop_reason == "diverged").all()
    assert (it[it.trial_id.isin(boom.trial_id)].groupby("trial_id").loss
            .apply(lambda x: not np.isfinite(x.iloc[-1])).all())
    solved = tr[tr.status == "solved"]
    assert (solved.problem == "toy-small").all() and (solved.final_accuracy == 1.0).all()
    assert (solved.iters_to_target <= solved.iterations).all() and solved.grad_equivalents_to_target.notna().all()
    assert (tr[tr.problem == "logistic"].status != "solved").all()  # no target accuracy for logistic

    # where the trials ran: only on the worker raylets, one thread each, on the CPU
    assert set(tr.node_id) <= ray_cluster.worker_node_ids
    assert (tr.threads == 1).all() and (tr.device == "cpu").all()
    assert tr["rank"].min() == 1 and tr.metric.eq("loss").all()

    meta = read_metadata(tmp_path / "iterations.parquet")
    assert meta["sqn_ray.study"]["methods"]["gd"]["lr"] == [0.5, 1e300]
    assert "20/20 trials done" in stream.getvalue()


def test_a_raising_trial_is_recorded_as_failed(ray_cluster, tmp_path):
    """device: cuda on a machine whose GPUs are only logical: every trial raises; each is recorded with its
    error and the study goes on to the end."""
    study = study_of(methods={"s-lsr1": {"memory": 3}}, seeds=3, device="cuda", resources={"cpu": 1, "gpu": 0.5},
                     max_failures=0)
    outcome = run_study(study, tmp_path, progress=False)
    it, tr = read(tmp_path)
    assert outcome.done == 3 and (tr.status == "failed").all() and (tr.stop_reason == "error").all()
    assert tr.error.str.contains("RuntimeError: device: cuda, but the trial was given GPU ids").all()
    assert len(it) == 0


def test_gpu_trials_are_pinned_and_spread_over_the_nodes(ray_cluster, tmp_path):
    """Trials asking for half a GPU get the GPU Ray assigns (CUDA_VISIBLE_DEVICES names it, so cuda:0 would be
    it) and, one CPU each, land on both GPU nodes; torch uses the trial's one thread."""
    study = study_of(methods={"gd": {"lr": 0.1}}, seeds=4, budget={"iterations": 3000},
                     resources={"cpu": 1, "gpu": 0.5})
    outcome = run_study(study, tmp_path, progress=False)
    _, tr = read(tmp_path)
    assert outcome.done == 4 and (tr.status == "budget").all()
    assert (tr.gpu_ids == "0").all() and (tr.cuda_visible_devices == "0").all()
    assert set(tr.node_id) == ray_cluster.worker_node_ids
    assert (tr.threads == 1).all() and (tr.device == "cpu").all()  # logical GPUs: no CUDA device to use


def test_random_search_with_asha(ray_cluster, tmp_path):
    study = study_of(methods={"s-lsr1": {"radius": {"loguniform": [1e-4, 1.0]}, "memory": {"int": [2, 6]},
                                         "sampling": "grad-diff"}},
                     seeds=[0], budget={"iterations": 40}, search={"algorithm": "random", "num_samples": 8, "seed": 1},
                     scheduler={"type": "asha", "time_attr": "iteration", "grace_period": 4, "reduction_factor": 2},
                     report_interval=0)
    outcome = run_study(study, tmp_path, progress=False)
    it, tr = read(tmp_path)
    assert outcome.done == 8 and set(tr.status) <= set(TERMINAL_STATUSES)
    assert tr.radius.between(1e-4, 1.0).all() and tr.radius.nunique() == 8
    assert tr.memory.between(2, 6).all() and (tr.memory % 1 == 0).all()
    stopped = tr[tr.stop_reason == "scheduler"]
    assert len(stopped) >= 1, tr[["trial_id", "status", "stop_reason", "iterations"]]
    assert (stopped.iterations < 40).all()
    assert not it.duplicated(["trial_id", "iteration"]).any()


def test_optuna_search(ray_cluster, tmp_path):
    study = study_of(methods={"s-lsr1": {"radius": {"loguniform": [1e-3, 1.0]}, "memory": {"logint": [2, 16]}},
                              "s-lbfgs": {"memory": [4, 8]}},
                     seeds=[0, 1], search={"algorithm": "optuna", "num_samples": 5, "seed": 0})
    outcome = run_study(study, tmp_path, progress=False)
    it, tr = read(tmp_path)
    assert outcome.done == 5 and len(tr) == 5 and set(tr.method) <= {"s-lsr1", "s-lbfgs"}
    lsr1 = tr[tr.method == "s-lsr1"]
    assert lsr1.radius.between(1e-3, 1.0).all() and lsr1.memory.between(2, 16).all()
    assert tr[tr.method == "s-lbfgs"].memory.isin([4, 8]).all() and tr.seed.isin([0, 1]).all()
    assert set(it.trial_id) == set(tr.trial_id)
