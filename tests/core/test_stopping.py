"""The stop rules (sqn_ray.stopping): one Ray-free object for the study's trials, `sqn-ray run` and `sqn-ray eigen`."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sqn_ray.stopping import SOLVED_REASONS, STOP_REASONS, StopRules, reason_of_status


def rec(loss=1.0, grad_equivalents=10.0, wall_time=1.0, **more):
    return {"iteration": 3, "loss": loss, "grad_equivalents": grad_equivalents, "wall_time": wall_time, **more}


def test_no_rule_never_stops():
    rules = StopRules()
    assert rules.check(rec(), accuracy=1.0) is None
    assert rules.check(rec(loss=-1e300, grad_equivalents=1e300, wall_time=1e300)) is None
    assert rules.minimize_options() == {}


def test_each_rule_alone():
    assert StopRules(accuracy=0.9).check(rec(), accuracy=0.9) == "target"
    assert StopRules(accuracy=0.9).check(rec(), accuracy=0.89) is None
    assert StopRules(loss=0.5).check(rec(loss=0.5)) == "target_loss"
    assert StopRules(loss=0.5).check(rec(loss=0.51)) is None
    assert StopRules(grad_equivalents=10).check(rec(grad_equivalents=10.0)) == "grad_equivalents"
    assert StopRules(grad_equivalents=10).check(rec(grad_equivalents=9.5)) is None
    assert StopRules(wall_time=1.0).check(rec(wall_time=1.0)) == "wall_time"
    assert StopRules(wall_time=1.0).check(rec(wall_time=0.9)) is None


def test_accuracy_not_evaluated_is_no_stop():
    rules = StopRules(accuracy=0.5)
    assert rules.check(rec(), accuracy=math.nan) is None
    assert rules.check(rec()) is None  # not given


def test_wall_time_takes_the_callers_overhead_out():
    rules = StopRules(wall_time=1.0)
    assert rules.check(rec(wall_time=1.5), overhead=0.6) is None
    assert rules.check(rec(wall_time=1.5), overhead=0.5) == "wall_time"


def test_precedence_is_target_then_loss_then_grad_equivalents_then_wall_time():
    rules = StopRules(accuracy=0.5, loss=2.0, grad_equivalents=1.0, wall_time=0.1)
    everything = rec(loss=1.0, grad_equivalents=10.0, wall_time=1.0)
    assert rules.check(everything, accuracy=1.0) == "target"
    assert rules.check(everything, accuracy=0.1) == "target_loss"
    assert rules.check(rec(loss=3.0, grad_equivalents=10.0, wall_time=1.0), accuracy=0.1) == "grad_equivalents"
    assert rules.check(rec(loss=3.0, grad_equivalents=0.5, wall_time=1.0), accuracy=0.1) == "wall_time"
    assert STOP_REASONS == ("target", "target_loss", "grad_equivalents", "wall_time")


def test_none_disables_a_rule_and_the_record_need_not_carry_it():
    assert StopRules(accuracy=None, loss=None).check({"grad_equivalents": 1.0, "wall_time": 0.0}, accuracy=1.0) is None


def test_from_study_reads_the_budget_and_stop_mappings():
    rules = StopRules.from_study({"iterations": 100, "grad_equivalents": None, "wall_time": 60},
                                 {"accuracy": "target", "loss": None}, target_accuracy=1.0)
    assert rules == StopRules(iterations=100, wall_time=60, accuracy=1.0)
    assert rules.minimize_options() == {"max_iters": 100}
    # 'target' on a problem without a target accuracy: no accuracy rule
    assert StopRules.from_study({"iterations": 5}, {"accuracy": "target"}, target_accuracy=None).accuracy is None
    assert StopRules.from_study({"iterations": 5}, {"accuracy": 0.75}, target_accuracy=1.0).accuracy == 0.75
    assert StopRules.from_study({}, None) == StopRules()
    with pytest.raises(ValueError, match="unknown budget key.*epochs"):
        StopRules.from_study({"epochs": 3}, {})
    with pytest.raises(ValueError, match="unknown stop key.*grad_norm"):
        StopRules.from_study({}, {"grad_norm": 1e-3})


def test_minimize_options_carry_iterations_and_gtol():
    assert StopRules(iterations=7, gtol=1e-6).minimize_options() == {"max_iters": 7, "gtol": 1e-6}
    assert StopRules(iterations=0).minimize_options() == {"max_iters": 0}


@pytest.mark.parametrize("field, value", [
    ("iterations", -1), ("iterations", 2.5), ("iterations", True), ("iterations", "10"),
    ("grad_equivalents", 0), ("grad_equivalents", -3.0), ("grad_equivalents", math.inf), ("grad_equivalents", "x"),
    ("wall_time", 0.0), ("wall_time", math.nan), ("accuracy", 1.5), ("accuracy", -0.1), ("accuracy", "target"),
    ("accuracy", False), ("loss", math.nan), ("loss", "low"), ("gtol", -1e-8), ("gtol", math.inf),
])
def test_bad_values_name_the_field_and_the_value(field, value):
    with pytest.raises(ValueError) as e:
        StopRules(**{field: value})
    assert field in str(e.value) and repr(value) in str(e.value)


def test_numpy_numbers_are_numbers():
    rules = StopRules(iterations=np.int64(5), wall_time=np.float64(2.0), accuracy=np.float64(1.0))
    assert rules.minimize_options() == {"max_iters": 5}
    assert rules.check(rec(), accuracy=np.float64(1.0)) == "target"


def test_solved_and_the_reasons_of_minimizes_own_stops():
    rules = StopRules(accuracy=0.9)
    assert all(rules.solved(r) for r in SOLVED_REASONS)
    assert not rules.solved("wall_time", best_accuracy=0.5) and rules.solved("wall_time", best_accuracy=0.95)
    assert not StopRules().solved("iterations", best_accuracy=1.0)
    assert reason_of_status("max_iters") == "iterations"
    assert [reason_of_status(s) for s in ("converged", "stalled", "callback")] == ["converged", "stalled", "callback"]


def test_the_three_callers_use_the_rules():
    """`sqn-ray run`, `sqn-ray eigen` and the study's trial loop read the one object (no rule of their own)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for rel in ("sqn_ray/cli.py", "analysis/eigen.py", "sqn_ray/study/execution.py"):
        text = (root / rel).read_text()
        assert "StopRules" in text and ".check(record" in text, rel
    for rel in ("sqn_ray/study/trainable.py", "sqn_ray/study/execution.py"):
        text = (root / rel).read_text()
        assert '"target_loss"' not in text and '"grad_equivalents"' not in text, rel


def test_sqn_ray_run_stops_at_the_target_accuracy(tmp_path, capsys):
    from sqn_ray.cli import main

    assert main(["run", "--problem", "toy-small", "--method", "gd", "--max-iters", "50", "--target-accuracy", "0",
                 "--quiet"]) == 0
    assert "solved after 0 iterations" in capsys.readouterr().out
    assert main(["run", "--problem", "toy-small", "--method", "gd", "--max-iters", "5", "--target-accuracy", "2",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "accuracy" in err and "2.0" in err
