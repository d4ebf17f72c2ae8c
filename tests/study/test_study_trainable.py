"""The trial logic of StudyTrainable (budgets, stop rules, divergence, failures, chunked reporting, pausing,
replay), driven directly: step() until done, without Tune around it. Needs a Ray connection only for the
node and GPU queries the trial makes (the session cluster; the driver has no GPU ids)."""
from __future__ import annotations

import math
import threading

import pyarrow as pa
import pytest
import torch

from sqn_ray.problems import get_problem
from sqn_ray.study.results import cell_key
from sqn_ray.study.trainable import StudyTrainable, cell_from_config

pytestmark = pytest.mark.usefixtures("ray_cluster")


def settings(**over):
    base = {"budget": {"iterations": 1000, "grad_equivalents": None, "wall_time": None},
            "stop": {"accuracy": None, "loss": None}, "dtype": "float64", "device": "auto", "accuracy_every": 1,
            "report_interval": 0.0, "lockstep": False, "cpus": 1}
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) else v
    return base


def config(method="gd", problem="toy-small", seed=0, **options):
    return {"cell": {"problem": problem, "method": method, "seed": seed, "options": options}}


def trainable(cfg, s, recorded=None):
    t = object.__new__(StudyTrainable)  # the Tune machinery (logdirs, storage) is not under test here
    t._trial_info = None
    t.setup(cfg, settings=s, recorded=recorded,
            problems={"toy-small": get_problem("toy-small", dtype=getattr(torch, s["dtype"]))})
    return t


def run(cfg, s, recorded=None):
    t = trainable(cfg, s, recorded)
    results = []
    while not results or not results[-1].get("done"):
        results.append(t.step())
        assert len(results) < 100_000
    t.cleanup()
    rows = {}
    for r in results:
        if r.get("rows") is not None:  # an Arrow table of the chunk's iterations
            assert isinstance(r["rows"], pa.Table)
            for k, v in r["rows"].to_pydict().items():
                rows.setdefault(k, []).extend(v)
    return results, rows, results[-1].get("final")


def test_gradient_equivalents_budget():
    _, rows, final = run(config(lr=0.1), settings(budget={"grad_equivalents": 30}))
    assert (final["status"], final["stop_reason"]) == ("budget", "grad_equivalents")
    assert rows["grad_equivalents"][-1] >= 30 > rows["grad_equivalents"][-2]
    assert rows["iteration"] == list(range(len(rows["iteration"])))


def test_wall_time_budget():
    _, rows, final = run(config(lr=0.1), settings(budget={"iterations": 10**6, "wall_time": 0.3}))
    assert final["stop_reason"] == "wall_time" and 0.3 <= rows["wall_time"][-1] < 2.0
    assert final["trial_time"] >= rows["wall_time"][-1]  # the optimizer's time excludes the platform's


def test_stop_rule_target_accuracy():
    _, rows, final = run(config("s-lsr1"), settings(stop={"accuracy": "target"}))
    assert (final["status"], final["stop_reason"]) == ("solved", "target")
    assert rows["accuracy"][-1] == 1.0 and max(rows["accuracy"][:-1]) < 1.0
    assert final["info"]["problem_target_accuracy"] == 1.0 and final["info"]["threads"] == 1


def test_stop_rule_loss():
    _, rows, final = run(config("s-lsr1"), settings(stop={"loss": 0.5}))
    assert (final["status"], final["stop_reason"]) == ("solved", "target_loss")
    assert rows["loss"][-1] <= 0.5 < min(rows["loss"][:-1])


def test_divergence_is_a_status_and_its_row_is_kept():
    cfg = config(problem="logistic", lr=1e300)
    t = object.__new__(StudyTrainable)
    t._trial_info = None
    t.setup(cfg, settings=settings(), recorded=None, problems={})  # built in the trial this time
    results = []
    while not results or not results[-1].get("done"):
        results.append(t.step())
    t.cleanup()
    final = results[-1]["final"]
    rows = [x for r in results if r.get("rows") is not None for x in r["rows"].column("loss").to_pylist()]
    assert (final["status"], final["optimizer_status"]) == ("diverged", "diverged")
    assert not math.isfinite(rows[-1]) and results[-1]["loss"] == math.inf  # Tune sees a number


def test_an_error_is_a_failed_trial_with_its_text():
    _, rows, final = run(config(problem="no-such-problem"), settings())
    assert final["status"] == "failed" and "no-such-problem" in final["error"] and not rows


def test_accuracy_every_and_the_last_row():
    results, rows, final = run(config(lr=0.1), settings(budget={"iterations": 10}, accuracy_every=4))
    acc = rows["accuracy"]
    assert [i for i, a in enumerate(acc) if not math.isnan(a)] == [0, 4, 8]
    assert final["patch_last"]["accuracy"] == pytest.approx(0.5, abs=0.5)  # the end point is always measured


class _WithTestSet:
    """The toy problem with held-out metrics, as a real-data problem has them (``problem.metrics(w)``)."""

    def __init__(self, problem):
        self._problem = problem

    def __getattr__(self, name):
        return getattr(self._problem, name)

    def metrics(self, w):
        return {"test_loss": 2.0 * float(self._problem.oracle.loss(w)), "test_accuracy": 0.25}


def test_the_last_row_gets_its_test_metrics_too_when_it_was_not_an_evaluated_iterate():
    """A full-batch MNIST run of 13 costly iterations with accuracy_every 50 has no evaluated iterate but its
    first: the end point's test metrics are evaluated as its training accuracy is, or its test curve would end
    at the initial point."""
    t = object.__new__(StudyTrainable)
    t._trial_info = None
    problem = get_problem("toy-small", dtype=torch.float64)
    t.setup(config(lr=0.1), settings=settings(budget={"iterations": 10}, accuracy_every=4), recorded=None,
            problems={"toy-small": _WithTestSet(problem)})
    results = []
    while not results or not results[-1].get("done"):
        results.append(t.step())
    t.cleanup()
    final = results[-1]["final"]
    evaluated, losses = [], []
    for r in results:  # a chunk has the test columns only when one of its rows was evaluated
        chunk = r["rows"].to_pydict() if r.get("rows") is not None else {}
        losses += chunk.get("loss", [])
        evaluated += [i for i, a in zip(chunk.get("iteration", []), chunk.get("test_accuracy", []))
                      if a is not None and not math.isnan(a)]
    assert evaluated == [0, 4, 8] and len(losses) == 11
    patch = final["patch_last"]
    assert set(patch) == {"accuracy", "test_loss", "test_accuracy"} and patch["test_accuracy"] == 0.25
    assert patch["test_loss"] == pytest.approx(2.0 * losses[-1], rel=1e-12)  # at the last iterate itself


def test_chunks_pause_and_stop_promptly():
    """With a scheduler (lockstep) the optimizer waits between reports; stopping the trial ends it at once."""
    t = trainable(config(lr=0.1), settings(lockstep=True, budget={"iterations": 10**6}))
    first = [t.step() for _ in range(3)]
    assert [r["rows"].column("iteration").to_pylist() for r in first] == [[0], [1], [2]]
    thread = t._thread
    t.reset_config(config(lr=0.2, seed=1))  # Tune stops the trial and reuses the actor for the next one
    assert not thread.is_alive() and t._queue.qsize() == 0
    assert t.step()["rows"].column("iteration").to_pylist() == [0]
    t.cleanup()
    assert threading.active_count() < 50


def test_a_recorded_trial_replays_without_computing():
    cfg = config(lr=0.1)
    summary = {"final_loss": 0.5, "best_loss": 0.4, "final_accuracy": 0.5, "best_accuracy": 0.6,
               "iterations": 7, "grad_equivalents": 7.0, "status": "budget", "stop_reason": "iterations"}
    rec = {"default": {"cell_key": cell_key(cell_from_config(cfg)), "summary": summary}}
    results, rows, final = run(cfg, settings(), recorded=rec)
    assert len(results) == 1 and results[0]["replayed"] and results[0]["best_loss"] == 0.4 and not rows
    other = {"default": {"cell_key": "something else", "summary": summary}}
    results, rows, final = run(cfg, settings(budget={"iterations": 3}), recorded=other)
    assert final["status"] == "budget" and rows["iteration"] == [0, 1, 2, 3]


def test_config_of_every_search_algorithm():
    grid = {"cell": {"problem": "toy-small", "method": "s-lsr1", "seed": 2, "options": {"memory": 4}},
            "draw": {"s-lsr1": {"radius": 0.5}, "gd": {"lr": 0.1}}}
    assert cell_from_config(grid) == {"problem": "toy-small", "method": "s-lsr1", "seed": 2,
                                      "options": {"memory": 4, "radius": 0.5}}
    optuna = {"problem": "toy-small", "method": "gd", "seed": 1, "gd.lr": 0.3, "s-lsr1.radius": 2.0}
    assert cell_from_config(optuna)["options"] == {"lr": 0.3}


def test_row_buffer_columns_keep_rows_aligned():
    """Records with differing fields, held-out metrics on some rows: every column has one entry per row, in
    order, None where a row lacks the field; wall_time has the callback's time before each row taken out."""
    from sqn_ray.study.trainable import _RowBuffer

    buf = _RowBuffer()
    buf.append({"iteration": 0, "loss": 1.0, "wall_time": 0.5}, 0.0, 0.25, {"test_loss": 2.0})
    buf.append({"iteration": 1, "loss": 0.5, "wall_time": 1.5, "rho": 0.9}, 0.25, math.nan, None)
    buf.append({"iteration": 2, "loss": 0.25, "wall_time": 2.5}, 0.5, 0.75, {"test_loss": 1.0})
    cols = buf.take()
    assert cols["iteration"] == [0, 1, 2] and cols["loss"] == [1.0, 0.5, 0.25]
    assert cols["rho"] == [None, 0.9, None] and cols["test_loss"] == [2.0, None, 1.0]
    assert cols["wall_time"] == [0.5, 1.25, 2.0]
    assert cols["accuracy"][0] == 0.25 and math.isnan(cols["accuracy"][1]) and cols["accuracy"][2] == 0.75
    assert buf.items == [] and len({len(c) for c in cols.values()}) == 1
    same = _RowBuffer()  # the usual case: one record layout, transposed in one go
    for i in range(3):
        same.append({"iteration": i, "loss": 1.0 / (i + 1), "wall_time": float(i)}, 0.0, 0.5, None)
    assert same.take() == {"iteration": [0, 1, 2], "loss": [1.0, 0.5, 1 / 3], "wall_time": [0.0, 1.0, 2.0],
                           "accuracy": [0.5, 0.5, 0.5]}
