"""Experiment tracking: ``loggers:`` validated before anything runs, the callbacks built from it, and a study
whose TensorBoard event files hold each trial's metrics (never the rows) and its cell as hyperparameters."""
from __future__ import annotations

import importlib.util
import pickle
import struct
from pathlib import Path

import pandas as pd
import pytest
from ray.tune.logger import TBXLoggerCallback

from sqn_ray.study.loggers import TENSORBOARD_DIR, logger_callbacks, trial_params
from sqn_ray.study.spec import LOGGERS, StudySpecError, parse_study

BASE = {"name": "t", "problems": ["toy-small"], "methods": {"gd": {"lr": [0.1, 0.5]}}, "seeds": 1}


def parse(**over):
    return parse_study({**BASE, **over}, source="t.yaml")


@pytest.fixture
def without(monkeypatch):
    """Make the named modules look uninstalled to find_spec (whatever this machine has)."""
    def hide(*modules):
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, **k: None if name in modules else real(name, *a, **k))
    return hide


# ---------------------------------------------------------------------------------------------- the spec
def test_loggers_default_to_none_and_keep_their_order():
    assert parse().loggers == () and parse(loggers=[]).loggers == () and parse(loggers=None).loggers == ()
    assert parse(loggers=["tensorboard"]).loggers == ("tensorboard",)
    assert parse(loggers="tensorboard").loggers == ("tensorboard",)


@pytest.mark.parametrize("value, path", [(["tensorbord"], "loggers[0]"), (["tensorboard", "mlflw"], "loggers[1]"),
                                         ([3], "loggers[0]"), ({"tensorboard": 1}, "loggers")])
def test_an_unknown_logger_is_named_with_the_allowed_ones(value, path):
    with pytest.raises(StudySpecError) as err:
        parse(loggers=value)
    assert str(err.value).startswith(f"t.yaml: {path}: ") and "allowed: tensorboard, mlflow, wandb" in str(err.value)
    assert err.value.option == path and err.value.allowed == tuple(LOGGERS)


def test_a_logger_listed_twice_is_refused():
    with pytest.raises(StudySpecError, match=r"loggers\[1\]: 'tensorboard' is listed twice"):
        parse(loggers=["tensorboard", "tensorboard"])


@pytest.mark.parametrize("name, package", [("mlflow", "mlflow"), ("wandb", "wandb"), ("tensorboard", "tensorboardX")])
def test_a_logger_whose_package_is_missing_fails_in_one_line_naming_it(without, name, package):
    without(LOGGERS[name][0])
    with pytest.raises(StudySpecError) as err:
        parse(loggers=["tensorboard", name] if name != "tensorboard" else [name])
    msg = str(err.value)
    assert "\n" not in msg and f"{name} needs the package {package}, which is not installed" in msg
    assert f"pip install {package}" in msg and err.value.value == name


def test_a_missing_package_is_found_without_importing_it(without, monkeypatch):
    import sys

    without("mlflow")
    before = set(sys.modules)
    with pytest.raises(StudySpecError, match="pip install mlflow"):
        parse(loggers=["mlflow"])
    assert not {m for m in set(sys.modules) - before if m.split(".")[0] in ("mlflow", "tensorboardX", "wandb")}


def test_a_missing_logger_package_fails_before_the_folder_is_written(without, tmp_path):
    from sqn_ray.study.runner import run_study

    without("wandb")
    study = tmp_path / "s.yaml"
    study.write_text("problems: [toy-small]\nmethods: [gd]\nloggers: [wandb]\n")
    with pytest.raises(StudySpecError, match="pip install wandb"):
        run_study(study, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------- the callbacks
def test_callbacks_follow_the_study_file(tmp_path):
    assert logger_callbacks(parse(), tmp_path) == []
    (tb,) = logger_callbacks(parse(loggers=["tensorboard"]), tmp_path)
    assert isinstance(tb, TBXLoggerCallback) and tb.logdir == tmp_path / TENSORBOARD_DIR
    assert not (tmp_path / TENSORBOARD_DIR).exists()  # nothing is written before a trial starts


def test_in_tunes_saved_state_a_logger_is_an_empty_placeholder(tmp_path):
    (tb,) = logger_callbacks(parse(loggers=["tensorboard"]), tmp_path)
    copy = pickle.loads(pickle.dumps(tb))
    assert type(copy).__name__ == "_Placeholder" and vars(copy) == {}


def test_trial_params_are_the_cell_not_tunes_index():
    study = parse(methods={"gd": {"lr": [0.1, 0.5]}, "s-lsr1": {"memory": 4, "radius": [0.1, 1.0]}}, seeds=2)
    index = next(i for i, c in enumerate(study.grid) if c["method"] == "s-lsr1" and c["options"]["radius"] == 1.0)
    cell = study.grid[index]
    assert trial_params({"cell": index, "draw": {}}, study.grid) == {
        "problem": "toy-small", "method": "s-lsr1", "seed": cell["seed"], "memory": 4, "radius": 1.0}
    # random search draws options; Optuna's configs are flat; every value a str, bool, int or float
    assert trial_params({"cell": 0, "draw": {"lr": 0.25}}, study.grid)["lr"] == 0.25
    optuna = {"problem": "toy-small", "method": "s-lsr1", "seed": 0, "s-lsr1.radius": 0.3, "s-lsr1.b0": None}
    assert trial_params(optuna, None) == {"problem": "toy-small", "method": "s-lsr1", "seed": 0, "radius": 0.3,
                                          "b0": "None"}


# ------------------------------------------------------------------------------------------ end to end
def read_events(path: Path):
    """The Event protos of one TensorBoard event file (TFRecord framing: length, its CRC, data, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    data, events, at = path.read_bytes(), [], 0
    while at < len(data):
        (n,) = struct.unpack_from("<Q", data, at)
        event = Event()
        event.ParseFromString(data[at + 12:at + 12 + n])
        events.append(event)
        at += 12 + n + 4
    return events


def scalars_and_hparams(folder: Path):
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    scalars: dict[str, list[tuple[int, float]]] = {}
    hparams: dict = {}
    for file in sorted(folder.glob("events.out.tfevents.*")):
        for event in read_events(file):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    plugin = HParamsPluginData()
                    plugin.ParseFromString(value.metadata.plugin_data.content)
                    for k, v in plugin.session_start_info.hparams.items():
                        hparams[k] = getattr(v, v.WhichOneof("kind"))
                elif value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars, hparams


@pytest.mark.slow
def test_a_study_logs_each_trials_metrics_to_tensorboard(ray_cluster, tmp_path):
    from sqn_ray.study.runner import run_study

    # a scheduler that never stops a trial puts it in lockstep with Tune: one report per iteration, however fast
    # the driver polls (without it, a 15-iteration run may come in two reports)
    study = parse(loggers=["tensorboard"], budget={"iterations": 15}, report_interval=0,
                  scheduler={"type": "asha", "max_t": 1000, "grace_period": 1000})
    outcome = run_study(study, tmp_path, progress=False)
    assert outcome.done == outcome.total == 2
    trials = pd.read_parquet(tmp_path / "trials.parquet").set_index("trial_id")
    iterations = pd.read_parquet(tmp_path / "iterations.parquet")

    folders = sorted(p for p in (tmp_path / TENSORBOARD_DIR).iterdir())
    assert [p.name for p in folders] == sorted(trials.index)  # one folder per trial, named by its id
    for folder in folders:
        trial = trials.loc[folder.name]
        scalars, hparams = scalars_and_hparams(folder)
        tags = {t.removeprefix("ray/tune/") for t in scalars}
        assert {"loss", "grad_norm", "best_loss", "accuracy", "best_accuracy", "grad_equivalents"} <= tags
        # the rows and the platform's other payloads went to Parquet, not here
        assert not {t for t in tags if t.split("/")[0] in ("rows", "trial_info", "final", "replayed", "done")}
        # the step is the optimizer's iteration, and the loss at it is the one in iterations.parquet
        rows = iterations[iterations.trial_id == folder.name].set_index("iteration")
        loss = scalars["ray/tune/loss"]
        # (the trial's last report, which ends it, repeats the last iterate: the same point twice)
        assert [s for s, _ in loss] == sorted(s for s, _ in loss) and loss[-1][0] == trial.iterations
        assert len(loss) >= 3
        for step, value in loss:
            assert value == pytest.approx(rows.loss[step], rel=1e-6)
        assert scalars["ray/tune/best_loss"][-1][1] == pytest.approx(trial.best_loss, rel=1e-6)
        # the cell, as in trials.parquet, is what the HPARAMS tab shows
        assert hparams == {"problem": "toy-small", "method": "gd", "seed": 0.0, "lr": pytest.approx(trial.lr)}


def test_mlflow_defaults_to_a_store_in_the_study_folder(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (ml,) = logger_callbacks(parse(loggers=["mlflow"]), tmp_path)
    assert ml.tracking_uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}" and ml.experiment_name == "t"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert logger_callbacks(parse(loggers=["mlflow"]), tmp_path)[0].tracking_uri == "http://127.0.0.1:5000"


def test_wandb_runs_go_to_the_studys_project(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_PROJECT", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    (wb,) = logger_callbacks(parse(loggers=["wandb"]), tmp_path)
    assert wb.project == "t" and wb.kwargs == {"dir": str(tmp_path)}
