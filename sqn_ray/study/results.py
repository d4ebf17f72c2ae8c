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
  ``metric``/``metric_value``/``rank``; ``trial_time`` (seconds from the trial's start to its end) and
  ``startup_seconds`` (from its start to its first iteration: the problem's build and, on a data-parallel
  trial, its worker group's start, read on rank 0's clock against the trial actor's: nodes' clocks must agree,
  as NTP keeps them, to well under the tens of seconds it measures).

Both files carry, in the Parquet schema metadata, ``sqn_ray.study`` (the normalized study, JSON, without
its description), ``sqn_ray.study_yaml`` (the file as written), ``sqn_ray.problems`` (JSON: each problem's
``n``, ``d`` and ``target_accuracy`` as its trials built it), ``sqn_ray.versions`` (JSON) and
``sqn_ray.git_revision``;
:func:`read_metadata` returns them decoded.

How the rows travel (append-only: nothing written is rewritten while the study runs; the driver's memory holds
no row once written):

* a running trial's rows wait in the driver's memory only until ``ResultStore.segment_rows`` (4,096) of them wait,
  the oldest has waited ``ResultStore.spill_seconds`` (20 s), or Tune checkpoints the trial; then they are written
  as an immutable *segment*, ``DIR/.parts/live/<trial_id>.<seq>.parquet``;
* a finished trial's remaining rows and its summary are written as its *part*, ``DIR/.parts/<trial_id>.parquet``
  (before Tune records the trial as finished), which names the trial's segments;
* ``trials.parquet`` (one row per trial, ``status`` ``running`` while a trial runs) is rewritten while the
  study runs, throttled so that its bytes stay a fraction of the rows';
* ``iterations.parquet`` is written once, at the end of the run (finished, or interrupted: Ctrl-C), by one
  streaming pass over the parts (one file in memory at a time), in trial and iteration order.

Every file appears atomically (a temporary file in the same folder, then :func:`os.replace`): a reader never sees
half a file. **Reading a running study**: :func:`read_live` (a pyarrow Table in the layout of
``iterations.parquet``: ``read_live(DIR).to_pandas()``) or :func:`live_files` (the paths, for any Parquet
reader: ``pd.read_parquet(live_files(DIR))``, ``duckdb.read_parquet([str(p) for p in live_files(DIR)],
union_by_name=True)``), and ``trials.parquet`` as it is. A resumed study reloads the parts and segments; the
merged files are always rebuilt from them, keyed by Tune's trial ids, so an interrupted and resumed study has no
duplicated and no lost rows; a trial retried (its worker died) or resumed from its checkpoint replaces its rows
from its first new iteration on.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..io import atomic_path, read_parquet_metadata, write_table_atomic
from ..records import FIELDS, arrow_types, leading_names

__all__ = ["ResultStore", "record_table", "live_files", "read_live", "read_metadata",
           "write_table_atomic", "study_metadata", "ID_COLUMNS", "STAGE_COLUMNS", "METRIC_COLUMNS",
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
    "started_at": pa.float64(), "finished_at": pa.float64(), "restarts": pa.int64(), "resumed_from": pa.int64(),
    "metric": pa.string(),
    "metric_value": pa.float64(), "rank": pa.int64(),
    # a data-parallel trial's communication (sqn_ray.study.data_parallel); null for a single-process trial
    "comm_collectives": pa.int64(), "comm_values": pa.int64(), "comm_seconds": pa.float64(),
    "replicas_agree": pa.bool_(),
    "startup_seconds": pa.float64(),
}
#: what a trial's info adds to its trials.parquet row
_INFO_COLUMNS = ("node_id", "node_ip", "hostname", "device", "gpu_ids", "cuda_visible_devices", "threads", "pid",
                 "started_at", "comm_collectives", "comm_values", "comm_seconds", "replicas_agree", "startup_seconds")
#: after the seed, in both files: the study stage of the trial (``"main"``: a plain study; a tuned study's
#: ``"tuning"`` or ``"evaluation"``) and its configuration's number within its method (null in a plain study)
STAGE_COLUMNS = {"stage": pa.string(), "tuning_config": pa.int64()}
#: the trials.parquet column each ranking metric (:data:`sqn_ray.study.spec.METRICS`) is read from
METRIC_COLUMNS = {"loss": "final_loss", "best_loss": "best_loss", "accuracy": "final_accuracy",
                  "best_accuracy": "best_accuracy", "grad_norm": "final_grad_norm"}
PARTS = ".parts"
LIVE = "live"  # under PARTS: the segments of trials written while they ran
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


def _present_values(column):
    """The values of an Arrow column that are neither null nor NaN (±inf kept)."""
    if pa.types.is_floating(column.type):
        return column.filter(pc.invert(pc.is_nan(column)), null_selection_behavior="drop")
    return column.drop_null()


# ------------------------------------------------------------------------------------ the trial summary
_LAST_PRESENT = {"final_accuracy": "accuracy", "grad_equivalents": "grad_equivalents", "epochs": "epochs",
                 "wall_time": "wall_time"}


class _Summary:
    """A trial's summary figures, accumulated over its rows as they are written, in iteration order (the rows
    themselves are not kept): final and best loss and accuracy, the last iteration, cost and time, and the
    first row that met the target (accuracy ≥ target, or loss ≤ the stop rule's loss)."""

    __slots__ = ("values", "hit")

    def __init__(self):
        self.values: dict[str, Any] = {}
        self.hit: dict[str, Any] | None = None  # the first row meeting the target: iteration, cost, time

    def copy(self) -> "_Summary":
        out = _Summary()
        out.values, out.hit = dict(self.values), (dict(self.hit) if self.hit else None)
        return out

    def feed(self, table: pa.Table, target: float | None, loss_target: float | None) -> None:
        if not table.num_rows:
            return
        v, names = self.values, table.column_names
        col = lambda name: table.column(name) if name in names else None  # noqa: E731
        loss, acc, it = col("loss"), col(ACCURACY), col("iteration")
        if loss is not None:
            v["final_loss"] = loss[-1].as_py()
            finite = _finite_values(loss)
            if len(finite):
                v["best_loss"] = min(pc.min(finite).as_py(), v.get("best_loss", math.inf))
        if acc is not None:
            finite = _finite_values(acc)
            if len(finite):
                v["best_accuracy"] = max(pc.max(finite).as_py(), v.get("best_accuracy", -math.inf))
        for key, name in _LAST_PRESENT.items():
            c = col(name)
            if c is not None:
                present = _present_values(c)
                if len(present):
                    v[key] = present[-1].as_py()
        if col("grad_norm") is not None:
            v["final_grad_norm"] = table.column("grad_norm")[-1].as_py()
        if it is not None:
            v["iterations"] = it[-1].as_py()
        if self.hit is None and it is not None:
            mask = None
            if target is not None and acc is not None and pa.types.is_floating(acc.type):
                mask = pc.greater_equal(acc, target)
            elif target is None and loss_target is not None and loss is not None:
                mask = pc.less_equal(loss, loss_target)
            if mask is not None:
                first = pc.index(mask.combine_chunks() if hasattr(mask, "combine_chunks") else mask, True).as_py()
                if first >= 0:
                    pick = lambda name: table.column(name)[first].as_py() if name in names else None  # noqa: E731
                    self.hit = {"iteration": it[first].as_py(), "grad_equivalents": pick("grad_equivalents"),
                                "wall_time": pick("wall_time")}

    def running(self) -> dict[str, Any]:
        return {k: self.values.get(k) for k in ("final_loss", "best_loss", "best_accuracy", "final_accuracy",
                                                 "iterations", "grad_equivalents")}


# ------------------------------------------------------------------------------------------ part files
@dataclass(frozen=True)
class _Segment:
    """A run of a trial's rows written while it ran: ``.parts/live/<trial_id>.<seq>.parquet``."""

    name: str
    first: int
    last: int
    rows: int


def _segment_name(trial_id: str, seq: int) -> str:
    return f"{trial_id}.{seq:06d}.parquet"


def _read_meta(path: Path, key: bytes) -> dict:
    raw = (pq.read_schema(path).metadata or {}).get(key)
    if raw is None:
        raise KeyError(key.decode())
    return json.loads(raw)


def _check_readable(path: Path) -> pa.Table:
    """The rows of a part or segment, read whole (a truncated or overwritten file fails here, not later)."""
    return pq.read_table(path)


def _span(table: pa.Table) -> tuple[int, int]:
    it = table.column("iteration")
    return int(it[0].as_py()), int(it[-1].as_py())


# --------------------------------------------------------------------------------------------- the store
class _Trial:
    __slots__ = ("trial_id", "cell", "buffer", "n_buffered", "buffered_since", "segments", "next_seq", "acc",
                 "info", "summary", "finished", "restarts", "tail_rows", "last_iteration", "retrying")

    def __init__(self, trial_id: str, cell: dict):
        self.trial_id = trial_id
        self.cell = cell
        self.buffer: list[pa.Table] = []  # rows not yet written (record columns only), in order
        self.n_buffered = 0
        self.buffered_since = 0.0  # monotonic time of the oldest buffered row
        self.segments: list[_Segment] = []  # rows already written while the trial ran, in order
        self.next_seq = 0
        self.acc = _Summary()  # over the written rows (segments, then the finished part's own rows)
        self.info: dict = {}
        self.summary: dict | None = None  # the final summary, once finished
        self.finished = False
        self.restarts = 0
        self.tail_rows = 0  # rows in the finished part file itself (after the segments)
        self.last_iteration: int | None = None  # the last iteration stored (written or buffered)
        self.retrying = False  # a new attempt started: its first rows replace any stored from there on

    @property
    def n_rows(self) -> int:
        return sum(s.rows for s in self.segments) + self.n_buffered + self.tail_rows


class ResultStore:
    """The study's rows on their way to disk, with the driver's memory bounded (see the module docstring).

    ``add_rows`` takes the column chunks a trial reports and buffers them; a running trial's rows are written
    as immutable segment files (``.parts/live/``) once ``segment_rows`` rows wait or the oldest waited
    ``spill_seconds``, or when Tune checkpoints the trial (:meth:`checkpointed`); ``finish`` writes the
    trial's part file (its remaining rows and its summary). Nothing written is rewritten while the study runs:
    a live :meth:`flush` writes new segments and (throttled) the small ``trials.parquet``; the forced flush
    at the end compacts every part into ``iterations.parquet`` in one streaming pass.
    """

    #: a running trial's rows are written once this many wait ...
    segment_rows = 4096
    #: ... or once the oldest has waited this long (seconds): how stale a live reader's view can be
    spill_seconds = 20.0
    #: rows per row group of the compacted iterations.parquet
    row_group_rows = 65536

    def __init__(self, out_dir: str | Path, study, *, min_flush_interval: float = 2.0):
        self.out_dir = Path(out_dir)
        self.parts_dir = self.out_dir / PARTS
        self.live_dir = self.parts_dir / LIVE
        self.live_dir.mkdir(parents=True, exist_ok=True)
        self.study = study
        self.metadata = study_metadata(study)
        self.problems: dict[str, dict] = {}  # n, d, target accuracy of each problem the trials have seen
        self.option_types = option_types(study)
        self.trials: dict[str, _Trial] = {}
        self._buffering: set[str] = set()  # the trials with rows waiting: what a live flush looks at, not all
        self.known: set[str] | None = None
        self._dirty = True  # something changed since the last compaction
        self._trials_dirty = True  # since the last trials.parquet
        self._last_trials_write = -math.inf
        self._trials_cost = 0.0
        self.min_flush_interval = min_flush_interval
        self._lock = threading.Lock()  # the trials' data
        self._write_lock = threading.Lock()  # one writer at a time, newest data last
        self._writer = None
        self.damaged: list[str] = []  # names of the part files load_parts quarantined
        #: bytes this driver wrote, by kind: "segments", "parts", "trials" (live trials.parquet), "final"
        self.bytes_written: dict[str, int] = {"segments": 0, "parts": 0, "trials": 0, "final": 0}

    @property
    def iterations_path(self) -> Path:
        return self.out_dir / "iterations.parquet"

    @property
    def trials_path(self) -> Path:
        return self.out_dir / "trials.parquet"

    # -- resume ---------------------------------------------------------------------------------------
    def load_parts(self) -> dict[str, dict]:
        """Reload the trials of an earlier driver from ``DIR/.parts``; returns {trial_id: {cell_key, summary}}
        for the finished ones (what a resumed trial needs to replay itself without recomputing). Unfinished
        trials come back with the rows they had written (:meth:`durable_rows`), so that one resumed from a
        checkpoint continues them.

        Every file is read whole once (memory: one file at a time). A part or segment that cannot be read
        (truncated, garbage) or is not this platform's (a foreign Parquet file, no metadata) is moved to
        ``DIR/.parts/quarantine/`` and named in one warning line each (:attr:`damaged`): a finished trial
        missing a file runs again; an unfinished one keeps the segments before the damaged one."""
        out = {}
        self.damaged = []
        claimed: set[str] = set()
        for path in sorted(self.parts_dir.glob("*.parquet")):
            trial = self._load_finished(path)
            if isinstance(trial, str):
                self._quarantine(path, trial)
                continue
            self.trials[trial.trial_id] = trial
            claimed.update(s.name for s in trial.segments)
            self._note_problem(trial.cell["problem"], trial.info)
            out[trial.trial_id] = {"cell_key": cell_key(trial.cell), "summary": trial.summary}
        self._load_unfinished(claimed)
        self._dirty = self._trials_dirty = True
        return out

    def _load_finished(self, path: Path) -> "_Trial | str":
        try:
            table = _check_readable(path)
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
            names = list(meta.get("segments") or [])
        except (ValueError, KeyError, TypeError) as e:
            return f"damaged ({type(e).__name__} in its metadata)"
        target, loss_target = self._target(t), self.study.stop.get("loss")
        for name in names:
            seg_path = self.live_dir / name
            try:
                rows = _check_readable(seg_path)
                first, last = _span(rows)
            except (OSError, pa.ArrowException, IndexError, KeyError) as e:
                return f"missing its segment {name} ({type(e).__name__})"
            t.segments.append(_Segment(name, first, last, rows.num_rows))
            t.acc.feed(rows, target, loss_target)
        t.tail_rows = table.num_rows
        t.finished = True
        t.next_seq = len(names)
        t.last_iteration = t.summary.get("iterations")
        return t

    def _load_unfinished(self, claimed: set[str]) -> None:
        """Index the segments no finished part claims: the rows of trials that were running when the earlier
        driver stopped, each trial's in sequence order up to the first damaged or missing one."""
        by_trial: dict[str, list[tuple[int, Path]]] = {}
        for path in self.live_dir.glob("*.parquet"):
            if path.name in claimed:
                continue
            trial_id, _, seq = path.stem.rpartition(".")
            if not trial_id or not seq.isdigit():
                self._quarantine(path, "not a segment (unexpected name)")
                continue
            by_trial.setdefault(trial_id, []).append((int(seq), path))
        for trial_id, paths in sorted(by_trial.items()):
            if trial_id in self.trials:  # a finished trial's leftover (written before its part): not its rows
                for _, path in paths:
                    self._quarantine(path, "a segment its finished trial does not list")
                continue
            t = None
            for k, (seq, path) in enumerate(sorted(paths)):
                try:
                    rows = _check_readable(path)
                    meta = _read_meta(path, b"sqn_ray.segment")
                    first, last = _span(rows)
                    if seq != k or meta["trial_id"] != trial_id:
                        raise ValueError("out of sequence")
                except (OSError, pa.ArrowException, ValueError, KeyError, IndexError, TypeError) as e:
                    for _, rest in sorted(paths)[k:]:
                        self._quarantine(rest, f"unusable ({type(e).__name__}) or after an unusable segment")
                    break
                if t is None:
                    t = _Trial(trial_id, dict(meta["cell"]))
                    t.info = dict(meta.get("info") or {})
                t.segments.append(_Segment(path.name, first, last, rows.num_rows))
                t.acc.feed(rows, self._target(t), self.study.stop.get("loss"))
                t.next_seq, t.last_iteration = seq + 1, last
            if t is not None:
                self.trials[trial_id] = t
                self._note_problem(t.cell["problem"], t.info)

    def durable_rows(self) -> dict[str, int]:
        """{trial_id: last iteration written} of the unfinished trials: a checkpoint beyond it cannot be
        continued from without a gap in the rows."""
        with self._lock:
            return {tid: t.segments[-1].last for tid, t in self.trials.items() if not t.finished and t.segments}

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
                self._trials_dirty = self._dirty = True

    def restart(self, trial_id: str, cell: dict) -> None:
        """The trial runs again (retried after its worker died, from its last checkpoint or from the start):
        its next rows replace whatever is stored from their first iteration on."""
        with self._lock:
            t = self.trials.get(trial_id)
            if t is None:
                t = self.trials[trial_id] = _Trial(trial_id, cell)
            t.restarts += 1
            t.retrying = True
            self._reopen(t)
            self._trials_dirty = self._dirty = True

    def _reopen(self, t: _Trial) -> None:
        """A finished trial that runs again: its part file goes (its segments stay until rows replace them)."""
        if t.finished:
            self._remove_part(t.trial_id)
            t.finished, t.summary = False, None
            if t.tail_rows:  # the part's own rows are gone with it: the trial's rows end at its last segment
                t.tail_rows = 0
                t.last_iteration = t.segments[-1].last if t.segments else None

    def add_rows(self, trial_id: str, cell: dict, chunk: dict[str, list] | pa.Table | None, info: dict | None) -> None:
        """``chunk``: the trial's next rows, as columns (``{name: values}``) or an Arrow table of them. Rows
        starting at or before an iteration already stored (a retried or recomputed trial) replace the stored
        ones from there on."""
        if chunk is not None and not isinstance(chunk, pa.Table):
            chunk = record_table(chunk)
        with self._lock:
            t = self.trials.get(trial_id)
            if t is None:
                t = self.trials[trial_id] = _Trial(trial_id, cell)
            if info:
                t.info.update(info)
                self._note_problem(cell["problem"], t.info)
            if chunk is not None and chunk.num_rows:
                first, last = _span(chunk)
                if t.finished:  # a finished trial sending rows again is being recomputed
                    self._reopen(t)
                if t.last_iteration is not None and first <= t.last_iteration:
                    self._truncate(t, first)
                elif t.last_iteration is not None and first > t.last_iteration + 1:
                    _log.warning("trial %s continues at iteration %d but its rows end at %d: iterations %d-%d are "
                                 "missing", trial_id, first, t.last_iteration, t.last_iteration + 1, first - 1)
                elif t.last_iteration is None and t.retrying and first > 0:
                    _log.warning("trial %s continues at iteration %d with no earlier rows stored", trial_id, first)
                t.retrying = False
                if not t.buffer:
                    t.buffered_since = time.monotonic()
                t.buffer.append(chunk)
                self._buffering.add(trial_id)
                t.n_buffered += chunk.num_rows
                t.last_iteration = last
            self._trials_dirty = self._dirty = True

    def _truncate(self, t: _Trial, first: int) -> None:
        """Forget the trial's stored rows from iteration ``first`` on (buffered, and written segments: removed,
        the one straddling ``first`` rewritten shorter); its accumulated summary is rebuilt from what stays."""
        kept = []
        for table in t.buffer:
            table = table.filter(pc.less(table.column("iteration"), first))
            if table.num_rows:
                kept.append(table)
        t.buffer, t.n_buffered = kept, sum(x.num_rows for x in kept)
        changed = False
        while t.segments and t.segments[-1].first >= first:
            (self.live_dir / t.segments.pop().name).unlink(missing_ok=True)
            changed = True
        if t.segments and t.segments[-1].last >= first:
            seg = t.segments.pop()
            path = self.live_dir / seg.name
            table = pq.read_table(path)
            meta = table.schema.metadata
            table = table.filter(pc.less(table.column("iteration"), first)).replace_schema_metadata(meta)
            self._write(table, path, "segments")
            t.segments.append(_Segment(seg.name, seg.first, _span(table)[1], table.num_rows))
            changed = True
        if changed:
            t.acc = _Summary()
            for seg in t.segments:
                t.acc.feed(pq.read_table(self.live_dir / seg.name), self._target(t), self.study.stop.get("loss"))
        t.next_seq = len(t.segments)
        if t.buffer:
            t.last_iteration = _span(t.buffer[-1])[1]
        else:
            t.last_iteration = t.segments[-1].last if t.segments else None

    def checkpointed(self, trial_id: str) -> None:
        """Tune checkpointed the trial: write its buffered rows now, before Tune's experiment state names the
        checkpoint, so that a driver killed later never resumes the trial past rows it did not keep."""
        with self._lock:
            t = self.trials.get(trial_id)
            if t is not None and not t.finished and t.buffer:
                self._spill(t)

    def _note_problem(self, name: str, info: dict) -> None:
        """The problem's n, d and target accuracy, as a trial found them, into the files' metadata
        (``sqn_ray.problems``: {name: {"n", "d", "target_accuracy"}})."""
        if name in self.problems or info.get("problem_dim") is None:
            return
        self.problems[name] = {"n": info.get("problem_n"), "d": info.get("problem_dim"),
                               "target_accuracy": info.get("problem_target_accuracy")}
        self.metadata = {**self.metadata, b"sqn_ray.problems": json.dumps(self.problems, sort_keys=True).encode()}
        self._dirty = True

    def _with_identity(self, t: _Trial, table: pa.Table) -> pa.Table:
        """A trial's record rows with its identity columns in front (the layout of every file)."""
        types = self._identity_types()
        n = table.num_rows
        arrays = {k: _constant(v, types[k], n) for k, v in self._identity(t).items()}
        others = sorted(set(table.column_names) - set(RECORD_COLUMNS) - set(arrays))
        for name in list(RECORD_COLUMNS) + others:
            if name in table.column_names:
                col = table.column(name)
                typ = RECORD_COLUMNS.get(name)
                arrays[name] = col.cast(typ) if typ is not None and col.type != typ else col
            else:
                arrays[name] = pa.nulls(n, RECORD_COLUMNS[name])
        return pa.table(arrays)

    def _buffered(self, t: _Trial) -> pa.Table | None:
        if not t.buffer:
            return None
        return t.buffer[0] if len(t.buffer) == 1 else pa.concat_tables(t.buffer, promote_options="permissive")

    def _write(self, table: pa.Table, path: Path, kind: str, **options) -> None:
        if kind in ("segments", "parts"):  # read back whole, never filtered: no column statistics (a part's
            options.setdefault("write_statistics", False)  # footer is most of a short trial's file)
        write_table_atomic(table, path, **options)
        self.bytes_written[kind] += path.stat().st_size

    def _spill(self, t: _Trial) -> None:
        """Write the trial's buffered rows as its next segment (under the lock)."""
        rows = self._buffered(t)
        if rows is None:
            return
        name = _segment_name(t.trial_id, t.next_seq)
        meta = {"trial_id": t.trial_id, "cell": t.cell, "info": t.info}
        table = self._with_identity(t, rows).replace_schema_metadata(
            {b"sqn_ray.segment": json.dumps(meta, default=str).encode()})
        self._write(table, self.live_dir / name, "segments")
        first, last = _span(rows)
        t.segments.append(_Segment(name, first, last, rows.num_rows))
        t.next_seq += 1
        t.acc.feed(rows, self._target(t), self.study.stop.get("loss"))
        t.buffer, t.n_buffered = [], 0

    def finish(self, trial_id: str, cell: dict, final: dict) -> None:
        """Record the trial's outcome (``final`` from the trainable, or from the driver for trials Tune
        stopped or lost) and write its part file: the rows not yet written, and the summary."""
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
            rows = self._buffered(t)
            target, loss_target = self._target(t), self.study.stop.get("loss")
            if patch and rows is not None:
                rows = _set_last(rows, patch)
            elif patch and t.segments:  # the last row is written already: its segment is rewritten with the patch
                seg = t.segments[-1]
                path = self.live_dir / seg.name
                old = pq.read_table(path)
                self._write(_set_last(old, patch).replace_schema_metadata(old.schema.metadata), path, "segments")
                t.acc = _Summary()
                for s in t.segments:
                    t.acc.feed(pq.read_table(self.live_dir / s.name), target, loss_target)
            if rows is None:
                rows = record_table({"iteration": []})
            t.acc.feed(rows, target, loss_target)
            t.summary = self._summarize(t, final)
            meta = {"trial_id": trial_id, "cell": t.cell, "summary": t.summary, "info": t.info,
                    "segments": [s.name for s in t.segments]}
            part = self._with_identity(t, rows).replace_schema_metadata(
                {b"sqn_ray.trial": json.dumps(meta, default=str).encode()})
            self._write(part, self.parts_dir / f"{trial_id}.parquet", "parts")
            t.buffer, t.n_buffered, t.tail_rows = [], 0, rows.num_rows
            t.finished, t.retrying = True, False
            self._trials_dirty = self._dirty = True

    def is_finished(self, trial_id: str) -> bool:
        t = self.trials.get(trial_id)
        return bool(t and t.finished)

    def set_known(self, trial_ids: Iterable[str] | None) -> None:
        """Tune's current trial ids: only those are written (a part from a trial Tune has forgotten is not);
        None: every trial the store has."""
        ids = None if trial_ids is None else set(trial_ids)
        if ids != self.known:
            self.known = ids
            self._trials_dirty = self._dirty = True

    def keep_parts(self, keep) -> dict[str, dict]:
        """Quarantine the loaded trials whose id ``keep(trial_id)`` rejects (parts a new Tune experiment cannot
        match to its trials); returns the remaining finished ones as {trial_id: summary} as :meth:`load_parts`
        does."""
        with self._lock:
            for trial_id in [tid for tid in self.trials if not keep(tid)]:
                t = self.trials.pop(trial_id)
                why = "from a run whose trials cannot be matched to this one's"
                for path in [self.parts_dir / f"{trial_id}.parquet"] + [self.live_dir / s.name for s in t.segments]:
                    if path.exists():
                        self._quarantine(path, why)
            self._trials_dirty = self._dirty = True
            return {tid: {"cell_key": cell_key(t.cell), "summary": t.summary}
                    for tid, t in self.trials.items() if t.finished}

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
        v, hit = t.acc.values, t.acc.hit
        status = final.get("status") or "budget"
        last_it = v.get("iterations")
        if final.get("stop_reason") == "scheduler" and last_it is not None \
                and last_it >= self.study.budget["iterations"]:
            final["stop_reason"] = "iterations"  # the scheduler's max_t and the budget coincided
        if status == "budget" and hit is not None and final.get("stop_reason") != "scheduler":
            status = "solved"
        return {
            "status": status, "stop_reason": final.get("stop_reason"), "error": final.get("error"),
            "optimizer_status": final.get("optimizer_status"), "message": final.get("message"),
            "final_loss": v.get("final_loss"), "best_loss": v.get("best_loss"),
            "final_accuracy": v.get("final_accuracy"), "best_accuracy": v.get("best_accuracy"),
            "final_grad_norm": v.get("final_grad_norm"), "iterations": last_it,
            "grad_equivalents": v.get("grad_equivalents"), "epochs": v.get("epochs"),
            "target_accuracy": self._target(t),
            "iters_to_target": hit["iteration"] if hit else None,
            "grad_equivalents_to_target": hit["grad_equivalents"] if hit else None,
            "wall_time_to_target": hit["wall_time"] if hit else None,
            "wall_time": v.get("wall_time"), "trial_time": final.get("trial_time"), "restarts": t.restarts,
            "resumed_from": t.info.get("resumed_from"), "finished_at": final.get("finished_at", time.time()),
        }

    def _running_summary(self, t: _Trial) -> dict:
        acc = t.acc
        rows = self._buffered(t)
        if rows is not None:
            acc = acc.copy()
            acc.feed(rows, self._target(t), self.study.stop.get("loss"))
        return {"status": "running", **acc.running(), "target_accuracy": self._target(t), "restarts": t.restarts,
                "resumed_from": t.info.get("resumed_from")}

    # -- tables ---------------------------------------------------------------------------------------
    def _identity(self, t: _Trial) -> dict[str, Any]:
        cell = t.cell
        ident = {"study": self.study.name, "trial_id": t.trial_id, "cell": cell_key(cell),
                 "variant": variant_label(cell), "problem": cell["problem"], "method": cell["method"]}
        defaults = self.study.defaults.get(cell["method"], {})
        for opt in self.option_types:
            ident[opt] = cell["options"].get(opt, defaults.get(opt))
        ident["seed"] = cell["seed"]
        ident["stage"] = self.study.stage
        ident["tuning_config"] = cell.get("tuning_config")
        return ident

    def _identity_types(self) -> dict[str, pa.DataType]:
        return {**{k: pa.string() for k in ID_COLUMNS}, **self.option_types, "seed": pa.int64(),
                **STAGE_COLUMNS}

    def _identity_columns(self, trials: list[_Trial], counts: list[int]) -> dict[str, pa.Array]:
        types = self._identity_types()
        cols: dict[str, list] = {k: [] for k in types}
        for t, n in zip(trials, counts):
            for k, v in self._identity(t).items():
                cols[k].append(_constant(v, types[k], n))
        return {k: pa.concat_arrays(v) if v else pa.array([], type=types[k]) for k, v in cols.items()}

    def _selected(self) -> list[_Trial]:
        trials = list(self.trials.values())
        if self.known is not None:
            trials = [t for t in trials if t.trial_id in self.known]
        return sorted(trials, key=lambda t: t.trial_id)

    def _sources(self, t: _Trial) -> list:
        """A trial's rows in order: its segment paths, then its part file (finished) or its buffered rows
        (a table, identity columns added)."""
        out: list = [self.live_dir / s.name for s in t.segments]
        if t.finished:
            if t.tail_rows:
                out.append(self.parts_dir / f"{t.trial_id}.parquet")
        else:
            rows = self._buffered(t)
            if rows is not None:
                out.append(self._with_identity(t, rows))
        return out

    def _schema(self, sources: list) -> pa.Schema:
        """The one schema of the compacted file: identity columns, the record's leading block, then every
        other column any source has (sorted), each with the widest type the sources give it."""
        empty = self._with_identity(_Trial("", {"problem": "", "method": "", "seed": 0, "options": {}}),
                                    record_table({"iteration": []}))
        schemas = [empty.schema] + [pq.read_schema(s) if isinstance(s, Path) else s.schema for s in sources]
        merged = pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
        head = [f.name for f in empty.schema]
        rest = sorted(set(merged.names) - set(head))
        return pa.schema([merged.field(n) for n in head + rest])

    def iterations_table(self) -> pa.Table:
        """Every selected trial's rows as one table (reads the parts; for small studies and tests; the
        compacted file is written in a streaming pass instead)."""
        with self._lock:
            sources = [s for t in self._selected() for s in self._sources(t)]
        schema = self._schema(sources)
        tables = [_conform(pq.read_table(s) if isinstance(s, Path) else s, schema) for s in sources]
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        return table.replace_schema_metadata(self.metadata)

    def trials_table(self) -> pa.Table:
        trials = self._selected()
        ident = self._identity_columns(trials, [1] * len(trials))
        rows = []
        for t in trials:
            s = dict(t.summary) if t.finished else self._running_summary(t)
            info = t.info
            s.update({k: info.get(k) for k in _INFO_COLUMNS})
            rows.append(s)
        metric, mode = self.study.metric, self.study.mode
        key = METRIC_COLUMNS[metric]
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
        """Unforced (live, from the writer thread): write the segments that are due and, throttled,
        ``trials.parquet``; returns whether anything was written. Forced (the end of a run, interrupted or
        not): every buffered row into the compacted ``iterations.parquet`` (one streaming pass over the
        parts, one trial at a time) and ``trials.parquet``.

        Live ``trials.parquet`` rewrites (the file is small: one row per trial) happen at most every
        ``min_flush_interval`` seconds, never more than ~3 % of the time, and only while their bytes stay
        within a tenth of the rows' bytes written so far (plus 1 MB), so they never dominate what the driver
        writes."""
        with self._write_lock:
            if force:
                return self._compact()
            wrote = False
            now = time.monotonic()
            with self._lock:
                for t in [self.trials[tid] for tid in self._buffering if tid in self.trials]:
                    if not t.finished and t.buffer and (t.n_buffered >= self.segment_rows
                                                        or now - t.buffered_since >= self.spill_seconds):
                        self._spill(t)
                        wrote = True
                # spilled, finished (its part took the rows), truncated to nothing or forgotten: no longer waiting
                self._buffering = {tid for tid in self._buffering
                                   if tid in self.trials and self.trials[tid].buffer and not self.trials[tid].finished}
                due = (self._trials_dirty and now - self._last_trials_write >= max(self.min_flush_interval,
                                                                                      30 * self._trials_cost)
                       and self.bytes_written["trials"] <= 2**20 + 0.1 * (self.bytes_written["segments"]
                                                                          + self.bytes_written["parts"]))
                trials = self.trials_table() if due else None
                if due:
                    self._trials_dirty = False
            if trials is not None:
                try:
                    self._write(trials, self.trials_path, "trials")
                except BaseException:
                    self._trials_dirty = True
                    raise
                self._last_trials_write = time.monotonic()
                self._trials_cost = self._last_trials_write - now
                wrote = True
            return wrote

    def _compact(self) -> bool:
        with self._lock:
            if not self._dirty and self.iterations_path.exists():
                return False
            selected = self._selected()
            sources = [s for t in selected for s in self._sources(t)]
            trials = self.trials_table()
            self._dirty = self._trials_dirty = False
            metadata = self.metadata
        try:
            schema = self._schema(sources).with_metadata(metadata)
            with atomic_path(self.iterations_path) as tmp:
                with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                    batch: list[pa.Table] = []
                    n = 0
                    for source in sources:
                        table = _conform(pq.read_table(source) if isinstance(source, Path) else source, schema)
                        batch.append(table)
                        n += table.num_rows
                        if n >= self.row_group_rows:
                            writer.write_table(pa.concat_tables(batch), row_group_size=self.row_group_rows)
                            batch, n = [], 0
                    if batch or not sources:
                        writer.write_table(pa.concat_tables(batch) if batch else schema.empty_table(),
                                           row_group_size=self.row_group_rows)
            self.bytes_written["final"] += self.iterations_path.stat().st_size
            write_table_atomic(trials, self.trials_path)
            self.bytes_written["final"] += self.trials_path.stat().st_size
        except BaseException:
            self._dirty = self._trials_dirty = True
            raise
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


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in its order and types (a missing column is null)."""
    n = table.num_rows
    arrays = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            arrays.append(col if col.type == f.type else col.cast(f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=schema.remove_metadata())


# ------------------------------------------------------------------------------------- reading live
def live_files(out_dir: str | Path) -> list[Path]:
    """The Parquet files holding a study's rows while it runs (or after an interruption): every finished
    trial's part file (``DIR/.parts/*.parquet``) and every segment written so far (``DIR/.parts/live/``).
    Each is complete and never changes once there (files appear atomically). Rows a retried trial replaced
    can appear twice for a moment: :func:`read_live` keeps the last."""
    out = Path(out_dir)
    return sorted((out / PARTS).glob("*.parquet")) + sorted((out / PARTS / LIVE).glob("*.parquet"))


def read_live(out_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """A running study's rows so far, as one Arrow table in the layout of ``iterations.parquet`` (what
    ``pd.read_parquet`` would give of the final file, less the rows still on their way: at most
    ``ResultStore.spill_seconds`` old, for trials still running), one row per trial and iteration.
    ``columns``: read only these (identity and record columns are in every file)."""
    files = live_files(out_dir)
    tables = []
    for path in files:
        try:
            tables.append(pq.read_table(path, columns=columns).replace_schema_metadata())
        except FileNotFoundError:  # replaced (a retried trial) between the listing and the read
            continue
    if not tables:
        return pa.table({})
    table = pa.concat_tables(tables, promote_options="permissive")
    keys = pc.binary_join_element_wise(table.column("trial_id"),
                                       pc.cast(table.column("iteration"), pa.string()), "\x00")
    last = pc.unique(keys)
    if len(last) != table.num_rows:  # a replaced row seen twice: keep the later file's
        idx = {k: i for i, k in enumerate(keys.to_pylist())}
        table = table.take(pa.array(sorted(idx.values())))
    return table
