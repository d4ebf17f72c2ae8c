"""Interruptions: Ctrl-C and kill -9 of the driver, then --resume; a trial actor killed mid-run (retried);
and the command-line entry point on an embedded Ray."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sqn_ray.study.results import TERMINAL_STATUSES
from sqn_ray.study.runner import run_study
from sqn_ray.study.spec import parse_study

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# gd never converges on the toy net: every trial runs its full budget (~1 s here), 12 trials, each on half
# of one of the cluster's logical GPUs
STUDY = """\
name: resumable
problems: [toy-small]
methods: {gd: {lr: 0.1}}
seeds: 12
budget: {iterations: 2500}
resources: {cpu: 1, gpu: 0.5}
report_interval: 0.3
"""


def trials_now(out: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(out / "trials.parquet")
    except (FileNotFoundError, OSError):
        return pd.DataFrame({"status": [], "trial_id": [], "finished_at": []})


def finished(out: Path) -> pd.DataFrame:
    t = trials_now(out)
    return t[t.status.isin(TERMINAL_STATUSES)]


def wait_for(cond, proc, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited early with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("timed out")


def driver(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "sqn_ray.study", "run", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_resume_after_ctrl_c_and_kill_9(ray_cluster, tmp_path, subprocess_env):
    study = tmp_path / "resumable.yaml"
    study.write_text(STUDY)
    out = tmp_path / "out"
    args = [str(study), "--out", str(out), "--address", ray_cluster.address, "--quiet"]

    # 1. Ctrl-C once a few trials are done
    p = driver(args, subprocess_env)
    wait_for(lambda: len(finished(out)) >= 3, p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err[-3000:]
    assert "--resume" in err
    first = finished(out).set_index("trial_id").finished_at
    assert 3 <= len(first) < 12

    # 2. the folder is not silently overwritten
    p = driver(args, subprocess_env)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "--resume" in err

    # 3. resume, then kill -9 the driver mid-study
    p = driver([*args, "--resume"], subprocess_env)
    wait_for(lambda: len(finished(out)) >= len(first) + 2, p)
    p.kill()
    p.communicate(timeout=30)
    second = finished(out).set_index("trial_id").finished_at

    # 4. resume to the end
    p = driver([*args, "--resume"], subprocess_env)
    _, err = p.communicate(timeout=180)
    assert p.returncode == 0, err[-3000:]

    it, tr = pd.read_parquet(out / "iterations.parquet"), pd.read_parquet(out / "trials.parquet")
    assert len(tr) == 12 and tr.trial_id.is_unique and set(tr.status) == {"budget"}
    assert sorted(tr.seed) == list(range(12))  # every cell exactly once
    assert not it.duplicated(["trial_id", "iteration"]).any()  # no duplicated row ...
    assert it.groupby("trial_id").size().eq(2501).all()  # ... and none lost
    assert set(it.trial_id) == set(tr.trial_id)
    # run through --address on the multi-node cluster: spread over both GPU nodes, pinned to their GPU
    assert set(tr.node_id) == ray_cluster.worker_node_ids
    assert (tr.gpu_ids == "0").all() and (tr.cuda_visible_devices == "0").all() and (tr.threads == 1).all()
    final = tr.set_index("trial_id").finished_at
    # trials finished before an interruption were not run again
    assert final[first.index].equals(first) and final[second.index].equals(second)

    # 5. resuming a finished study replays it, computing nothing
    p = driver([*args, "--resume"], subprocess_env)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    again = pd.read_parquet(out / "trials.parquet").set_index("trial_id")
    assert again.finished_at.equals(final)


def test_a_killed_trial_actor_is_retried(ray_cluster, tmp_path):
    # long enough (~5 s a trial) that a trial is still running when the file first shows it, however quiet
    # the machine: with short trials the whole study could finish between two looks
    study = parse_study({"name": "crash", "problems": ["toy-small"], "methods": {"gd": {"lr": 0.1}}, "seeds": 4,
                         "budget": {"iterations": 20000}, "stop": {"loss": -1.0},  # never met: run the full budget
                         "report_interval": 0.2, "max_failures": 2},
                        source="crash.yaml")
    done = {}
    th = threading.Thread(target=lambda: done.update(outcome=run_study(study, tmp_path, progress=False)))
    th.start()

    def running_pid():
        t = trials_now(tmp_path)
        t = t[(t.status == "running") & t.pid.notna()] if "pid" in t else t.iloc[:0]
        return int(t.pid.iloc[0]) if len(t) else None

    def running_or_finished():
        if "outcome" in done:
            raise AssertionError("the study finished before any trial was seen running")
        return running_pid() is not None

    wait_for(running_or_finished, None)
    os.kill(running_pid(), signal.SIGKILL)
    th.join(timeout=180)
    assert not th.is_alive()
    it, tr = pd.read_parquet(tmp_path / "iterations.parquet"), pd.read_parquet(tmp_path / "trials.parquet")
    assert done["outcome"].done == 4 and set(tr.status) == {"budget"}
    assert tr.restarts.sum() >= 1
    assert it.groupby("trial_id").size().eq(20001).all() and not it.duplicated(["trial_id", "iteration"]).any()


def test_a_killed_trial_worker_resumes_from_its_checkpoint(ray_cluster, tmp_path):
    """kill -9 of the trial's worker after a checkpoint: Tune retries the trial from it; its rows go on with no
    gap and no duplicate, and the trajectory is the uninterrupted run's, bit for bit."""
    import torch

    from sqn_ray import minimize
    from sqn_ray.problems import get_problem

    iterations = 1500
    study = parse_study({"name": "checkpointed", "problems": ["toy-small"], "methods": {"s-lbfgs": {"memory": 3}},
                         "seeds": 1, "budget": {"iterations": iterations}, "stop": {"loss": -1.0},
                         "report_interval": 0.2, "checkpoint_every": 1.0, "max_failures": 2}, source="ck.yaml")
    done = {}
    th = threading.Thread(target=lambda: done.update(outcome=run_study(study, tmp_path, progress=False)))
    th.start()

    def checkpointed_and_running():
        if "outcome" in done:
            raise AssertionError("the study finished before the trial was seen checkpointed")
        t = trials_now(tmp_path)
        ck = list((tmp_path / ".tune").glob("study/*/checkpoint_*/checkpoint.json"))
        return bool(ck) and "pid" in t and (t.status == "running").any() and t.pid.notna().any()

    wait_for(checkpointed_and_running, None)
    os.kill(int(trials_now(tmp_path).pid.dropna().iloc[0]), signal.SIGKILL)
    th.join(timeout=300)
    assert not th.is_alive()
    it, tr = pd.read_parquet(tmp_path / "iterations.parquet"), pd.read_parquet(tmp_path / "trials.parquet")
    assert done["outcome"].done == 1 and tr.restarts.iloc[0] == 1
    assert tr.resumed_from.iloc[0] > 0  # continued from a checkpoint, not from iteration 0
    assert not it.duplicated(["trial_id", "iteration"]).any()
    toy = get_problem("toy-small")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial ran (and two threads beside Ray's workers on 2 cores crawl)
    try:
        whole = minimize(toy.oracle, toy.init(0), "s-lbfgs", memory=3, seed=0, max_iters=iterations)
    finally:
        torch.set_num_threads(threads)
    assert list(it.iteration) == list(whole.history.iteration)  # no gap
    for column in ("loss", "grad_norm", "n_grad", "step_size", "s_norm"):  # exactly equal (NaN where NaN)
        np.testing.assert_array_equal(it[column].to_numpy(), whole.history[column].to_numpy(), err_msg=column)


def test_cli_runs_the_smoke_study_on_an_embedded_ray(tmp_path, subprocess_env):
    out = tmp_path / "smoke"
    cmd = [sys.executable, "-m", "sqn_ray.study", "run", "studies/smoke.yaml", "--smoke", "--out", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "trials done" in res.stderr and "iterations.parquet" in res.stdout
    assert "INFO" not in res.stderr and "(StudyTrainable" not in res.stderr  # no log flood
    tr = pd.read_parquet(out / "trials.parquet")
    assert len(tr) == 5 and set(tr.status) <= set(TERMINAL_STATUSES)
    res = subprocess.run(cmd, cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--resume" in res.stderr
