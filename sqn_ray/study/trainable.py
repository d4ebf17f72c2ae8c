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
import os
import queue
import threading
import time
from typing import Any

from ray import tune

from ..records import metric_names
from .execution import (RowBuffer, TrialExecution, concat_columns, detached, host_info, plain)
from .results import record_table
from .spec import WORKERS_OPTION

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


_plain = plain


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
        self._halt = threading.Event()
        self._permit = threading.Semaphore(0)
        self._lockstep = bool(self._settings.get("lockstep"))
        self._deadline = math.inf
        self._sent_info = False
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

    def _run(self):
        """The trial, in the worker thread: on this process (a single-process trial) or on a Ray Train worker
        group (``workers`` > 1, :mod:`sqn_ray.study.data_parallel`); either way its chunks arrive through
        :class:`_LocalChannel` and end with the final record."""
        import torch

        s = self._settings
        started = time.time()
        workers = int(self._cell["options"].get(WORKERS_OPTION, 1))
        channel = _LocalChannel(self)
        if workers > 1:
            from .data_parallel import run_data_parallel

            try:
                final = run_data_parallel(s, self._cell, workers=workers, channel=channel, resume=self._resume,
                                          recipes=self._recipes, trial_id=self.trial_id, started=started)
            except Exception as e:  # noqa: BLE001 - e.g. Ray Train missing or refusing the group: recorded
                final = {"status": "failed", "stop_reason": "error", "info": {},
                         "error": f"data-parallel trial on {workers} workers: {type(e).__name__}: {e}"[-4000:],
                         "trial_time": time.time() - started, "finished_at": time.time()}
        else:
            def prepare(execution: TrialExecution):
                threads = max(1, int(s["cpus"]))
                torch.set_num_threads(threads)
                execution.info.update(host_info(threads, self._device, started))
                channel.put({"info": dict(execution.info)})  # known before the problem is (a failure has it)
                dtype = getattr(torch, s["dtype"])
                return self._problem(self._cell["problem"], dtype, execution.info["device"])

            final = TrialExecution(s, self._cell, channel=channel, resume=self._resume).run(prepare)
        channel.put({"final": final})


class _LocalChannel:
    """The trial actor's end of a run's chunks (see :mod:`sqn_ray.study.execution`): a chunk updates the live
    metrics and joins the queue :meth:`StudyTrainable.step` reads; ``final`` ends the queue. The deadline is
    the one ``step()`` set; the lockstep permits and the halt flag are the trainable's."""

    def __init__(self, trainable: StudyTrainable):
        self.t = trainable

    def put(self, item: dict) -> None:
        t = self.t
        if "cols" in item:
            t._last.update(item["last"])
            t._queue.put((item["cols"], item["snapshot"]))
        elif "info" in item:
            t._info = {**(t._info or {}), **item["info"]}
        elif "final" in item:
            final = item["final"]
            t._final = final
            if final.get("info"):
                t._info = {**(t._info or {}), **final["info"]}
            if final.get("patch_last"):  # the last iterate's accuracy, evaluated after its row was sent
                t._last.update(final["patch_last"])
            t._queue.put(_END)

    def deadline(self) -> float:
        return self.t._deadline

    def rearm(self) -> None:
        self.t._deadline = time.monotonic() + float(self.t._settings["report_interval"])

    def wait_permit(self) -> bool:
        """Block until Tune's next step() (True: the trial was stopped meanwhile)."""
        while not self.t._permit.acquire(timeout=0.2):
            if self.t._halt.is_set():
                return True
        return self.t._halt.is_set()

    def halted(self) -> bool:
        return self.t._halt.is_set()


# the trial loop's pieces kept under their old names here
_RowBuffer = RowBuffer
_concat_columns = concat_columns
_detached = detached
