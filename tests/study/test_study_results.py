"""The Parquet contract: columns, summaries, atomic writes, metadata, resume bookkeeping (no Ray needed)."""
from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest

from sqn_ray.study import results as R
from sqn_ray.study.results import ResultStore, read_metadata
from sqn_ray.study.spec import parse_study

ITERATION_CONTRACT = ["study", "trial_id", "problem", "method", "memory", "radius", "sampling", "seed", "iteration",
                      "loss", "accuracy", "grad_norm", "n_fun", "n_grad", "n_hvp", "grad_equivalents", "epochs",
                      "wall_time", "step_size", "trust_radius", "accepted", "pairs_kept", "s_norm"]
TRIAL_CONTRACT = ["study", "trial_id", "problem", "method", "memory", "radius", "sampling", "seed", "status",
                  "error", "final_loss", "best_loss", "final_accuracy", "best_accuracy", "iters_to_target",
                  "grad_equivalents_to_target", "wall_time", "node_id", "device"]


@pytest.fixture
def study():
    return parse_study({"name": "unit", "problems": ["toy-small"], "methods": {"s-lsr1": {"memory": [2, 4]},
                        "gd": {"lr": 0.5}}, "seeds": 2, "stop": {"accuracy": "target"}}, source="unit.yaml",
                       text="name: unit\n")


def cell(method="s-lsr1", seed=0, **options):
    return {"problem": "toy-small", "method": method, "seed": seed, "options": options}


def rows(n, acc_hit=None, start=0):
    its = list(range(start, start + n))
    return {"iteration": its, "loss": [1.0 / (i + 1) for i in its], "grad_norm": [0.1] * n,
            "accuracy": [1.0 if acc_hit is not None and i >= acc_hit else 0.5 for i in its],
            "n_fun": its, "n_grad": its, "n_hvp": [2 * i for i in its], "grad_equivalents": [3.0 * i for i in its],
            "epochs": [3.0 * i for i in its], "wall_time": [0.01 * i for i in its], "accepted": [True] * n,
            "step_size": [math.nan] * n, "trust_radius": [1.0] * n, "pairs_kept": [2] * n, "s_norm": [0.5] * n}


INFO = {"node_id": "n1", "device": "cpu", "threads": 1, "problem_target_accuracy": 1.0}


def test_columns_summaries_and_metadata(tmp_path, study):
    store = ResultStore(tmp_path, study)
    store.start("t1", cell(memory=2))
    store.add_rows("t1", cell(memory=2), rows(4), INFO)
    store.add_rows("t1", cell(memory=2), rows(3, acc_hit=5, start=4), None)
    store.finish("t1", cell(memory=2), {"status": "solved", "stop_reason": "target"})
    store.start("t2", cell("gd", lr=0.5))
    store.add_rows("t2", cell("gd", lr=0.5), rows(2), INFO)  # still running
    store.flush(force=True)

    it = pq.read_table(tmp_path / "iterations.parquet").to_pandas()
    tr = pq.read_table(tmp_path / "trials.parquet").to_pandas().set_index("trial_id")
    assert set(ITERATION_CONTRACT) <= set(it.columns) and "lr" in it.columns
    assert set(TRIAL_CONTRACT) <= set(tr.reset_index().columns)
    assert len(it) == 9 and not it.duplicated(["trial_id", "iteration"]).any()
    t1 = tr.loc["t1"]
    assert (t1.status, t1.iters_to_target, t1.grad_equivalents_to_target, t1.iterations) == ("solved", 5, 15.0, 6)
    assert t1.best_loss == pytest.approx(1 / 7) and t1.final_accuracy == 1.0 and t1.memory == 2
    assert math.isnan(t1.lr) and t1.radius == 1.0  # lr does not apply to s-lsr1; radius is its default
    assert tr.loc["t2"].status == "running" and tr.loc["t2"].lr == 0.5 and math.isnan(tr.loc["t2"].radius)
    assert (tr.loc["t2"].best_loss, tr.loc["t2"].final_loss, tr.loc["t2"].iterations) == (0.5, 0.5, 1)
    meta = read_metadata(tmp_path / "iterations.parquet")
    assert meta["sqn_ray.study"]["name"] == "unit" and meta["sqn_ray.study_yaml"] == "name: unit\n"
    assert {"torch", "ray", "python"} <= set(meta["sqn_ray.versions"]) and meta["sqn_ray.git_revision"]
    assert read_metadata(tmp_path / "trials.parquet")["sqn_ray.fingerprint"] == study.fingerprint


def _files(folder):
    """{path: (size, mtime_ns, inode)} of every file under ``folder``."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.rglob("*") if p.is_file()}


def test_live_flushes_write_new_rows_only_and_never_rewrite_a_file(tmp_path, study):
    """A live flush writes the rows that arrived since the last one as a new segment; no file written before
    changes; the driver keeps no written row; read_live sees what the compacted file will hold."""
    store = ResultStore(tmp_path, study, min_flush_interval=0.0)
    store.spill_seconds = 0.0
    store.start("t1", cell(memory=2))
    store.add_rows("t1", cell(memory=2), rows(5), INFO)
    assert store.flush()
    before = _files(tmp_path / ".parts")
    assert [p.name for p in before] == ["t1.000000.parquet"]
    assert store.trials["t1"].buffer == [] and store.trials["t1"].n_rows == 5
    store.add_rows("t1", cell(memory=2), rows(3, start=5), None)
    assert store.flush()
    after = _files(tmp_path / ".parts")
    assert {p: after[p] for p in before} == before and len(after) == 2  # the old segment untouched
    assert not (tmp_path / "iterations.parquet").exists()  # compacted once, at the end
    live = R.read_live(tmp_path).to_pandas()
    assert list(live.iteration) == list(range(8)) and set(live.trial_id) == {"t1"}
    store.finish("t1", cell(memory=2), {"status": "budget", "stop_reason": "iterations"})
    assert _files(tmp_path / ".parts").keys() >= after.keys()
    store.flush(force=True)
    final = pq.read_table(tmp_path / "iterations.parquet").to_pandas()
    assert final.equals(R.read_live(tmp_path).to_pandas()[final.columns])
    assert pq.ParquetFile(tmp_path / "iterations.parquet").metadata.row_group(0).column(0).compression == "ZSTD"


def test_a_retried_trial_continues_its_rows_without_gap_or_duplicate(tmp_path, study):
    store = ResultStore(tmp_path, study)
    store.spill_seconds = 0.0
    c = cell(memory=2)
    store.add_rows("r", c, rows(10), INFO)
    store.flush()  # rows 0-9 written
    store.add_rows("r", c, rows(2, start=10), None)  # 10-11 buffered
    store.restart("r", c)  # its worker died; Tune resumes it from a checkpoint at iteration 5
    resumed = rows(7, start=6)
    resumed["loss"] = [-1.0] * 7  # the new attempt's rows, told apart from the first attempt's
    store.add_rows("r", c, resumed, None)
    store.finish("r", c, {"status": "budget"})
    store.flush(force=True)
    it = pq.read_table(tmp_path / "iterations.parquet").to_pandas()
    assert list(it.iteration) == list(range(13))
    assert (it.loss[it.iteration >= 6] == -1.0).all() and (it.loss[it.iteration < 6] > 0).all()
    tr = pq.read_table(tmp_path / "trials.parquet").to_pandas().iloc[0]
    assert tr.restarts == 1 and tr.iterations == 12 and tr.final_loss == -1.0 and tr.best_loss == -1.0


def test_a_resumed_driver_continues_the_rows_of_unfinished_trials(tmp_path, study):
    store = ResultStore(tmp_path, study)
    store.spill_seconds = 0.0
    c = cell(memory=2)
    store.add_rows("u", c, rows(4), INFO)
    store.flush()
    store.add_rows("u", c, rows(3, start=4), None)  # never written: the driver is killed here
    again = ResultStore(tmp_path, study)
    assert again.load_parts() == {} and again.durable_rows() == {"u": 3}
    again.add_rows("u", c, rows(5, start=4), None)  # resumed from its checkpoint at iteration 3
    again.finish("u", c, {"status": "budget"})
    again.flush(force=True)
    it = pq.read_table(tmp_path / "iterations.parquet").to_pandas()
    assert list(it.iteration) == list(range(9)) and it.memory.eq(2).all()


def test_the_last_rows_patch_reaches_a_row_already_written(tmp_path, study):
    store = ResultStore(tmp_path, study)
    store.spill_seconds = 0.0
    c = cell(memory=2)
    store.add_rows("p", c, rows(3), INFO)
    store.flush()  # every row written; the final accuracy comes after
    store.finish("p", c, {"status": "budget", "patch_last": {"accuracy": 1.0}})
    store.flush(force=True)
    it = pq.read_table(tmp_path / "iterations.parquet").to_pandas()
    tr = pq.read_table(tmp_path / "trials.parquet").to_pandas().iloc[0]
    assert list(it.accuracy) == [0.5, 0.5, 1.0] and len(it) == 3
    assert tr.status == "solved" and tr.final_accuracy == 1.0 and tr.iters_to_target == 2


def test_parts_reload_and_only_known_trials_are_written(tmp_path, study):
    store = ResultStore(tmp_path, study)
    for tid, c in (("a", cell(memory=2)), ("b", cell(memory=4))):
        store.add_rows(tid, c, rows(3), INFO)
        store.finish(tid, c, {"status": "budget", "stop_reason": "iterations"})
    again = ResultStore(tmp_path, study)  # a resumed driver
    recorded = again.load_parts()
    assert set(recorded) == {"a", "b"} and recorded["a"]["summary"]["status"] == "budget"
    assert recorded["a"]["cell_key"] == R.cell_key(cell(memory=2))
    again.set_known(["a"])  # Tune forgot b (created after its last snapshot): b is not written
    again.flush(force=True)
    it = pq.read_table(tmp_path / "iterations.parquet").to_pandas()
    assert set(it.trial_id) == {"a"} and len(it) == 3


def test_a_rerun_trial_replaces_its_rows(tmp_path, study):
    store = ResultStore(tmp_path, study)
    store.add_rows("a", cell(memory=2), rows(3), INFO)
    store.finish("a", cell(memory=2), {"status": "budget"})
    store.add_rows("a", cell(memory=2), rows(2), INFO)  # recomputed from iteration 0
    store.finish("a", cell(memory=2), {"status": "budget"})
    store.restart("b", cell(memory=4))
    store.add_rows("b", cell(memory=4), rows(5), INFO)
    store.restart("b", cell(memory=4))  # retried after a worker died: starts over
    store.add_rows("b", cell(memory=4), rows(2), INFO)
    store.flush(force=True)
    it = pq.read_table(tmp_path / "iterations.parquet").to_pandas()
    assert it.groupby("trial_id").size().to_dict() == {"a": 2, "b": 2}
    assert not it.duplicated(["trial_id", "iteration"]).any()


def test_writes_are_atomic(tmp_path, study, monkeypatch):
    store = ResultStore(tmp_path, study)
    store.add_rows("a", cell(memory=2), rows(3), INFO)
    store.flush(force=True)
    before = (tmp_path / "iterations.parquet").read_bytes()

    class Crash(R.pq.ParquetWriter):
        def write_table(self, table, row_group_size=None):
            super().write_table(table.slice(0, 1))
            raise OSError("disk full")

    monkeypatch.setattr(R.pq, "ParquetWriter", Crash)
    store.add_rows("a", cell(memory=2), rows(2, start=3), None)
    with pytest.raises(OSError):
        store.flush(force=True)
    assert (tmp_path / "iterations.parquet").read_bytes() == before  # readers still see the whole old file
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    store.flush(force=True)  # the next flush writes everything
    assert len(pq.read_table(tmp_path / "iterations.parquet")) == 5


def test_failed_and_diverged_keep_status_and_error(tmp_path, study):
    store = ResultStore(tmp_path, study)
    store.add_rows("f", cell(memory=2), None, INFO)
    store.finish("f", cell(memory=2), {"status": "failed", "stop_reason": "error", "error": "RuntimeError: boom"})
    r = rows(3)
    r["loss"][-1] = math.nan
    store.add_rows("d", cell(memory=4), r, INFO)
    store.finish("d", cell(memory=4), {"status": "diverged", "stop_reason": "diverged"})
    store.flush(force=True)
    tr = pq.read_table(tmp_path / "trials.parquet").to_pandas().set_index("trial_id")
    assert tr.loc["f"].status == "failed" and "boom" in tr.loc["f"].error
    assert tr.loc["d"].status == "diverged" and tr.loc["d"].best_loss == 0.5
    meta = json.loads(pq.read_schema(tmp_path / ".parts" / "f.parquet").metadata[b"sqn_ray.trial"])
    assert meta["summary"]["error"] == "RuntimeError: boom"


def test_running_summary_skips_non_finite_values(tmp_path, study):
    store = ResultStore(tmp_path, study)
    r = rows(3)
    r["loss"] = [2.0, math.nan, math.inf]
    r["accuracy"] = [0.25, 0.75, math.nan]
    store.add_rows("r", cell(memory=2), r, INFO)
    store.add_rows("r", cell(memory=2), rows(1, start=3), None)  # loss 0.25, accuracy 0.5
    store.flush(force=True)
    tr = pq.read_table(tmp_path / "trials.parquet").to_pandas().set_index("trial_id").loc["r"]
    assert tr.status == "running" and tr.best_loss == 0.25 and tr.final_loss == 0.25
    assert tr.best_accuracy == 0.75 and tr.final_accuracy == 0.5 and tr.iterations == 3


def test_every_optimizer_field_has_a_column_type():
    """A chunk converts to Arrow without inspecting values only if each field minimize records is typed here."""
    from sqn_ray.optim.minimize import RECORD_FIELDS

    assert set(RECORD_FIELDS) <= set(R.RECORD_COLUMNS) | set(R.OPTIMIZER_COLUMNS)
    chunk = R.record_table({"iteration": [0, 1], "identity_fallback": [False, True], "inner_iters": [0, 3],
                            "rho": [math.nan, 0.5], "custom": [1, 2]})
    assert chunk.schema.field("identity_fallback").type == "bool" and chunk.schema.field("custom").type == "int64"


def test_each_problems_size_is_recorded_in_the_metadata_and_read_back_by_the_analysis(tmp_path, study):
    """n, d and the target accuracy come from the trials (as they built the problem): the analysis reads them
    from the files and builds no problem."""
    from analysis.load import load_study as load_results

    store = ResultStore(tmp_path, study)
    info = {**INFO, "problem_dim": 36, "problem_n": 100}
    store.add_rows("t1", cell(memory=2), rows(3, acc_hit=2), info)
    store.finish("t1", cell(memory=2), {"status": "solved", "stop_reason": "target"})
    store.flush(force=True)
    for name in ("iterations.parquet", "trials.parquet"):
        assert read_metadata(tmp_path / name)["sqn_ray.problems"] == {
            "toy-small": {"n": 100, "d": 36, "target_accuracy": 1.0}}
    assert "description" not in read_metadata(tmp_path / "trials.parquet")["sqn_ray.study"]
    again = ResultStore(tmp_path, study)  # a resumed driver knows them from the parts
    again.load_parts()
    assert again.problems == store.problems
    results = load_results(tmp_path)
    assert results.problem_size("toy-small") == {"n": 100, "d": 36, "target": 1.0}
    assert results.problem_size("toy-large") == {"n": None, "d": None, "target": None}
