"""One trial's run: ``minimize`` on the trial's problem, its iterations streamed in chunks, its end recorded.

:class:`TrialExecution` is the loop a trial runs wherever it runs: in a worker thread of its Tune actor (a
single-process trial, :class:`~sqn_ray.study.trainable.StudyTrainable`) or on every rank of a Ray Train worker
group (a data-parallel trial, :mod:`sqn_ray.study.data_parallel`). What differs is behind two small objects:

* a *channel* (where the chunks go and where stop requests come from): ``put(item)`` hands over a chunk
  ``{"cols", "snapshot", "last"}``, the trial's ``{"info"}`` or its ``{"final"}``; ``deadline()`` is when the next
  chunk is due; ``wait_permit()`` blocks at a chunk boundary until the scheduler lets the trial go on (lockstep;
  True: stopped meanwhile) and ``rearm()`` sets the next deadline otherwise; ``halted()`` says whether Tune
  asked the trial to stop. Only rank 0 of a data-parallel trial has one; the other ranks get None.
* a *collective* (None for one process): ``mean(x)`` turns a shard's accuracy into the whole data set's (one
  all-reduce, on every rank at the same iterates) and ``agree(stop)`` makes rank 0's stop decision every
  rank's, so the replicated optimizers stop at the same iterate.

Everything else (the budget and stop rules, accuracy every ``accuracy_every`` iterates, held-out metrics, the
row buffer, checkpoint snapshots, the final status, a failure recorded with its traceback) is one code path.
"""
from __future__ import annotations

import math
import operator
import os
import socket
import time
import traceback
from typing import Any, Callable

from ..stopping import StopRules, reason_of_status
from .spec import WORKERS_OPTION

__all__ = ["TrialExecution", "RowBuffer", "concat_columns", "detached", "plain", "RECORD_METRICS",
           "StopRequested"]


def _record_metrics():
    from ..records import metric_names

    return metric_names()


#: the record fields a trial reports to Tune as live metrics (the record schema says which)
RECORD_METRICS = _record_metrics()


class StopRequested(Exception):
    """Tune stopped the trial before it computed anything."""


def plain(v):
    if hasattr(v, "item") and not isinstance(v, (list, tuple, dict, str)):
        try:
            return v.item()
        except (ValueError, RuntimeError):
            return str(v)
    return v


class TrialExecution:
    """See the module docstring.

    Parameters
    ----------
    settings : the study's run settings (budget, stop, dtype, device, accuracy_every, report_interval,
        checkpoint_every, lockstep).
    cell : the trial's ``{"problem", "method", "seed", "options"}``.
    channel : where chunks go (None: not this rank's job).
    collective : None, or the cross-rank operations of a data-parallel trial.
    resume : ``{"state", "iteration"}`` of a restored checkpoint, or None.

    :meth:`run` takes ``prepare(execution) -> problem``, which fills :attr:`info` (node, device, threads, ...)
    and builds the trial's problem (a shard of it on a data-parallel rank) inside the run, so that a problem
    that cannot be built fails its trial, with the error recorded.
    """

    def __init__(self, settings: dict, cell: dict, *, channel=None, collective=None, resume: dict | None = None):
        self.settings, self.cell, self.problem = settings, cell, None
        self.channel, self.collective, self.resume = channel, collective, resume
        self.info: dict[str, Any] = {}
        self.rows = RowBuffer()
        self.best_loss = math.inf
        self.best_acc = -math.inf
        self.last: dict[str, Any] = {}

    # -- tracking ----------------------------------------------------------------------------------------
    def track(self, loss, acc) -> None:
        """Best loss and accuracy so far (NaN compares false: unevaluated accuracies are skipped)."""
        if loss is not None and loss < self.best_loss and math.isfinite(loss):
            self.best_loss = loss
        if acc > self.best_acc and math.isfinite(acc):
            self.best_acc = acc

    def emit_chunk(self, snapshot: dict | None = None) -> None:
        if self.rows.items and self.channel is not None:
            cols = self.rows.take()
            for k in RECORD_METRICS:
                if cols.get(k) and cols[k][-1] is not None:
                    self.last[k] = cols[k][-1]
            acc = next((a for a in reversed(cols.get("accuracy", ())) if a is not None and math.isfinite(a)), None)
            if acc is not None:
                self.last["accuracy"] = acc
            self.last.update(best_loss=self.best_loss, best_accuracy=self.best_acc)
            self.channel.put({"cols": cols, "snapshot": snapshot, "last": dict(self.last)})
        elif self.channel is None:
            self.rows.items.clear()  # a rank without a channel keeps no rows

    def _accuracy(self, x) -> float:
        acc = float(self.problem.accuracy(x))
        return self.collective.mean(acc) if self.collective is not None else acc

    # -- the run -----------------------------------------------------------------------------------------
    def run(self, prepare: Callable[["TrialExecution"], Any]) -> dict[str, Any]:
        """Run the trial to its end; returns its ``final`` record (status, stop reason, error, info, ...). An
        exception of the run (``prepare``'s included) is recorded in it (``failed``), never raised."""
        import torch

        import sqn_ray

        s, cell, channel = self.settings, self.cell, self.channel
        t_start = time.perf_counter()
        final: dict[str, Any] = {"status": None, "stop_reason": None, "error": None}
        options = {k: v for k, v in cell["options"].items() if k != WORKERS_OPTION}
        try:
            problem = self.problem = prepare(self)
            # from the trial's start to its first iteration: the problem's build and, on a data-parallel trial,
            # the start of its worker group (tens of seconds: what a study of many such trials pays for each)
            if "started_at" in self.info:
                self.info["startup_seconds"] = time.time() - self.info["started_at"]
            # 'target' is the problem's own target accuracy (None for problems without one: no accuracy rule)
            rules = StopRules.from_study(s["budget"], s["stop"], target_accuracy=problem.target_accuracy)
            self.info["problem_target_accuracy"] = problem.target_accuracy
            # the problem's size, for the analysis (which reads it from the results, never builds problems)
            n_samples = int(problem.n_samples) if self.collective is None else self.collective.n_total
            self.info.update(problem_dim=int(problem.dim), problem_n=n_samples)
            resume = self.resume
            w0 = problem.init(cell["seed"]) if resume is None else None
            self.info["resumed_from"] = resume["iteration"] if resume is not None else None
            if channel is not None:
                channel.put({"info": dict(self.info)})
            every = int(s["accuracy_every"])
            checkpoint_every = s.get("checkpoint_every")
            next_snapshot = time.monotonic() + checkpoint_every if checkpoint_every else math.inf
            # held-out metrics (test_loss, test_accuracy) of real-data problems: the whole test set, so one rank
            metrics = getattr(problem, "metrics", None) if channel is not None else None
            overhead = 0.0  # seconds spent in this callback: not the optimizer's time
            streamed = set()
            reason = {}
            rows = self.rows
            collective = self.collective
            lockstep = bool(s.get("lockstep"))

            def callback(x=None, record=None, save_state=None, **_):
                nonlocal overhead, next_snapshot
                t0 = time.perf_counter()
                it = int(record["iteration"])
                evaluate = it % every == 0
                acc = self._accuracy(x) if evaluate else math.nan
                extra = metrics(x) if metrics is not None and evaluate else None
                halt = None
                if channel is not None:
                    rows.append(record, overhead, acc, extra)
                    self.track(record["loss"], acc)
                    streamed.add(it)
                    halt = rules.check(record, accuracy=acc, overhead=overhead)
                    now = time.monotonic()
                    snapshot_due = save_state is not None and now >= next_snapshot
                    if halt is None and (now >= channel.deadline() or snapshot_due):
                        snapshot = None
                        if snapshot_due:  # the state at this row, sent with the rows up to it
                            snapshot = {"state": detached(save_state()), "iteration": it}
                            next_snapshot = now + checkpoint_every
                        self.emit_chunk(snapshot)
                        if lockstep:
                            channel.wait_permit()
                        else:
                            channel.rearm()
                    if halt is None and channel.halted():
                        halt = "stopped"
                if collective is not None:  # every replica stops where rank 0 does
                    stop = collective.agree(halt is not None)
                    if stop and halt is None:
                        halt = "stopped"
                overhead += time.perf_counter() - t0
                if halt:
                    reason["why"] = halt
                    return True
                return False

            stopped = False
            if lockstep and channel is not None:  # wait for Tune's first step() before computing anything
                stopped = channel.wait_permit()
            if collective is not None:  # (the other ranks learn rank 0's answer)
                stopped = collective.agree(stopped)
            if stopped:
                raise StopRequested
            if resume is not None:  # restored from a checkpoint: the run continues from its state
                result = sqn_ray.minimize(problem.oracle, None, cell["method"], state=resume["state"],
                                          **rules.minimize_options(), callback=callback, seed=cell["seed"],
                                          **options)
            else:
                result = sqn_ray.minimize(problem.oracle, w0, cell["method"], **rules.minimize_options(),
                                          callback=callback, seed=cell["seed"], **options)
            # iterates the callback never saw (a diverged step is recorded but not called back)
            hist = result.history
            unseen = hist[~hist["iteration"].isin(streamed)] if len(hist) > len(streamed) else hist.iloc[:0]
            if channel is not None:
                for rec in unseen.to_dict("records"):
                    rec = {k: plain(v) for k, v in rec.items()}
                    rows.append(rec, overhead, math.nan, None)
                    self.track(rec["loss"], math.nan)
            final["optimizer_status"], final["message"] = result.status, result.message
            if result.status == "diverged":
                final.update(status="diverged", stop_reason="diverged")
            else:
                last = hist.iloc[-1] if len(hist) else None
                if last is not None and int(last["iteration"]) % every != 0 and bool(torch.isfinite(result.x).all()):
                    acc = self._accuracy(result.x)
                    # and the held-out metrics: a run of few, costly iterations (full-batch MNIST) may have
                    # no evaluated iterate after its first, and its test curve must end where it ended
                    held_out = metrics(result.x) if metrics is not None else {}
                    final["patch_last"] = {"accuracy": acc, **{k: plain(v) for k, v in held_out.items()}}
                    self.track(math.nan, acc)
                why = reason.get("why") or reason_of_status(result.status)
                final.update(status="solved" if rules.solved(why, self.best_acc) else "budget", stop_reason=why)
            if collective is not None:
                self.info.update(collective.report(result.x))
        except StopRequested:
            final.update(status="budget", stop_reason="stopped")
        except Exception as e:  # noqa: BLE001 - any error of a trial is recorded, the study goes on
            tb = traceback.format_exception(type(e), e, e.__traceback__)
            final.update(status="failed", stop_reason="error",
                         error=(f"{type(e).__name__}: {e}\n" + "".join(tb[-6:]))[-4000:])
        final["trial_time"] = time.perf_counter() - t_start
        final["finished_at"] = time.time()
        final["info"] = dict(self.info)
        self.emit_chunk()
        if final.get("patch_last"):  # the last iterate's accuracy (and test metrics), evaluated after its row was sent
            self.last.update(final["patch_last"])
        return final


def host_info(threads: int, device_of: Callable[[list], str], started: float) -> dict[str, Any]:
    """Where this process runs, for the trial's info: node, host, pid, GPU ids, threads; ``device_of(gpu_ids)``
    picks the device."""
    import ray

    gpu_ids = ray.get_gpu_ids()
    info = {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(), "pid": os.getpid(), "device": None,
            "gpu_ids": ",".join(str(g) for g in gpu_ids),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": threads,
            "started_at": started}
    info["device"] = device_of(gpu_ids)
    return info


def detached(value):
    """A copy of a saved state that the run going on cannot change (tensors cloned)."""
    if hasattr(value, "detach"):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(detached(v) for v in value)
    return value


class RowBuffer:
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


def concat_columns(chunks: list[dict[str, list]]) -> dict[str, list]:
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
