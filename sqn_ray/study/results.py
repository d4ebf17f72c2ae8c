"""The study's results: ``DIR/iterations.parquet`` and ``DIR/trials.parquet`` (the contract analysis reads).

* ``iterations.parquet``: one row per trial × iteration: the trial's identity and hyperparameters (``study``,
  ``trial_id``, ``cell``, ``variant``, ``problem``, ``method``, one column per option any method of the study
  sets, ``seed``), then the optimizer's record (``iteration``, ``loss``, ``accuracy``, ``grad_norm``,
  ``n_fun``, ``n_grad``, ``n_hvp``, ``grad_equivalents``, ``epochs``, ``wall_time``, ``step_size``,
  ``trust_radius``, ``accepted``, ``pairs_kept``, ``s_norm``: :data:`RECORD_COLUMNS`, always columns; then
  the record's other fields and whatever else the method records; the record's fields and their types are
  defined once, in :mod:`sqn_ray.records`).
  ``accuracy`` is NaN on iterations where it was not evaluated (``accuracy_every``); ``wall_time`` is the
  optimizer's own time (the platform's accuracy evaluations and pauses are taken out).
* ``trials.parquet``: one row per trial: the same identity columns, ``status`` (solved / budget / diverged /
  failed; ``running`` while the study runs), ``stop_reason``, ``error``, final and best loss and accuracy,
  ``iterations``, ``grad_equivalents``, ``target_accuracy``, ``iters_to_target``,
  ``grad_equivalents_to_target``, ``wall_time_to_target``, ``wall_time``, ``node_id``, ``node_ip``,
  ``hostname``, ``device``, ``gpu_ids``, ``threads``, ``restarts`` (worker deaths retried),
  ``metric``/``metric_value``/``rank``.

Both files carry, in the Parquet schema metadata, ``sqn_ray.study`` (the normalized study, JSON, without
its description), ``sqn_ray.study_yaml`` (the file as written), ``sqn_ray.problems`` (JSON: each problem's
``n``, ``d`` and ``target_accuracy`` as its trials built it), ``sqn_ray.versions`` (JSON) and
``sqn_ray.git_revision``;
:func:`read_metadata` returns them decoded.

Writing is atomic (a temporary file in the same folder, then :func:`os.replace`), so a reader never sees half a
file; both files are rewritten while the study runs. Each finished trial is also kept as its own part file
under ``DIR/.parts`` (written before Tune records the trial as finished): a resumed study reloads those, and
the merged files are always rebuilt from parts + live trials, keyed by Tune's trial ids, so an interrupted
and resumed study has no duplicated and no lost rows.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..io import read_parquet_metadata, write_table_atomic
from ..records import FIELDS, arrow_types, leading_names

__all__ = ["ResultStore", "record_table", "read_metadata", "write_table_atomic", "study_metadata", "ID_COLUMNS",
           "RECORD_COLUMNS", "TRIAL_COLUMNS", "TERMINAL_STATUSES", "ACCURACY", "arrow_type", "record_arrow_schema"]

TERMINAL_STATUSES = ("solved", "budget", "diverged", "failed")
ID_COLUMNS = ("study", "trial_id", "cell", "variant", "problem", "method")
#: the platform's own per-iteration column (the training accuracy, NaN where not evaluated): after ``loss``
ACCURACY = "accuracy"


def arrow_type(name: str) -> pa.DataType:
    """The pyarrow type of a type name the record schema (:mod:`sqn_ray.records`) declares."""
    return {"int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}[name]


def record_arrow_schema() -> pa.Schema:
    """The typed per-iteration columns of iterations.parquet, from the record schema: its leading block
    (the record's leading fields, ``accuracy`` after ``loss``) first, then the record's other fields."""
    cols: dict[str, pa.DataType] = {}
    for name in leading_names():
        cols[name] = arrow_type(FIELDS[name].arrow)
        if name == "loss":
            cols[ACCURACY] = pa.float64()
    for name, typ in arrow_types().items():
        cols.setdefault(name, arrow_type(typ))
    return pa.schema(list(cols.items()))


#: the leading block of iterations.parquet after the identity columns, with Arrow types: always columns (null
#: where a method does not record one); the columns a method records beyond them follow, sorted
RECORD_COLUMNS = {f.name: f.type for f in record_arrow_schema() if f.name == ACCURACY or FIELDS[f.name].leading}
#: the record's other fields (see sqn_ray.records.ITERATION_RECORD): typed up front so that a chunk converts
#: without inspecting its values; fields a method adds beyond these are inferred
OPTIMIZER_COLUMNS = {f.name: f.type for f in record_arrow_schema() if f.name not in RECORD_COLUMNS}
_TYPED_COLUMNS = {**OPTIMIZER_COLUMNS, **RECORD_COLUMNS}  # what record_table types without looking
TRIAL_COLUMNS = {
    "status": pa.string(), "stop_reason": pa.string(), "error": pa.string(), "optimizer_status": pa.string(),
    "message": pa.string(), "final_loss": pa.float64(), "best_loss": pa.float64(),
    "final_accuracy": pa.float64(), "best_accuracy": pa.float64(), "final_grad_norm": pa.float64(),
    "iterations": pa.int64(), "grad_equivalents": pa.float64(), "epochs": pa.float64(),
    "target_accuracy": pa.float64(), "iters_to_target": pa.int64(), "grad_equivalents_to_target": pa.float64(),
    "wall_time_to_target": pa.float64(), "wall_time": pa.float64(), "trial_time": pa.float64(),
    "node_id": pa.string(), "node_ip": pa.string(), "hostname": pa.string(), "device": pa.string(),
    "gpu_ids": pa.string(), "cuda_visible_devices": pa.string(), "threads": pa.int64(), "pid": pa.int64(),
    "started_at": pa.float64(), "finished_at": pa.float64(), "restarts": pa.int64(), "metric": pa.string(),
    "metric_value": pa.float64(), "rank": pa.int64(),
}
PARTS = ".parts"
QUARANTINE = "quarantine"  # under PARTS: files found there that are not readable trials' parts
_log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ file helpers
def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``sqn_ray.*`` metadata of a results file, JSON values decoded."""
    return read_parquet_metadata(path, prefix="sqn_ray.")


def _git_revision() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if rev.returncode != 0:
            return "unknown (no git commit)"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("sqn-ray", "torch", "ray", "numpy", "pandas", "pyarrow", "optuna", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if dist == "sqn-ray":
                import sqn_ray

                out[dist] = f"{sqn_ray.__version__} (not installed)"
    return out


def study_metadata(study) -> dict[bytes, bytes]:
    """Schema metadata: the study, its file, package versions and the git revision of this checkout. The
    description is in the file's text only (up to 10,000 characters: not twice in every results file)."""
    normalized = {k: v for k, v in study.to_json().items() if k != "description"}
    return {
        b"sqn_ray.study": json.dumps(normalized).encode(),
        b"sqn_ray.study_yaml": study.text.encode(),
        b"sqn_ray.versions": json.dumps(_versions()).encode(),
        b"sqn_ray.git_revision": _git_revision().encode(),
        b"sqn_ray.fingerprint": study.fingerprint.encode(),
    }


# ---------------------------------------------------------------------------------------- trial identity
def cell_key(cell: dict) -> str:
    """A stable text key of a trial's hyperparameters and seed."""
    return json.dumps({"problem": cell["problem"], "method": cell["method"], "seed": cell["seed"],
                       "options": cell["options"]}, sort_keys=True, default=str)


def _fmt_opt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def variant_label(cell: dict) -> str:
    """``problem/method/opt=value,...`` without the seed: trials that differ only by seed share it."""
    opts = ",".join(f"{k}={_fmt_opt(v)}" for k, v in sorted(cell["options"].items()))
    return f"{cell['problem']}/{cell['method']}" + (f"/{opts}" if opts else "")


def _arrow_type_of(values: Iterable) -> pa.DataType:
    vals = [v for v in values if v is not None]
    if not vals:
        return pa.null()  # promotes to whatever another trial's part has
    if all(isinstance(v, bool) for v in vals):
        return pa.bool_()
    if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return pa.int64()
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return pa.float64()
    return pa.string()


def option_types(study) -> dict[str, pa.DataType]:
    """Arrow type per option column, from every value the study can give it (grids, ranges, defaults)."""
    out = {}
    for opt in study.option_names:
        values = []
        for method, axes in study.methods.items():
            defaults = study.defaults.get(method, {})
            if opt in defaults and defaults[opt] is not None:
                values.append(defaults[opt])
            axis = axes.get(opt)
            if axis is None:
                continue
            if hasattr(axis, "kind"):
                values += [float(a) if axis.kind in ("loguniform", "uniform") else a for a in axis.args]
            else:
                values += list(axis)
        out[opt] = _arrow_type_of(values)  # null when nothing in the study gives it a value
    return out


def _coerce(value, typ: pa.DataType):
    """A Python value fit for an Arrow column of type ``typ`` (NaN -> null for non-float columns)."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value) and not pa.types.is_floating(typ):
        return None
    if pa.types.is_floating(typ):
        return float(value) if isinstance(value, (int, float)) else None
    if pa.types.is_integer(typ):
        return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    if pa.types.is_boolean(typ):
        return bool(value)
    if pa.types.is_string(typ):
        return value if isinstance(value, str) else json.dumps(value, default=str)
    return value


def _column(values: list, typ: pa.DataType | None) -> pa.Array:
    if typ is None:
        typ = _arrow_type_of(values)
    try:  # fast path: Arrow converts plain numbers and strings itself (NaN stays NaN only in float columns)
        return pa.array(values, type=typ, from_pandas=not pa.types.is_floating(typ))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return pa.array([_coerce(v, typ) for v in values], type=typ)


def _constant(value, typ: pa.DataType, n: int) -> pa.Array:
    """``n`` copies of one value as an Arrow array (identity columns of a trial's rows)."""
    value = _coerce(value, typ)
    return pa.nulls(n, typ) if value is None else pa.repeat(pa.scalar(value, type=typ), n)


def record_table(chunk: dict[str, list]) -> pa.Table:
    """A trial's column chunk as an Arrow table: record columns typed, other columns inferred."""
    n = max((len(v) for v in chunk.values()), default=0)
    return pa.table({k: _column(list(v) + [None] * (n - len(v)), _TYPED_COLUMNS.get(k)) for k, v in chunk.items()})


def _set_last(table: pa.Table, values: dict[str, Any]) -> pa.Table:
    """``table`` with the given fields of its last row replaced (the final accuracy evaluated after the fact)."""
    n = table.num_rows
    for name, value in values.items():
        if name in table.column_names:
            col = table.column(name)
            vals = col.to_pylist()
            vals[-1] = value
            fixed = _column(vals, None if pa.types.is_null(col.type) else col.type)
            table = table.set_column(table.column_names.index(name), name, fixed)
        else:
            table = table.append_column(name, _column([None] * (n - 1) + [value], None))
    return table


def _finite_values(column) -> pa.ChunkedArray:
    """The finite values of a numeric Arrow column (nulls, NaN and ±inf dropped)."""
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        return pa.chunked_array([], type=pa.float64())
    return column.filter(pc.is_finite(column), null_selection_behavior="drop")


def _read_part(path: Path) -> "_Trial | str":
    """A finished trial from its part file, or what is wrong with the file."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        return f"unreadable ({type(e).__name__}: {str(e)[:120]})"
    raw = (table.schema.metadata or {}).get(b"sqn_ray.trial")
    if raw is None:
        return "not a trial's part (no sqn_ray.trial metadata: a foreign file?)"
    try:
        meta = json.loads(raw)
        t = _Trial(str(meta["trial_id"]), dict(meta["cell"]))
        t.summary, t.info = dict(meta["summary"]), dict(meta["info"] or {})
        if "iteration" not in table.column_names or t.trial_id != path.stem:
            raise ValueError("rows or name do not match")
        cell_key(t.cell)
    except (ValueError, KeyError, TypeError) as e:
        return f"damaged ({type(e).__name__} in its metadata)"
    t.table, t.finished = table.replace_schema_metadata(), True
    return t


# --------------------------------------------------------------------------------------------- the store
class _Trial:
    __slots__ = ("trial_id", "cell", "chunks", "n_live", "running", "info", "summary", "table", "finished",
                 "restarts")

    def __init__(self, trial_id: str, cell: dict):
        self.trial_id = trial_id
        self.cell = cell
        self.chunks: list[pa.Table] = []  # iteration rows while running, converted once on arrival
        self.n_live = 0
        self.running: dict[str, Any] = {}  # the running summary, updated per chunk
        self.info: dict = {}
        self.summary: dict | None = None
        self.table: pa.Table | None = None  # iteration rows (with identity columns) once finished
        self.finished = False
        self.restarts = 0

    @property
    def n_rows(self) -> int:
        return self.table.num_rows if self.table is not None else self.n_live

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self.chunks.append(table)
        self.n_live += table.num_rows
        r = self.running  # the running summary, from Arrow kernels (no per-value Python)
        names = table.column_names
        if "loss" in names:
            loss = _finite_values(table.column("loss"))
            if len(loss):
                r["best_loss"] = min(pc.min(loss).as_py(), r.get("best_loss", math.inf))
            r["final_loss"] = table.column("loss")[-1].as_py()
        if "accuracy" in names:
            acc = _finite_values(table.column("accuracy"))
            if len(acc):
                r["best_accuracy"] = max(pc.max(acc).as_py(), r.get("best_accuracy", -math.inf))
                r["final_accuracy"] = acc[-1].as_py()
        for key, name in (("iterations", "iteration"), ("grad_equivalents", "grad_equivalents")):
            if name in names:
                r[key] = table.column(name)[-1].as_py()


def _live_encoding(table: pa.Table) -> dict:
    """Parquet options for files written for speed rather than size: the live rewrites of a growing file
    (see :meth:`ResultStore.flush`) and the trials' part files."""
    text = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    return {"compression": "lz4", "use_dictionary": text}


class ResultStore:
    """Collects the trials' rows on the driver and writes the two Parquet files (see the module docstring).

    ``add_rows`` takes the column chunks a trial reports; ``finish`` writes the trial's part file; ``flush``
    rewrites ``iterations.parquet`` and ``trials.parquet`` (throttled unless forced) for the trials Tune knows.
    """

    def __init__(self, out_dir: str | Path, study, *, min_flush_interval: float = 2.0):
        self.out_dir = Path(out_dir)
        self.parts_dir = self.out_dir / PARTS
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self.study = study
        self.metadata = study_metadata(study)
        self.problems: dict[str, dict] = {}  # n, d, target accuracy of each problem the trials have seen
        self.option_types = option_types(study)
        self.trials: dict[str, _Trial] = {}
        self.known: set[str] | None = None
        self._dirty = True
        self._last_flush = 0.0
        self._flush_cost = 0.0
        self.min_flush_interval = min_flush_interval
        self._lock = threading.Lock()  # the trials' data
        self._write_lock = threading.Lock()  # one writer at a time, newest data last
        self._writer = None
        self.damaged: list[str] = []  # names of the part files load_parts quarantined

    @property
    def iterations_path(self) -> Path:
        return self.out_dir / "iterations.parquet"

    @property
    def trials_path(self) -> Path:
        return self.out_dir / "trials.parquet"

    # -- resume ---------------------------------------------------------------------------------------
    def load_parts(self) -> dict[str, dict]:
        """Reload finished trials from ``DIR/.parts``; returns {trial_id: summary} (what a resumed trial
        needs to replay itself without recomputing).

        A part that cannot be read (truncated, garbage) or is not a trial's part (a foreign Parquet file, a
        part missing its metadata) is moved to ``DIR/.parts/quarantine/`` and named in one warning line
        each (:attr:`damaged`); its trial is then not finished here and runs again."""
        out = {}
        self.damaged = []
        for path in sorted(self.parts_dir.glob("*.parquet")):
            trial = _read_part(path)
            if isinstance(trial, str):
                self._quarantine(path, trial)
                continue
            t = trial
            self.trials[t.trial_id] = t
            self._note_problem(t.cell["problem"], t.info)
            out[t.trial_id] = {"cell_key": cell_key(t.cell), "summary": t.summary}
        self._dirty = True
        return out

    def _quarantine(self, path: Path, why: str) -> None:
        folder = self.parts_dir / QUARANTINE
        folder.mkdir(exist_ok=True)
        target = folder / path.name
        for i in range(1, 1000):
            if not target.exists():
                break
            target = folder / f"{path.stem}.{i}{path.suffix}"
        os.replace(path, target)
        self.damaged.append(path.stem)
        _log.warning("results part %s is %s: moved to %s; its trial runs again", path.name, why,
                     target.relative_to(self.out_dir))

    # -- live updates ---------------------------------------------------------------------------------
    def start(self, trial_id: str, cell: dict) -> None:
        with self._lock:
            if trial_id not in self.trials:
                self.trials[trial_id] = _Trial(trial_id, cell)
                self._dirty = True

    def restart(self, trial_id: str, cell: dict) -> None:
        """The trial starts over (retry after a worker died, or a rerun): forget its rows."""
        with self._lock:
            old = self.trials.get(trial_id)
            t = self.trials[trial_id] = _Trial(trial_id, cell)
            t.restarts = (old.restarts + 1) if old is not None else 1
            self._remove_part(trial_id)
            self._dirty = True

    def add_rows(self, trial_id: str, cell: dict, chunk: dict[str, list] | pa.Table | None, info: dict | None) -> None:
        """``chunk``: the trial's next rows, as columns (``{name: values}``) or an Arrow table of them."""
        with self._lock:
            t = self.trials.get(trial_id)
            if chunk is not None and not isinstance(chunk, pa.Table):
                chunk = record_table(chunk)
            if t is None or (t.finished and chunk is not None and chunk.num_rows):
                # a finished trial sending rows again is being recomputed from scratch
                t = self.trials[trial_id] = _Trial(trial_id, cell)
                self._remove_part(trial_id)
            if info:
                t.info.update(info)
                self._note_problem(cell["problem"], t.info)
            if chunk is not None:
                t.add(chunk)
            self._dirty = True

    def _note_problem(self, name: str, info: dict) -> None:
        """The problem's n, d and target accuracy, as a trial found them, into the files' metadata
        (``sqn_ray.problems``: {name: {"n", "d", "target_accuracy"}})."""
        if name in self.problems or info.get("problem_dim") is None:
            return
        self.problems[name] = {"n": info.get("problem_n"), "d": info.get("problem_dim"),
                               "target_accuracy": info.get("problem_target_accuracy")}
        self.metadata = {**self.metadata, b"sqn_ray.problems": json.dumps(self.problems, sort_keys=True).encode()}
        self._dirty = True

    def finish(self, trial_id: str, cell: dict, final: dict) -> None:
        """Record the trial's outcome (``final`` from the trainable, or from the driver for trials Tune
        stopped or lost) and write its part file."""
        with self._lock:
            t = self.trials.get(trial_id)
            if t is None:
                t = self.trials[trial_id] = _Trial(trial_id, cell)
            if t.finished:
                return
            patch = final.pop("patch_last", None)
            info = final.pop("info", None)
            if info:
                t.info.update(info)
            self._note_problem(t.cell["problem"], t.info)
            t.table = self._iteration_table([t], dedupe=True)
            if patch and t.table.num_rows:
                t.table = _set_last(t.table, patch)
            t.chunks, t.n_live = [], 0
            t.summary = self._summarize(t, final)
            t.finished = True
            meta = {"trial_id": trial_id, "cell": t.cell, "summary": t.summary, "info": t.info}
            part = t.table.replace_schema_metadata({b"sqn_ray.trial": json.dumps(meta, default=str).encode()})
            # the part file is read back only to resume a study: written fast, on Tune's event loop
            write_table_atomic(part, self.parts_dir / f"{trial_id}.parquet", **_live_encoding(part))
            self._dirty = True

    def is_finished(self, trial_id: str) -> bool:
        t = self.trials.get(trial_id)
        return bool(t and t.finished)

    def set_known(self, trial_ids: Iterable[str] | None) -> None:
        """Tune's current trial ids: only those are written (a part from a trial Tune has forgotten is not);
        None: every trial the store has."""
        ids = None if trial_ids is None else set(trial_ids)
        if ids != self.known:
            self.known = ids
            self._dirty = True

    def keep_parts(self, keep) -> dict[str, dict]:
        """Quarantine the loaded parts whose trial id ``keep(trial_id)`` rejects (parts a new Tune experiment
        cannot match to its trials); returns the remaining {trial_id: summary} as :meth:`load_parts` does."""
        with self._lock:
            for trial_id in [t for t, trial in self.trials.items() if trial.finished and not keep(t)]:
                del self.trials[trial_id]
                path = self.parts_dir / f"{trial_id}.parquet"
                if path.exists():
                    self._quarantine(path, "from a run whose trials cannot be matched to this one's")
            self._dirty = True
            return {t: {"cell_key": cell_key(trial.cell), "summary": trial.summary}
                    for t, trial in self.trials.items() if trial.finished}

    def _remove_part(self, trial_id: str) -> None:
        try:
            (self.parts_dir / f"{trial_id}.parquet").unlink()
        except FileNotFoundError:
            pass

    # -- summaries ------------------------------------------------------------------------------------
    def _target(self, t: _Trial) -> float | None:
        """The accuracy a trial must reach to count as solved: the stop rule's, else (no stop rule, or
        ``accuracy: target``) the problem's own; None when the stop rule is a loss only."""
        target = self.study.target_accuracy
        if target is None and self.study.stop.get("loss") is not None:
            return None
        if target == "target" or target is None:
            target = t.info.get("problem_target_accuracy")
        return None if target is None else float(target)

    def _summarize(self, t: _Trial, final: dict) -> dict:
        tab = t.table
        col = lambda name: tab.column(name).to_pylist() if name in tab.column_names else [None] * tab.num_rows  # noqa: E731
        loss, acc, it = col("loss"), col("accuracy"), col("iteration")
        ge, wall, gnorm, ep = col("grad_equivalents"), col("wall_time"), col("grad_norm"), col("epochs")
        finite = lambda xs: [x for x in xs if x is not None and math.isfinite(x)]  # noqa: E731
        last = lambda xs: next((x for x in reversed(xs)  # noqa: E731
                                if x is not None and not (isinstance(x, float) and math.isnan(x))), None)
        target = self._target(t)
        hit, loss_target = None, self.study.stop.get("loss")
        if target is not None:  # the stop rule's accuracy (or the problem's own target)
            hit = next((i for i, a in enumerate(acc) if a is not None and not math.isnan(a) and a >= target), None)
        elif loss_target is not None:
            hit = next((i for i, f in enumerate(loss) if f is not None and f <= loss_target), None)
        status = final.get("status") or "budget"
        if final.get("stop_reason") == "scheduler" and it and it[-1] is not None \
                and it[-1] >= self.study.budget["iterations"]:
            final["stop_reason"] = "iterations"  # the scheduler's max_t and the budget coincided
        if status == "budget" and hit is not None and final.get("stop_reason") != "scheduler":
            status = "solved"
        s = {
            "status": status, "stop_reason": final.get("stop_reason"), "error": final.get("error"),
            "optimizer_status": final.get("optimizer_status"), "message": final.get("message"),
            "final_loss": loss[-1] if loss else None, "best_loss": min(finite(loss), default=None),
            "final_accuracy": last(acc), "best_accuracy": max(finite(acc), default=None),
            "final_grad_norm": gnorm[-1] if gnorm else None,
            "iterations": it[-1] if it else None, "grad_equivalents": last(ge), "epochs": last(ep),
            "target_accuracy": target,
            "iters_to_target": it[hit] if hit is not None else None,
            "grad_equivalents_to_target": ge[hit] if hit is not None else None,
            "wall_time_to_target": wall[hit] if hit is not None else None,
            "wall_time": last(wall), "trial_time": final.get("trial_time"), "restarts": t.restarts,
            "finished_at": final.get("finished_at", time.time()),
        }
        return s

    def _running_summary(self, t: _Trial) -> dict:
        r = t.running
        return {"status": "running", **{k: r.get(k) for k in ("final_loss", "best_loss", "best_accuracy",
                                                                "final_accuracy", "iterations", "grad_equivalents")},
                "target_accuracy": self._target(t), "restarts": t.restarts}

    # -- tables ---------------------------------------------------------------------------------------
    def _identity(self, t: _Trial) -> dict[str, Any]:
        cell = t.cell
        ident = {"study": self.study.name, "trial_id": t.trial_id, "cell": cell_key(cell),
                 "variant": variant_label(cell), "problem": cell["problem"], "method": cell["method"]}
        defaults = self.study.defaults.get(cell["method"], {})
        for opt in self.option_types:
            ident[opt] = cell["options"].get(opt, defaults.get(opt))
        ident["seed"] = cell["seed"]
        return ident

    def _identity_types(self) -> dict[str, pa.DataType]:
        return {**{k: pa.string() for k in ID_COLUMNS}, **self.option_types, "seed": pa.int64()}

    def _identity_columns(self, trials: list[_Trial], counts: list[int]) -> dict[str, pa.Array]:
        types = self._identity_types()
        cols: dict[str, list] = {k: [] for k in types}
        for t, n in zip(trials, counts):
            for k, v in self._identity(t).items():
                cols[k].append(_constant(v, types[k], n))
        return {k: pa.concat_arrays(v) if v else pa.array([], type=types[k]) for k, v in cols.items()}

    def _iteration_table(self, trials: list[_Trial], *, dedupe: bool = False) -> pa.Table:
        """The live rows of ``trials`` as one table: identity columns, the record columns, then any others a
        method records (merged with permissive promotion, so int in one chunk and float in another is fine).
        ``dedupe`` keeps the last row of each iteration (one trial whose rows were sent twice)."""
        chunks = [c for t in trials for c in t.chunks]
        records = pa.concat_tables(chunks, promote_options="permissive") if chunks else pa.table({})
        n = records.num_rows
        arrays = self._identity_columns(trials, [t.n_live for t in trials])
        others = sorted(set(records.column_names) - set(RECORD_COLUMNS))
        for name in list(RECORD_COLUMNS) + others:
            if name in records.column_names:
                col = records.column(name)
                typ = RECORD_COLUMNS.get(name)
                arrays[name] = col.cast(typ) if typ is not None and col.type != typ else col
            else:
                arrays[name] = pa.nulls(n, RECORD_COLUMNS[name])
        table = pa.table(arrays)
        if dedupe and table.num_rows:
            last = {it: i for i, it in enumerate(table.column("iteration").to_pylist())}
            if len(last) != table.num_rows:
                table = table.take(pa.array(sorted(last.values())))
        return table

    def _selected(self) -> list[_Trial]:
        trials = list(self.trials.values())
        if self.known is not None:
            trials = [t for t in trials if t.trial_id in self.known]
        return sorted(trials, key=lambda t: t.trial_id)

    def iterations_table(self) -> pa.Table:
        trials = self._selected()
        parts = [t.table for t in trials if t.finished and t.table is not None and t.table.num_rows]
        live = [t for t in trials if not t.finished and t.n_live]
        if live:
            parts.append(self._iteration_table(live))
        if not parts:
            return self._iteration_table([]).replace_schema_metadata(self.metadata)
        table = pa.concat_tables(parts, promote_options="permissive")
        return table.replace_schema_metadata(self.metadata)

    def trials_table(self) -> pa.Table:
        trials = self._selected()
        ident = self._identity_columns(trials, [1] * len(trials))
        rows = []
        for t in trials:
            s = dict(t.summary) if t.finished else self._running_summary(t)
            info = t.info
            s.update({k: info.get(k) for k in ("node_id", "node_ip", "hostname", "device", "gpu_ids",
                                                 "cuda_visible_devices", "threads", "pid", "started_at")})
            rows.append(s)
        metric, mode = self.study.metric, self.study.mode
        key = {"loss": "final_loss", "best_loss": "best_loss", "accuracy": "final_accuracy",
               "best_accuracy": "best_accuracy", "grad_norm": "final_grad_norm"}[metric]
        values = [r.get(key) for r in rows]
        order = sorted((i for i, v in enumerate(values) if v is not None and math.isfinite(v)),
                       key=lambda i: values[i] if mode == "min" else -values[i])
        rank = {i: r + 1 for r, i in enumerate(order)}
        for i, r in enumerate(rows):
            r.update(metric=metric, metric_value=values[i], rank=rank.get(i))
        arrays = dict(ident)
        for name, typ in TRIAL_COLUMNS.items():
            arrays[name] = _column([r.get(name) for r in rows], typ)
        return pa.table(arrays).replace_schema_metadata(self.metadata)

    # -- writing --------------------------------------------------------------------------------------
    def flush(self, *, force: bool = False) -> bool:
        """Rewrite both files if anything changed; unless ``force``, at most every few seconds (and never
        more than ~3 % of the time: the file is rewritten whole, and on a small machine the driver's time is
        taken from the trials). The tables are assembled under the store's lock, written outside it.

        Unforced (live) rewrites are encoded for speed: LZ4, dictionaries for text columns only (a float
        column is all distinct values: building its dictionary first is wasted). ~35 % less time than the
        final, compact encoding (zstd, dictionaries where they pay), which a forced flush writes."""
        with self._write_lock:
            now = time.monotonic()
            if not self._dirty or (not force and now - self._last_flush < max(self.min_flush_interval,
                                                                              30 * self._flush_cost)):
                return False
            with self._lock:
                iterations, trials = self.iterations_table(), self.trials_table()
                self._dirty = False
            encoding = {} if force else _live_encoding(iterations)
            try:
                write_table_atomic(iterations, self.iterations_path, **encoding)
                write_table_atomic(trials, self.trials_path)
            except BaseException:
                self._dirty = True
                raise
            self._last_flush = time.monotonic()
            self._flush_cost = self._last_flush - now
            return True

    def start_writer(self, poll: float = 0.5) -> None:
        """Flush from a background thread while the study runs (Tune's event loop is never blocked by it)."""
        self._writer_stop = threading.Event()

        def loop():
            while not self._writer_stop.wait(poll):
                try:
                    self.flush()
                except Exception:  # noqa: BLE001 - retried at the next poll; the final flush raises
                    _log.warning("writing the study's Parquet files failed; retrying", exc_info=True)

        self._writer = threading.Thread(target=loop, name="sqn-ray-parquet-writer", daemon=True)
        self._writer.start()

    def stop_writer(self) -> None:
        if getattr(self, "_writer", None) is not None:
            self._writer_stop.set()
            self._writer.join()
            self._writer = None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self._selected():
            status = t.summary["status"] if t.finished else "running"
            out[status] = out.get(status, 0) + 1
        return out
