"""Output folders that recover: damaged or missing parts, foreign files, damaged Tune state, a second driver,
folders that cannot be written, and what a dead worker's error says."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sqn_ray.study.outdir import StudyError, open_output_folder
from sqn_ray.study.runner import run_study
from sqn_ray.study.spec import parse_study

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

STUDY = {"name": "recover", "problems": ["toy-small"], "methods": {"gd": {"lr": [0.1, 0.2]}}, "seeds": 3,
         "budget": {"iterations": 300}, "report_interval": 0.2}


def study_of(**over):
    return parse_study({**STUDY, **over}, source="recover.yaml")


def read(out: Path):
    return pd.read_parquet(out / "iterations.parquet"), pd.read_parquet(out / "trials.parquet")


@pytest.fixture(scope="module")
def finished_study(ray_cluster, tmp_path_factory):
    """One finished 6-trial study, copied for each kind of damage."""
    out = tmp_path_factory.mktemp("finished") / "out"
    outcome = run_study(study_of(), out, progress=False)
    assert outcome.done == 6
    it, tr = read(out)
    return out, it, tr


def damaged_copy(finished_study, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished_study[0], out)
    return out


def part_of(out: Path, k: int = 0) -> Path:
    return sorted((out / ".parts").glob("*.parquet"))[k]


def resume(out: Path):
    stream = io.StringIO()
    outcome = run_study(study_of(), out, resume=True, progress=False, stream=stream)
    return outcome, stream.getvalue()


def assert_whole(out: Path, finished_study, recomputed: set[str]):
    """Every trial and row exactly once; only ``recomputed`` trials ran again."""
    _, it0, tr0 = finished_study
    it, tr = read(out)
    assert len(tr) == 6 and tr.trial_id.is_unique and set(tr.status) == {"budget"}
    assert not it.duplicated(["trial_id", "iteration"]).any() and it.groupby("trial_id").size().eq(301).all()
    assert sorted(tr.trial_id) == sorted(tr0.trial_id)
    before, after = tr0.set_index("trial_id").finished_at, tr.set_index("trial_id").finished_at
    assert {t for t in before.index if after[t] != before[t]} == recomputed
    cols = ["trial_id", "iteration", "loss", "grad_norm"]  # gd is deterministic: recomputed rows are equal
    key = ["trial_id", "iteration"]
    pd.testing.assert_frame_equal(it[cols].sort_values(key).reset_index(drop=True),
                                  it0[cols].sort_values(key).reset_index(drop=True))


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "no metadata"])
def test_a_damaged_part_is_reported_in_one_line_and_its_trial_recomputed(finished_study, tmp_path, damage, caplog):
    out = damaged_copy(finished_study, tmp_path)
    part = part_of(out, 1)
    if damage == "missing":
        part.unlink()
    elif damage == "truncated":
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    elif damage == "garbage":
        part.write_bytes(os.urandom(3000))
    else:
        pq.write_table(pq.read_table(part).replace_schema_metadata(None), part)
    with caplog.at_level("WARNING", logger="sqn_ray.study.results"):
        outcome, said = resume(out)
    assert outcome.done == 6 and not outcome.interrupted
    if damage == "missing":
        assert "1 trial(s) Tune counts as finished have no readable results part" in said
    else:
        lines = [r.getMessage() for r in caplog.records if part.name in r.getMessage()]
        assert len(lines) == 1 and "its trial runs again" in lines[0] and "\n" not in lines[0]
        assert (out / ".parts" / "quarantine" / part.name).exists()  # kept for a look, out of the way
    assert_whole(out, finished_study, recomputed={part.stem})


def test_a_foreign_parquet_file_in_the_parts_is_quarantined(finished_study, tmp_path, caplog):
    out = damaged_copy(finished_study, tmp_path)
    pq.write_table(pa.table({"x": [1, 2, 3]}), out / ".parts" / "notes.parquet")
    with caplog.at_level("WARNING", logger="sqn_ray.study.results"):
        outcome, said = resume(out)
    assert outcome.done == 6 and "rebuilding" not in said
    assert any("notes.parquet is not a trial's part" in r.getMessage() for r in caplog.records)
    assert (out / ".parts" / "quarantine" / "notes.parquet").exists()
    assert_whole(out, finished_study, recomputed=set())


@pytest.mark.parametrize("damage", ["garbage experiment state", "garbage tuner.pkl", "no .tune"])
def test_damaged_tune_state_is_rebuilt_from_the_parts_and_never_shrinks_the_results(finished_study, tmp_path,
                                                                                    damage):
    out = damaged_copy(finished_study, tmp_path)
    exp = out / ".tune" / "study"
    if damage == "garbage experiment state":
        for f in exp.glob("experiment_state-*.json"):
            f.write_bytes(b"\x00garbage{" * 50)
    elif damage == "garbage tuner.pkl":
        (exp / "tuner.pkl").write_bytes(os.urandom(500))
    else:
        shutil.rmtree(out / ".tune")
    outcome, said = resume(out)
    assert outcome.done == 6 and outcome.replayed == 6
    if damage != "no .tune":
        assert "rebuilding Tune's side of the study from the 6 finished trial(s)" in said
    assert_whole(out, finished_study, recomputed=set())


def test_damaged_result_files_are_written_again(finished_study, tmp_path):
    out = damaged_copy(finished_study, tmp_path)
    (out / "iterations.parquet").unlink()
    (out / "trials.parquet").write_bytes(b"not parquet")
    outcome, _ = resume(out)
    assert outcome.done == 6
    assert_whole(out, finished_study, recomputed=set())


def test_a_damaged_study_record_is_refused_in_one_line(finished_study, tmp_path):
    out = damaged_copy(finished_study, tmp_path)
    (out / ".study.json").write_text("{garbage")
    with pytest.raises(StudyError, match=r"\.study\.json is damaged \(JSONDecodeError\)"):
        resume(out)
    assert_whole(out, finished_study, recomputed=set())  # and nothing was touched


def test_results_without_their_study_record_are_not_started_over(finished_study, tmp_path):
    out = damaged_copy(finished_study, tmp_path)
    (out / ".study.json").unlink()
    for resume_it in (False, True):
        with pytest.raises(StudyError, match=r"holds a study's results but not its record \.study\.json"):
            run_study(study_of(), out, resume=resume_it, progress=False)
    assert_whole(out, finished_study, recomputed=set())  # nothing deleted


# ---------------------------------------------------------------------------------------------- the lock
def test_a_second_driver_is_refused_and_told_who_holds_the_folder(tmp_path, subprocess_env):
    out = tmp_path / "out"
    with open_output_folder(out):
        with pytest.raises(StudyError, match=rf"in use by another study driver \(pid {os.getpid()} on "):
            open_output_folder(out)
        study = tmp_path / "s.yaml"
        study.write_text(json.dumps(STUDY))
        res = subprocess.run([sys.executable, "-m", "sqn_ray.study", "run", str(study), "--out", str(out),
                              "--resume", "--quiet"], cwd=ROOT, env=subprocess_env, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert f"in use by another study driver (pid {os.getpid()}" in res.stderr
    with open_output_folder(out):  # released with its holder
        pass


def test_a_killed_driver_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "out"
    code = ("from sqn_ray.study.outdir import open_output_folder; "
            f"f = open_output_folder(__import__('pathlib').Path({str(out)!r})); "
            "print('held', flush=True); __import__('time').sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(StudyError, match=f"pid {p.pid}"):
        open_output_folder(out)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    with open_output_folder(out):
        pass


# --------------------------------------------------------------------------------------- unwritable output
def _run_cli(study_file: Path, out: Path, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sqn_ray.study", "run", str(study_file), "--out", str(out),
                           "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def mounted(tmp_path):
    """A small tmpfs of our own (root only): read-only or full file systems for real."""
    mounts = []

    def mount(options: str) -> Path:
        where = tmp_path / f"fs{len(mounts)}"
        where.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_unusable_output_folders_get_one_line_and_exit_2(tmp_path, subprocess_env, mounted):
    study = tmp_path / "s.yaml"
    study.write_text(json.dumps(STUDY))
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    full = mounted("size=64k")
    (full / "filler").write_bytes(b"\0" * (64 * 1024 - 4096))  # what is left is less than the check needs
    cases = {
        a_file: "is a file, not a folder",
        a_file / "out": "cannot create the output folder",
        mounted("size=1m,ro"): "the file system is read-only",
        mounted("size=1m,ro") / "out": "the file system is read-only",
        full: "no space left on the device",
    }
    for out, words in cases.items():
        res = _run_cli(study, out, subprocess_env)
        assert res.returncode == 2, (out, res.stderr[-2000:])
        assert res.stderr.count("\n") == 1 and words in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert sorted(p.name for p in full.iterdir()) == ["filler"]  # nothing left behind


def test_a_disk_that_fills_up_mid_study_exits_2_and_leaves_whole_files(tmp_path, subprocess_env, mounted):
    study = tmp_path / "s.yaml"
    study.write_text(json.dumps({**STUDY, "seeds": 40, "budget": {"iterations": 2000}}))
    disk = mounted("size=400k")
    res = _run_cli(study, disk / "out", subprocess_env)
    assert res.returncode == 2, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "No space left on device" in last and "--resume" in last, res.stderr[-3000:]
    for name in ("iterations.parquet", "trials.parquet"):  # whole files or none: never half of one
        if (disk / "out" / name).exists():
            pq.read_table(disk / "out" / name)
    assert not list((disk / "out").glob(".*.tmp"))


# ------------------------------------------------------------------------------------------ a dead worker
def test_a_dead_workers_error_says_what_died(ray_cluster, tmp_path):
    study = parse_study({"name": "die", "problems": ["toy-small"], "methods": {"gd": {"lr": 0.1}}, "seeds": 1,
                         "budget": {"iterations": 100000}, "stop": {"loss": -1.0}, "report_interval": 0.2,
                         "max_failures": 0}, source="die.yaml")
    done = {}
    th = threading.Thread(target=lambda: done.update(outcome=run_study(study, tmp_path, progress=False)))
    th.start()
    deadline = time.monotonic() + 120
    pid = None
    while pid is None and time.monotonic() < deadline:
        try:
            t = pd.read_parquet(tmp_path / "trials.parquet")
            t = t[(t.status == "running") & t.pid.notna()]
            pid = int(t.pid.iloc[0]) if len(t) else None
        except (OSError, KeyError, AttributeError):
            pass
        time.sleep(0.2)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    th.join(timeout=180)
    _, tr = read(tmp_path)
    row = tr.iloc[0]
    assert row.status == "failed" and row.stop_reason == "worker_died"
    assert row.error.startswith(f"the trial's worker process (pid {pid}) died on node "), row.error
    assert "SIGKILL" in row.error and "127.0.0.1" in row.error and "host " in row.error, row.error


def test_worker_death_texts():
    from sqn_ray.study.runner import worker_death_text

    info = {"pid": 77, "node_id": "abcdef0123456789", "node_ip": "10.1.2.3", "hostname": "gpu-7"}
    assert worker_death_text("", info) == ("the trial's worker process (pid 77) died on node abcdef012345, "
                                           "10.1.2.3, host gpu-7: no error text from Ray")
    node_died = "ray.exceptions.NodeDiedError: The node with node id: abc and address: 10.1.2.3 has died."
    assert worker_death_text(node_died, info).endswith("its whole node died (lost, or pre-empted)")
    exited = ("The actor died unexpectedly before finishing this task.\n\tpid: 81\n\tip: 10.1.2.4\nThe actor is dead "
              "because its worker process has died. Worker exit type: INTENDED_USER_EXIT Worker exit detail: "
              "Worker exits by an user request. exit_actor() is called.")
    text = worker_death_text(exited, {})
    assert text == ("the trial's worker process (pid 81) died on 10.1.2.4: Ray: INTENDED_USER_EXIT: Worker exits by "
                    "an user request.")


def test_a_module_a_node_cannot_import_is_named_with_the_fix():
    from sqn_ray.study.runner import unimportable_text

    ray_text = ("ray.exceptions.ActorDiedError: The actor died because of an error raised in its creation task, "
                "pid: 12, ip: 10.1.2.5\n  ModuleNotFoundError: No module named 'mylab_models.nets'")
    assert unimportable_text(ray_text, ("toy-small",)) == (
        "the node at 10.1.2.5 running this trial cannot import module 'mylab_models.nets', which the driver could "
        "(ModuleNotFoundError): install it on every node (cluster.yaml's setup_commands), then resume the study")
    assert unimportable_text("RuntimeError: CUDA out of memory", ("toy-small",)) is None


def test_only_the_last_failure_of_a_tune_error_file_is_reported():
    from sqn_ray.study.runner import last_failure

    text = ("Failure # 1 (occurred at 2026-12-02_15:00:00)\nModuleNotFoundError: No module named 'lonelyplug'\n"
            "Failure # 2 (occurred at 2026-12-02_15:09:00)\nThe actor died unexpectedly. pid: 81\n")
    assert last_failure(text) == "The actor died unexpectedly. pid: 81\n"
    assert last_failure("no header at all") == "no header at all"
