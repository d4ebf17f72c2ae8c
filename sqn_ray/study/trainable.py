"""The Ray Tune trainable: one trial = one ``sqn_ray.minimize`` run of one (problem, method, options, seed).

:class:`StudyTrainable` is a class trainable so that Tune can reuse its actor across trials
(``reuse_actors=True`` + :meth:`~StudyTrainable.reset_config`): a fresh actor costs seconds of Python and torch
import, a reused one nothing. The optimizer runs in a worker thread of the actor; ``step()`` hands Tune one
chunk of iteration records about every ``report_interval`` seconds (the thread appends them as columns; they
travel to the driver as one Arrow table inside the result and are taken out there before Tune stores it). With an
early-stopping scheduler the thread pauses at each chunk boundary until Tune asks for the next one, so a stopped
trial does not run on.

Inside a trial:

* the device is ``cuda:0`` when Ray assigned the trial a GPU (Ray sets CUDA_VISIBLE_DEVICES to it) and torch
  sees CUDA, otherwise the CPU (``device: cuda`` in the study makes a missing GPU an error instead);
* torch uses as many threads as the trial has CPUs (toy trials: one);
* the budget (iterations, gradient-equivalents, wall time) and the stop rule (target accuracy or loss) are
  one :class:`sqn_ray.stopping.StopRules`, applied through ``minimize``'s callback (the iteration budget as
  ``max_iters``);
* whatever the run raises becomes a trial with status ``failed`` and the error text; a non-finite loss gives
  ``diverged``; the study goes on.
"""
from __future__ import annotations

import json
import logging
import math
import operator
import os
import queue
import socket
import threading
import time
import traceback
from typing import Any

import ray
from ray import tune

from ..records import metric_names
from ..stopping import StopRules, reason_of_status
from .results import record_table

__all__ = ["StudyTrainable", "cell_from_config", "trial_dirname"]

_END = object()
_log = logging.getLogger(__name__)
CHECKPOINT_STATE = "state.pt"  # in a trial checkpoint's folder: minimize's state at the checkpoint's iteration
CHECKPOINT_META = "checkpoint.json"  # ... and what it belongs to: trial, cell, iteration, driver session
#: the record fields a trial reports to Tune as live metrics (the record schema says which), and all the
#: metrics a result carries: those and the platform's best loss, accuracy and best accuracy
_RECORD_METRICS = metric_names()
_METRICS = (*_RECORD_METRICS, "best_loss", "accuracy", "best_accuracy")
#: the trial summary's name of a metric where it differs (a replayed trial reports its summary)
_SUMMARY_KEY = {"loss": "final_loss", "grad_norm": "final_grad_norm", "iteration": "iterations",
                "accuracy": "final_accuracy"}
#: Tune's bad side of a non-finite metric: -inf for these, +inf for the losses and gradient norm, else 0
_HIGHER_IS_BETTER = ("accuracy", "best_accuracy")
_LOWER_IS_BETTER = ("loss", "best_loss", "grad_norm")


def _plain(v):
    if hasattr(v, "item") and not isinstance(v, (list, tuple, dict, str)):
        try:
            return v.item()
        except (ValueError, RuntimeError):
            return str(v)
    return v


def cell_from_config(config: dict, grid=None) -> dict[str, Any]:
    """The trial's (problem, method, seed, options) from a Tune config of any search algorithm.

    Grid and random search configs are ``{"cell": index into grid, "draw": {option: value}}``
    (:class:`~sqn_ray.study.search.CellSearcher`); Tune states written before cells were indices hold the cell
    itself and ``"draw": {method: {option: value}}``. An Optuna config is flat: ``{"problem", "method", "seed",
    "<method>.<option>": value}``.
    """
    if "cell" in config:
        cell = config["cell"]
        draw = config.get("draw") or {}
        if isinstance(cell, dict):  # the older form
            draw = draw.get(cell["method"], {})
        else:
            cell = grid[int(cell)]
        options = {k: _plain(v) for k, v in cell["options"].items()}
        options.update({k: _plain(v) for k, v in draw.items()})
        out = {"problem": cell["problem"], "method": cell["method"], "seed": int(cell["seed"]), "options": options}
        if cell.get("tuning_config") is not None:  # a tuned study's stage: the configuration's number
            out["tuning_config"] = int(cell["tuning_config"])
        return out
    method = config["method"]
    prefix = method + "."
    options = {k[len(prefix):]: _plain(v) for k, v in config.items() if k.startswith(prefix)}
    return {"problem": config["problem"], "method": method, "seed": int(config["seed"]), "options": options}


def trial_dirname(trial) -> str:
    """Short trial folder names (Tune's default puts the whole config, '=' included, into them)."""
    return trial.trial_id


class _Stop(Exception):
    pass


class StudyTrainable(tune.Trainable):
    """See the module docstring. ``settings`` is the study's run settings (a small dict), ``recorded`` the
    finished trials of an interrupted run (trial id -> cell key and summary), which replay instantly,
    ``durable`` the last iteration the folder holds of each unfinished trial of an earlier driver (a checkpoint
    of that driver's beyond it is not continued from: its rows would have a gap), ``problems`` CPU problems
    built on the driver (name -> Problem), ``recipes`` the problems (or recipes) a notebook handed to
    ``run_study``, from which the other trials build theirs on their device.

    Checkpoints (``checkpoint_every`` seconds of the study file): the run's state is taken at a row boundary
    (``minimize``'s ``save_state``), sent with the rows up to it, and saved when Tune asks
    (:meth:`save_checkpoint`); a trial Tune restores (its worker died, or the driver resumed) continues from
    it (:meth:`load_checkpoint`): its rows go on from the checkpoint's iteration, and its trajectory is the
    uninterrupted one."""

    def setup(self, config, settings=None, recorded=None, problems=None, recipes=None, durable=None):
        self._settings = settings
        self._recorded = recorded or {}
        self._durable = durable or {}
        self._recipes = dict(recipes or {})
        # problems built once on the driver and shipped through the object store (CPU trials); others are
        # built here, once per actor
        self._problems: dict[tuple, Any] = {(name, settings["dtype"], "cpu"): p for name, p in (problems or {}).items()}
        self._thread: threading.Thread | None = None
        self._begin(config)

    def reset_config(self, new_config):
        self._end()
        self._begin(new_config)
        return True

    def cleanup(self):
        self._end()

    # -- one trial ------------------------------------------------------------------------------------
    def _begin(self, config):
        from .results import cell_key

        self._cell = cell_from_config(config, self._settings.get("grid"))
        self._queue: queue.Queue = queue.Queue()  # lists of records (one per report), then _END
        self._rows = _RowBuffer()
        self._halt = threading.Event()
        self._permit = threading.Semaphore(0)
        self._lockstep = bool(self._settings.get("lockstep"))
        self._deadline = math.inf
        self._sent_info = False
        self._best_loss = math.inf
        self._best_acc = -math.inf
        self._last: dict[str, Any] = {}
        self._info = None
        self._resume: dict | None = None  # a checkpoint Tune restored: {"state", "iteration", ...}
        self._snapshot: dict | None = None  # the newest state taken, for the next save_checkpoint
        self._cell_key = cell_key(self._cell)
        rec = self._recorded.get(self.trial_id)
        if rec and rec["cell_key"] == self._cell_key and rec["summary"].get("stop_reason") != "worker_died":
            self._replay = rec["summary"]
            return
        self._replay = None
        # the run starts at the first step(), after Tune has restored a checkpoint (if any) into the trainable

    def _start_run(self):
        if self._thread is None and self._replay is None:
            self._thread = threading.Thread(target=self._run, name="sqn-ray-trial", daemon=True)
            self._thread.start()

    # -- checkpoints ----------------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint_dir: str):
        import torch

        snap = self._snapshot
        meta = {"trial_id": self.trial_id, "cell_key": self._cell_key,
                "iteration": snap["iteration"] if snap else None,
                "session": self._settings.get("session")}
        if snap is not None:
            torch.save(snap["state"], os.path.join(checkpoint_dir, CHECKPOINT_STATE))
        with open(os.path.join(checkpoint_dir, CHECKPOINT_META), "w") as fh:
            json.dump(meta, fh)
        return None

    def load_checkpoint(self, checkpoint):
        import torch

        try:
            with open(os.path.join(checkpoint, CHECKPOINT_META)) as fh:
                meta = json.load(fh)
        except (OSError, TypeError, ValueError):
            _log.warning("trial %s: its checkpoint %s is unreadable; it starts over", self.trial_id, checkpoint)
            return
        it = meta.get("iteration")
        if it is None or meta.get("cell_key") != self._cell_key:
            return  # a checkpoint without a state (Tune asked before any was taken), or another cell's
        durable = self._durable.get(self.trial_id, -1)
        if meta.get("session") != self._settings.get("session") and it > durable:
            # taken under an earlier driver, past the rows that driver kept: continuing would leave a gap
            _log.warning("trial %s: checkpoint at iteration %d is past its last kept row (%d); it starts over",
                         self.trial_id, it, durable)
            return
        state = torch.load(os.path.join(checkpoint, CHECKPOINT_STATE), weights_only=True)
        self._resume = {"state": state, "iteration": int(it)}

    def _end(self):
        self._halt.set()
        self._permit.release()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def step(self):
        self._start_run()
        if self._replay is not None:  # finished before the interruption: its rows are on the driver already
            s = self._replay
            metrics = {k: s.get(_SUMMARY_KEY.get(k, k)) for k in _METRICS}
            return {**self._sanitize(metrics), "replayed": True, "done": True}
        self._deadline = time.monotonic() + float(self._settings["report_interval"])
        if self._lockstep:
            self._permit.release()
        chunks: list[dict[str, list]] = []  # column chunks (the thread builds columns: nothing to transpose)
        final = None
        checkpoint = False
        item = self._queue.get()
        while True:
            if item is _END:
                final = self._final
                break
            cols, snapshot = item
            chunks.append(cols)
            if snapshot is not None:  # the state at this chunk's last row: what the next checkpoint saves
                self._snapshot, checkpoint = snapshot, True
            try:  # also take whatever else is ready (the end of the run, or chunks the thread ran ahead with)
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        # An Arrow table, built here: the driver stores it as is, and Tune's controller, which formats every
        # result into its debug log messages whether or not they are shown, formats a table in microseconds
        # (a dict of thousands of floats takes ~10 ms a time, all of it on the driver).
        rows = record_table(_concat_columns(chunks)) if chunks else None
        result = {**self._sanitize(dict(self._last)), "rows": rows}
        if not self._sent_info and getattr(self, "_info", None):
            result["trial_info"] = self._info
            self._sent_info = True
        if final is not None:
            result["final"] = final
            result["done"] = True
        elif checkpoint:
            result["should_checkpoint"] = True
        return result

    def _sanitize(self, m: dict) -> dict:
        """Tune-facing metrics must be numbers: non-finite -> ±inf on the bad side of the study's mode."""
        out = {}
        for k in _METRICS:
            v = m.get(k)
            if v is None or not math.isfinite(v):
                v = -math.inf if k in _HIGHER_IS_BETTER else math.inf if k in _LOWER_IS_BETTER else 0.0
            out[k] = v
        return out

    # -- the run, in the worker thread -----------------------------------------------------------------
    def _device(self, gpu_ids) -> str:
        import torch

        want = self._settings["device"]
        if want == "cpu":
            return "cpu"
        if gpu_ids and torch.cuda.is_available():
            return "cuda:0"  # Ray set CUDA_VISIBLE_DEVICES to the assigned GPU(s): the first visible one is ours
        if want == "cuda":
            raise RuntimeError(f"device: cuda, but the trial was given GPU ids {gpu_ids} "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}) and torch "
                               f"sees {torch.cuda.device_count()} CUDA device(s)")
        return "cpu"

    def _problem(self, name: str, dtype, device: str):
        from sqn_ray.problems import get_problem

        key = (name, str(dtype).removeprefix("torch."), device)
        if key not in self._problems:
            self._problems[key] = get_problem(name, dtype=dtype, device=device, problems=self._recipes)
        return self._problems[key]

    def _emit_chunk(self, snapshot: dict | None = None) -> None:
        if self._rows.items:
            cols = self._rows.take()
            for k in _RECORD_METRICS:
                if cols.get(k) and cols[k][-1] is not None:
                    self._last[k] = cols[k][-1]
            acc = next((a for a in reversed(cols.get("accuracy", ())) if a is not None and math.isfinite(a)), None)
            if acc is not None:
                self._last["accuracy"] = acc
            self._last.update(best_loss=self._best_loss, best_accuracy=self._best_acc)
            self._queue.put((cols, snapshot))

    def _run(self):
        import torch

        import sqn_ray

        s = self._settings
        cell = self._cell
        started = time.time()
        t_start = time.perf_counter()
        budget, stop = s["budget"], s["stop"]
        final: dict[str, Any] = {"status": None, "stop_reason": None, "error": None}
        try:
            threads = max(1, int(s["cpus"]))
            torch.set_num_threads(threads)
            gpu_ids = ray.get_gpu_ids()
            self._info = {
                "node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                "hostname": socket.gethostname(), "pid": os.getpid(), "device": None,
                "gpu_ids": ",".join(str(g) for g in gpu_ids),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": threads,
                "started_at": started,
            }
            device = self._info["device"] = self._device(gpu_ids)
            dtype = getattr(torch, s["dtype"])
            problem = self._problem(cell["problem"], dtype, device)
            # 'target' is the problem's own target accuracy (None for problems without one: no accuracy rule)
            rules = StopRules.from_study(budget, stop, target_accuracy=problem.target_accuracy)
            self._info["problem_target_accuracy"] = problem.target_accuracy
            # the problem's size, for the analysis (which reads it from the results, never builds problems)
            self._info.update(problem_dim=int(problem.dim), problem_n=int(problem.n_samples))
            resume = self._resume
            w0 = problem.init(cell["seed"]) if resume is None else None
            self._info["resumed_from"] = resume["iteration"] if resume is not None else None
            every = int(s["accuracy_every"])
            checkpoint_every = s.get("checkpoint_every")
            next_snapshot = time.monotonic() + checkpoint_every if checkpoint_every else math.inf
            metrics = getattr(problem, "metrics", None)
            overhead = 0.0  # seconds spent in this callback: not the optimizer's time
            streamed = set()
            reason = {}

            rows = self._rows

            def callback(x=None, record=None, save_state=None, **_):
                nonlocal overhead, next_snapshot
                t0 = time.perf_counter()
                it = int(record["iteration"])
                evaluate = it % every == 0
                acc = float(problem.accuracy(x)) if evaluate else math.nan
                # held-out metrics (test_loss, test_accuracy) of real-data problems
                extra = metrics(x) if metrics is not None and evaluate else None
                rows.append(record, overhead, acc, extra)
                self._track(record["loss"], acc)
                streamed.add(it)
                halt = rules.check(record, accuracy=acc, overhead=overhead)
                now = time.monotonic()
                snapshot_due = save_state is not None and now >= next_snapshot
                if halt is None and (now >= self._deadline or snapshot_due):
                    snapshot = None
                    if snapshot_due:  # the state at this row, sent with the rows up to it
                        snapshot = {"state": _detached(save_state()), "iteration": it}
                        next_snapshot = now + checkpoint_every
                    self._emit_chunk(snapshot)
                    if self._lockstep:
                        while not self._permit.acquire(timeout=0.2):
                            if self._halt.is_set():
                                break
                    else:
                        self._deadline = time.monotonic() + float(s["report_interval"])
                if halt is None and self._halt.is_set():
                    halt = "stopped"
                overhead += time.perf_counter() - t0
                if halt:
                    reason["why"] = halt
                    return True
                return False

            if self._lockstep:  # wait for Tune's first step() before computing anything
                while not self._permit.acquire(timeout=0.2):
                    if self._halt.is_set():
                        raise _Stop
            if resume is not None:  # restored from a checkpoint: the run continues from its state
                result = sqn_ray.minimize(problem.oracle, None, cell["method"], state=resume["state"],
                                          **rules.minimize_options(), callback=callback, seed=cell["seed"],
                                          **cell["options"])
            else:
                result = sqn_ray.minimize(problem.oracle, w0, cell["method"], **rules.minimize_options(),
                                          callback=callback, seed=cell["seed"], **cell["options"])
            # iterates the callback never saw (a diverged step is recorded but not called back)
            hist = result.history
            unseen = hist[~hist["iteration"].isin(streamed)] if len(hist) > len(streamed) else hist.iloc[:0]
            for rec in unseen.to_dict("records"):
                rec = {k: _plain(v) for k, v in rec.items()}
                rows.append(rec, overhead, math.nan, None)
                self._track(rec["loss"], math.nan)
            final["optimizer_status"], final["message"] = result.status, result.message
            if result.status == "diverged":
                final.update(status="diverged", stop_reason="diverged")
            else:
                last = hist.iloc[-1] if len(hist) else None
                if last is not None and int(last["iteration"]) % every != 0 and torch.isfinite(result.x).all():
                    acc = float(problem.accuracy(result.x))
                    # and the held-out metrics: a run of few, costly iterations (full-batch MNIST) may have
                    # no evaluated iterate after its first, and its test curve must end where it ended
                    held_out = metrics(result.x) if metrics is not None else {}
                    final["patch_last"] = {"accuracy": acc, **{k: _plain(v) for k, v in held_out.items()}}
                    self._track(math.nan, acc)
                why = reason.get("why") or reason_of_status(result.status)
                final.update(status="solved" if rules.solved(why, self._best_acc) else "budget", stop_reason=why)
        except _Stop:
            final.update(status="budget", stop_reason="stopped")
        except Exception as e:  # noqa: BLE001 - any error of a trial is recorded, the study goes on
            tb = traceback.format_exception(type(e), e, e.__traceback__)
            final.update(status="failed", stop_reason="error",
                         error=(f"{type(e).__name__}: {e}\n" + "".join(tb[-6:]))[-4000:])
        final["trial_time"] = time.perf_counter() - t_start
        final["finished_at"] = time.time()
        final["info"] = getattr(self, "_info", None)
        self._final = final
        self._emit_chunk()
        if final.get("patch_last"):  # the last iterate's accuracy (and test metrics), evaluated after its row was sent
            self._last.update(final["patch_last"])
        self._queue.put(_END)

    def _track(self, loss, acc) -> None:
        """Best loss and accuracy so far (NaN compares false: unevaluated accuracies are skipped)."""
        if loss is not None and loss < self._best_loss and math.isfinite(loss):
            self._best_loss = loss
        if acc > self._best_acc and math.isfinite(acc):
            self._best_acc = acc


def _detached(value):
    """A copy of a saved state that the run going on cannot change (tensors cloned)."""
    if hasattr(value, "detach"):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    return value


class _RowBuffer:
    """The iterations of the current chunk, kept as cheaply as the callback can (one append each: the
    optimizer's own record, which it never changes once emitted, the callback time spent before it, the
    accuracy and any held-out metrics); :meth:`take` turns them into columns at C speed once per chunk."""

    __slots__ = ("items",)

    def __init__(self):
        self.items: list[tuple] = []

    def append(self, record: dict, overhead: float, accuracy: float, extra: dict | None) -> None:
        self.items.append((record, overhead, accuracy, extra))

    def take(self) -> dict[str, list]:
        """The buffered rows as equal-length columns (a field a row lacks is None); the buffer empties.
        ``wall_time`` becomes the optimizer's own time: the callback's time up to that row is taken out."""
        items, self.items = self.items, []
        records = [item[0] for item in items]
        keys = list(records[0])
        if len(keys) > 1 and all(r.keys() == records[0].keys() for r in records):  # the usual case
            cols = dict(zip(keys, map(list, zip(*map(operator.itemgetter(*keys), records)))))
        else:
            keys = list(dict.fromkeys(k for r in records for k in r))
            cols = {k: [r.get(k) for r in records] for k in keys}
        if "wall_time" in cols:
            cols["wall_time"] = [None if w is None else w - item[1] for w, item in zip(cols["wall_time"], items)]
        cols["accuracy"] = [item[2] for item in items]
        extras = [item[3] for item in items]
        for k in dict.fromkeys(k for e in extras if e for k in e):
            cols[k] = [e.get(k) if e else None for e in extras]
        return cols


def _concat_columns(chunks: list[dict[str, list]]) -> dict[str, list]:
    """Column chunks one after another (a column missing from a chunk is None there)."""
    if len(chunks) == 1:
        return chunks[0]
    out: dict[str, list] = {}
    n = 0
    for chunk in chunks:
        m = len(next(iter(chunk.values()), ()))
        for k in chunk.keys() - out.keys():
            out[k] = [None] * n
        for k, col in out.items():
            col.extend(chunk.get(k) or [None] * m)
        n += m
    return out
