"""A researcher's own model in a study, both ways: problems defined in a notebook handed to run_study, and the
example plugin package (examples/sqn-ray-digits) installed and named by a study file, run end to end."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from sqn_ray.study.results import read_metadata
from sqn_ray.study.runner import run_study

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sqn-ray-digits"


def test_a_notebooks_own_module_runs_in_a_study(ray_cluster, tmp_path):
    from torch import nn

    from sqn_ray.problems import ModuleProblem

    class Net(nn.Module):  # defined here, as in a notebook cell: shipped to the trials by value
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

        def forward(self, x):
            return self.body(x)

    gen = torch.Generator().manual_seed(0)
    X = torch.randn(60, 4, generator=gen)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    mine = ModuleProblem("notebook-net", Net, torch.nn.functional.cross_entropy, X, y, test=(X[:20], y[:20]))
    study = {"name": "own", "problems": ["notebook-net", "toy-small"], "seeds": 2, "budget": {"iterations": 8},
             "methods": {"s-lsr1": {"memory": 4}, "lbfgs": {"memory": 4}}, "report_interval": 0.2}
    outcome = run_study(study, tmp_path, progress=False, problems={"notebook-net": mine})
    assert outcome.done == outcome.total == 8
    it, tr = pd.read_parquet(tmp_path / "iterations.parquet"), pd.read_parquet(tmp_path / "trials.parquet")
    assert set(tr.status) == {"budget"} and tr.error.isna().all()
    ours = it[it.problem == "notebook-net"]
    assert len(ours) == 2 * 2 * 9 and ours.test_accuracy.notna().any()
    start = ours[ours.iteration == 0].groupby("seed").loss.nunique()
    assert (start == 1).all()  # one seed, one initial point (the module's own init) for every method
    meta = read_metadata(tmp_path / "iterations.parquet")
    assert meta["sqn_ray.problems"]["notebook-net"]["d"] == mine.dim == 4 * 8 + 8 + 8 * 3 + 3


def test_a_study_from_a_mapping_refuses_an_unknown_problem_before_ray(tmp_path):
    from sqn_ray.study.spec import StudySpecError

    with pytest.raises(StudySpecError, match="unknown value 'not-here'"):
        run_study({"problems": ["not-here"], "methods": {"gd": {}}}, tmp_path)
    assert not (tmp_path / "iterations.parquet").exists()


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """The example plugin installed as pip installs it (into a target folder: the test environment stays clean)."""
    target = tmp_path_factory.mktemp("site")
    _install_example(target)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("RAY_ADDRESS", None)
    return env


def test_the_example_plugin_is_listed_once_installed(installed_example):
    out = subprocess.run([sys.executable, "-m", "sqn_ray.cli", "problems"], env=installed_example, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("digits-cnn "))
    assert "d = 1066" in line and "n = 1500" in line and "from sqn-ray-digits 0.1.0" in line
    assert any(line.startswith("digits-cnn-b256 ") for line in out.splitlines())


def test_a_study_file_naming_the_plugin_runs_end_to_end(installed_example, tmp_path):
    study = tmp_path / "digits.yaml"
    study.write_text("name: digits-test\nproblems: [digits-cnn, digits-cnn-b256]\nseeds: 1\n"
                     "methods: {s-lsr1: {memory: 4}, adam: {lr: 0.01}}\nbudget: {iterations: 6}\n"
                     "dtype: float32\nreport_interval: 0.2\n")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "sqn_ray.study", "run", str(study), "--out", str(out), "--quiet"],
                         env=installed_example, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    it, tr = pd.read_parquet(out / "iterations.parquet"), pd.read_parquet(out / "trials.parquet")
    assert sorted(tr.problem) == ["digits-cnn", "digits-cnn", "digits-cnn-b256", "digits-cnn-b256"]
    assert set(tr.status) == {"budget"} and len(it) == 4 * 7
    assert it.test_accuracy.notna().all()  # the plugin's test set, recorded every iteration
    for _, trial in it.groupby("trial_id"):  # the epochs axis grows by |B| / n per evaluation with batches
        assert (trial.epochs.diff().dropna() > 0).all()
    final = it.groupby(["problem", "method"]).epochs.max()
    assert (final["digits-cnn-b256"] < final["digits-cnn"]).all()
    problems = json.loads(json.dumps(read_metadata(out / "iterations.parquet")["sqn_ray.problems"]))
    assert problems["digits-cnn"]["d"] == 1066 and problems["digits-cnn"]["n"] == 1500
    assert problems["digits-cnn"]["target_accuracy"] == 1.0


def _install_example(target: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(EXAMPLE)], check=True, capture_output=True, timeout=300)


def _plugin_study(tmp_path: Path) -> Path:
    study = tmp_path / "digits-cluster.yaml"
    study.write_text("name: digits-cluster\nproblems: [digits-cnn]\nseeds: 1\nmethods: {s-lsr1: {memory: 4}, "
                     "lbfgs: {memory: 4}}\nbudget: {iterations: 4}\ndtype: float32\nreport_interval: 0.2\n"
                     "max_failures: 0\n")
    return study


def _run_on(cluster, study: Path, out: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sqn_ray.study", "run", str(study), "--out", str(out),
                           "--address", cluster.address, "--quiet", *extra], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def cluster_site(ray_cluster):
    """The test cluster's nodes' site folder, emptied again after the test (what a test installs on the nodes
    stays out of the other tests, and the test can run again in the same session)."""
    yield ray_cluster.site
    for entry in ray_cluster.site.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def test_a_plugin_study_runs_on_a_cluster_whose_nodes_have_it(ray_cluster, cluster_site, subprocess_env, tmp_path):
    _install_example(cluster_site)  # every node has it (the cluster's site folder), the driver too
    env = dict(subprocess_env, PYTHONPATH=os.pathsep.join([str(cluster_site), subprocess_env["PYTHONPATH"]]))
    out = tmp_path / "out"
    run = _run_on(ray_cluster, _plugin_study(tmp_path), out, env)
    assert run.returncode == 0, run.stderr[-3000:]
    trials = pd.read_parquet(out / "trials.parquet")
    assert set(trials.status) == {"budget"} and (trials.iterations == 4).all()
    assert set(trials.node_id) <= ray_cluster.worker_node_ids  # the trials ran on the worker nodes


DRIVER_ONLY_PLUGIN = """
import torch
import torch.nn.functional as F
from torch import nn

from sqn_ray.problems import ModuleProblem


class Net(nn.Module):  # a module-level class: pickled by reference, so a node must be able to import it
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def forward(self, x):
        return self.layer(x)


def make():
    X = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
    return ModuleProblem("lonely-net", Net, F.cross_entropy, X, (X[:, 0] > 0).long())
"""


def test_a_plugin_the_nodes_lack_fails_its_trials_naming_the_package(ray_cluster, cluster_site, subprocess_env,
                                                                      tmp_path):
    site = tmp_path / "driver-site"  # on the driver's path only, not the nodes'
    (site / "lonelyplug-0.1.dist-info").mkdir(parents=True)
    (site / "lonelyplug.py").write_text(DRIVER_ONLY_PLUGIN)
    (site / "lonelyplug-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: lonelyplug\n"
                                                                 "Version: 0.1\n")
    (site / "lonelyplug-0.1.dist-info" / "entry_points.txt").write_text(
        "[sqn_ray.problems]\nlonely-net = lonelyplug:make\n")
    env = dict(subprocess_env, PYTHONPATH=os.pathsep.join([str(site), subprocess_env["PYTHONPATH"]]))
    study = tmp_path / "lonely.yaml"
    study.write_text("name: lonely\nproblems: [lonely-net]\nseeds: 1\nmethods: {gd: {lr: 0.1}}\n"
                     "budget: {iterations: 3}\nmax_failures: 0\n")
    out = tmp_path / "out"
    run = _run_on(ray_cluster, study, out, env)
    assert run.returncode == 0, run.stderr[-3000:]  # the study ends, its failed trial recorded
    (trial,) = pd.read_parquet(out / "trials.parquet").to_dict("records")
    assert trial["status"] == "failed"
    assert ("cannot import module 'lonelyplug' of problem 'lonely-net' (plugin 'lonely-net = lonelyplug:make' from "
            "lonelyplug 0.1): install the plugin on every node") in trial["error"], trial["error"]
    shutil.copytree(site, cluster_site, dirs_exist_ok=True)  # installed on the nodes now: as the message says,
    run = _run_on(ray_cluster, study, out, env, "--resume")      # resuming reruns the failed trial
    assert run.returncode == 0, run.stderr[-3000:]
    (trial,) = pd.read_parquet(out / "trials.parquet").to_dict("records")
    assert trial["status"] == "budget" and trial["iterations"] == 3 and pd.isna(trial["error"])
