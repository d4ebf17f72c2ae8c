"""Fast checks: bad input gives one clear error, labels and medians, figures without data say so."""
import argparse
import math

import numpy as np
import pandas as pd
import pytest

from analysis import figures as F
from analysis.cli import add_eigen_command, add_report_command
from analysis.load import config_label, load_results
from analysis.tables import median_inf
from sqn_ray.cli import main


def test_missing_empty_and_unreadable_study_folders_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="no such study folder"):
        load_results(tmp_path / "nope")
    with pytest.raises(ValueError, match="no iterations.parquet or trials.parquet"):
        load_results(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        load_results(tmp_path / "f.txt")
    (tmp_path / "trials.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        load_results(tmp_path)


def test_report_command_on_bad_input_prints_one_line_and_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such study folder" in err[0]
    assert main(["report", str(tmp_path)]) == 2
    assert "no iterations.parquet or trials.parquet" in capsys.readouterr().err


def test_commands_register_with_handlers():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_report_command(sub)
    add_eigen_command(sub)
    args = parser.parse_args(["report", "DIR", "-o", "OUT", "--format", "svg"])
    assert args.dir == "DIR" and args.out == "OUT" and args.format == ("svg",) and callable(args.handler)
    args = parser.parse_args(["eigen", "--seed", "3", "--out", "e.parquet"])
    assert args.seed == 3 and args.problem == "toy-small" and callable(args.handler)
    with pytest.raises(SystemExit):
        parser.parse_args(["report", "DIR", "--format", "jpg"])


def test_config_labels_and_median_with_unsolved_runs():
    assert config_label("lbfgs", {}) == "lbfgs"
    assert config_label("s-lsr1", {"sampling": "grad-diff", "radius": 0.01, "memory": 5.0}) == \
        "s-lsr1 [m=5, r=0.01, Option I]"
    assert median_inf([3, 5, np.nan]) == 5
    assert median_inf([3, np.nan, np.nan]) == math.inf
    assert math.isnan(median_inf([]))


def test_a_figure_without_data_says_so():
    empty = pd.DataFrame(columns=["point", "iteration", "matrix", "rank", "eigenvalue"])
    fig = F.eigen_spectra(empty)
    assert fig.no_data and "eigen" in fig.no_data
    assert F.to_png(fig).startswith(b"\x89PNG")


def test_the_results_names_say_which_study_and_the_earlier_names_still_work():
    import analysis
    from analysis import load

    assert load.Study is load.StudyResults and load.load_study is load.load_results
    assert analysis.load_study is load.load_results and analysis.Study is load.StudyResults


def test_without_cell_json_every_column_the_platform_writes_is_a_result_not_an_option():
    import pandas as pd

    from analysis.load import _option_columns
    from sqn_ray.study.results import ID_COLUMNS, STAGE_COLUMNS, TRIAL_COLUMNS

    written = {c: None for c in (*ID_COLUMNS, "seed", *STAGE_COLUMNS, *TRIAL_COLUMNS)}
    trials = pd.DataFrame([{**written, "method": "s-lsr1", "seed": 0, "memory": 4, "lr_decay": 0.5}])
    assert _option_columns(trials, pd.DataFrame()) == ["lr_decay", "memory"]  # not comm_*, startup_seconds, ...
