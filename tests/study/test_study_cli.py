"""The study commands' parsing and validation output, the progress table, and import hygiene (no Ray here)."""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sqn_ray.study.cli import add_study_commands, run_study_command
from sqn_ray.study.progress import ProgressTable, format_duration

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv):
    parser = argparse.ArgumentParser(prog="sqn-ray")
    add_study_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["study", *argv])


def test_run_arguments():
    a = parse("run", "studies/smoke.yaml", "--out", "d", "--smoke", "--address", "auto", "--resume")
    assert (a.file, a.out, a.smoke, a.address, a.resume, a.func) == (
        "studies/smoke.yaml", "d", True, "auto", True, run_study_command)
    with pytest.raises(SystemExit):
        parse("run")


def test_validate_prints_the_grid(capsys):
    assert run_study_command(parse("validate", str(ROOT / "studies/sensitivity.yaml"))) == 0
    out = capsys.readouterr().out
    assert "1200 trials" in out and "s-lsr1: 40 cell(s)" in out and "sampling=grad-diff|hvp" in out


def test_invalid_study_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("problems: [toy-small]\nmethods: {lbfgs: {radius: 1.0}}\n")
    assert run_study_command(parse("validate", str(bad))) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}: methods.lbfgs.radius: not an option of lbfgs; allowed:" in err
    assert run_study_command(parse("run", str(bad), "--out", str(tmp_path / "o"))) == 2


def test_check_cluster_command(capsys):
    assert run_study_command(parse("check-cluster", str(ROOT / "cluster.yaml"))) == 0
    assert "OK" in capsys.readouterr().out


def test_progress_table():
    stream = io.StringIO()
    table = ProgressTable("demo", 10, "loss", "min", stream=stream, live=False, interval=0)
    table.update({"running": 2}, 2, None)
    table.update({"solved": 3, "failed": 1, "running": 2}, 2, (0.0123, "toy-small/s-lsr1 seed 0"))
    text = stream.getvalue()
    assert "[demo] 0/10 trials done · 2 running · 8 queued" in text
    assert "4/10 trials done" in text and "solved 3 · budget 0 · diverged 0 · failed 1" in text
    assert "best loss 0.0123: toy-small/s-lsr1 seed 0" in text and "ETA" in text
    live = io.StringIO()
    t = ProgressTable("demo", 2, "loss", "min", stream=live, live=True, interval=0)
    t.update({}, 1, None)
    t.update({"budget": 2}, 0, None)
    assert "\x1b[3F" in live.getvalue()  # redrawn in place on a terminal
    assert format_duration(3725) == "1:02:05" and format_duration(None) == "?"


def test_imports_stay_light():
    code = ("import sys, sqn_ray, sqn_ray.study, sqn_ray.study.spec, sqn_ray.study.cli, sqn_ray.study.results; "
            "print('ray' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
