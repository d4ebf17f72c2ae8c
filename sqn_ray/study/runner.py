"""Run a validated :class:`~sqn_ray.study.spec.Study` on Ray Tune and write its Parquet results.

:func:`run_study` is what ``sqn-ray study run`` calls. Without an address it starts an embedded local Ray
(no dashboard, a small object store, reachable on loopback only and with token auth: see
:mod:`sqn_ray.ray_session`) and stops it at the end; with ``address`` (or RAY_ADDRESS) it joins an existing
cluster and only disconnects. Trials run through
``ray.tune.Tuner``: a grid (or random/Optuna search, optionally ASHA) over :class:`StudyTrainable` actors
sized by the study's resources, actors reused across trials. Results stream into ``DIR/iterations.parquet``
and ``DIR/trials.parquet`` (:mod:`sqn_ray.study.results`); Tune's own state lives in ``DIR/.tune`` and lets
``resume=True`` continue an interrupted study (Ctrl-C, or kill -9 of the driver): finished trials replay
from their recorded results, unfinished ones start over, no row is duplicated or lost.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ray import tune

from .. import ray_session
from .progress import ProgressTable
from .results import ResultStore, variant_label
from .search import OptunaSpace, pending_trials, search_setup  # noqa: F401 - OptunaSpace: its old home
from .spec import Study
from .trainable import StudyTrainable, cell_from_config, trial_dirname

__all__ = ["run_study", "StudyError", "StudyOutcome", "init_ray", "shutdown_ray", "DEFAULT_OUT_ROOT"]

DEFAULT_OUT_ROOT = Path("results")
STATE_FILE = ".study.json"
TUNE_DIR = ".tune"
EXPERIMENT = "study"


class StudyError(RuntimeError):
    """The study cannot run as asked (output folder holds another study, nothing to resume, ...)."""


@dataclass
class StudyOutcome:
    out_dir: Path
    total: int
    counts: dict[str, int]
    interrupted: bool
    wall_time: float
    ray_start_time: float
    iterations_path: Path
    trials_path: Path
    resumed: bool = False
    replayed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def done(self) -> int:
        return sum(self.counts.get(s, 0) for s in ("solved", "budget", "diverged", "failed"))

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else 0


# ------------------------------------------------------------------------------------------------ Ray
def init_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
             object_store_memory: int = 128 * 1024**2) -> str | None:
    """:func:`sqn_ray.ray_session.connect` for studies: ``"cluster"``, ``"embedded"`` (the caller then shuts
    down) or None (Ray already initialized, left alone). An embedded instance's workers inherit Tune's actor
    env vars, so that Tune's actors can do without them (see :func:`_plain_tune_actors`)."""
    cache = _tune_class_cache()
    return ray_session.connect(address, num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=object_store_memory,
                               worker_env=dict(cache.DEFAULT_ENV_VARS) if cache else None)


shutdown_ray = ray_session.shutdown


def _tune_class_cache():
    try:
        from ray.tune.execution import class_cache  # pinned ray 2.60
    except ImportError:
        return None
    return class_cache


@contextlib.contextmanager
def _plain_tune_actors(embedded: bool):
    """Tune gives every trainable actor a runtime env of constant env vars (``PL_DISABLE_FORK=1``, for
    PyTorch Lightning). Any runtime env keeps the actor off the idle workers Ray started at ``ray.init``: it
    waits ~1 s for a fresh worker set up through the runtime-env agent (two more processes importing Ray).
    The workers of an embedded instance inherit those vars (:func:`init_ray`), so there Tune's actors are
    created without them; on a cluster Tune's env stays."""
    cache = _tune_class_cache()
    saved = dict(cache.DEFAULT_ENV_VARS) if cache else {}
    if not embedded or not saved or any(os.environ.get(k) != v for k, v in saved.items()):
        yield
        return
    cache.DEFAULT_ENV_VARS.clear()
    try:
        yield
    finally:
        cache.DEFAULT_ENV_VARS.update(saved)


# ------------------------------------------------------------------------------------------ callback
class StudyCallback(tune.Callback):
    """Driver side: streams trial rows into the :class:`ResultStore`, draws the progress table."""

    def __init__(self, store: ResultStore | None, progress: ProgressTable | None, study: Study | None):
        self.store, self.progress, self.study = store, progress, study
        self.best: tuple | None = None
        self.replayed = 0
        self.running = 0
        self._ids: frozenset = frozenset()

    # Tune pickles the run config, callbacks included, into tuner.pkl. A restore installs fresh callbacks,
    # so the pickled one is an inert placeholder.
    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__(None, None, None)

    def _cell(self, trial):
        return cell_from_config(trial.config, self.study.grid)

    def _note_best(self, value, trial):
        if value is None or not math.isfinite(value):
            return
        if self.best is None or (value < self.best[0] if self.study.mode == "min" else value > self.best[0]):
            cell = self._cell(trial)
            self.best = (value, f"{variant_label(cell)} seed {cell['seed']}")

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.store is not None:
            self.store.start(trial.trial_id, self._cell(trial))

    def on_trial_recover(self, iteration, trials, trial, **info):
        if self.store is not None:  # retried after its worker died: it starts over
            self.store.restart(trial.trial_id, self._cell(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.store is None:
            return
        # NOTE: Tune lets callbacks edit the result in place: the rows never reach Tune's stored state.
        rows, tinfo, final = result.pop("rows", None), result.pop("trial_info", None), result.pop("final", None)
        if result.pop("replayed", False):
            self.replayed += 1
        elif rows is not None or tinfo:
            self.store.add_rows(trial.trial_id, self._cell(trial), rows, tinfo)
        if final is not None:
            self.store.finish(trial.trial_id, self._cell(trial), final)
        self._note_best(result.get(self.study.metric), trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.store is not None and not self.store.is_finished(trial.trial_id):
            # stopped by the scheduler before its own end
            self.store.finish(trial.trial_id, self._cell(trial), {"status": "budget", "stop_reason": "scheduler"})

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.store is not None and not self.store.is_finished(trial.trial_id):
            err = trial.get_error() or "the trial's actor failed"
            self.store.finish(trial.trial_id, self._cell(trial),
                              {"status": "failed", "stop_reason": "worker_died", "error": str(err)[-4000:]})

    def on_step_end(self, iteration, trials, **info):
        if self.store is None:
            return
        if len(trials) != len(self._ids):
            self._ids = frozenset(t.trial_id for t in trials)
            self.store.set_known(self._ids)
        self.running = sum(1 for t in trials if t.status == "RUNNING")
        if self.progress is not None:
            self.progress.update(self.store.counts(), self.running, self.best)

    def on_experiment_end(self, trials, **info):
        if self.store is not None:
            self.store.set_known(t.trial_id for t in trials)
            self.store.flush(force=True)


# -------------------------------------------------------------------------------------------- runner
def _cpu_problems(study: Study) -> dict:
    """The study's problems built once here, shipped to the trial actors through the object store, for
    trials that run on the CPU (a GPU trial builds its problem on its device)."""
    if study.resources["gpu"] > 0 and study.device != "cpu":
        return {}
    import torch

    from sqn_ray.problems import get_problem

    return {name: get_problem(name, dtype=getattr(torch, study.dtype), device="cpu") for name in study.problems}


def _read_state(out: Path) -> dict | None:
    path = out / STATE_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


def run_study(study: Study, out_dir: str | Path | None = None, *, address: str | None = None,
              resume: bool = False, progress: bool = True, num_cpus: int | None = None,
              num_gpus: int | None = None, stream: TextIO | None = None) -> StudyOutcome:
    """Run (or, with ``resume``, continue) ``study``, writing ``out_dir/iterations.parquet`` and
    ``out_dir/trials.parquet``. ``out_dir`` defaults to ``results/<study name>``."""
    t_begin = time.monotonic()
    out = Path(out_dir if out_dir is not None else DEFAULT_OUT_ROOT / study.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tune_root = out / TUNE_DIR
    exp_path = tune_root / EXPERIMENT
    state = _read_state(out)
    if state is not None and not resume:
        raise StudyError(f"{out} already holds study '{state['name']}' (started {state['started']}); "
                         f"rerun with --resume to continue it, or choose another --out")
    if state is not None and state["fingerprint"] != study.fingerprint:
        raise StudyError(f"{out} holds study '{state['name']}' run from a different study definition "
                         f"(fingerprint {state['fingerprint']}, this file gives {study.fingerprint}"
                         f"{', --smoke' if study.smoke else ''}); use another --out")

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # rows go to Parquet, not result.json
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tune's ResultGrid looks for result.json files we do not write (the rows are in our Parquet)
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

    restorable = state is not None and tune.Tuner.can_restore(str(exp_path))
    if not restorable:  # a fresh start (or an interruption before Tune wrote any state): nothing to keep
        shutil.rmtree(tune_root, ignore_errors=True)
        shutil.rmtree(out / ".parts", ignore_errors=True)
        (out / STATE_FILE).write_text(json.dumps({
            "name": study.name, "fingerprint": study.fingerprint, "smoke": study.smoke, "source": study.source,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    elif resume:
        print(f"resuming study '{study.name}' in {out}", file=stream or sys.stderr)

    store = ResultStore(out, study)
    recorded = store.load_parts() if restorable else {}
    table = ProgressTable(study.name, study.num_trials, study.metric, study.mode, stream=stream) if progress else None
    callback = StudyCallback(store, table, study)

    t0 = time.monotonic()
    connected = init_ray(address, num_cpus=num_cpus, num_gpus=num_gpus)
    ray_start = time.monotonic() - t0
    try:
        settings = {"budget": study.budget, "stop": study.stop, "dtype": study.dtype, "device": study.device,
                    "accuracy_every": study.accuracy_every, "report_interval": study.report_interval,
                    "lockstep": study.scheduler is not None, "cpus": study.resources["cpu"], "grid": study.grid}
        trainable = tune.with_resources(
            tune.with_parameters(StudyTrainable, settings=settings, recorded=recorded, problems=_cpu_problems(study)),
            {"cpu": study.resources["cpu"], "gpu": study.resources["gpu"]})
        if restorable:
            tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
            # The run config (with the callbacks of the first run) comes back from tuner.pkl; ours replace them.
            tuner._local_tuner.get_run_config().callbacks = [callback]  # noqa: SLF001 - pinned ray 2.60
        else:
            search, scheduler, num_samples = search_setup(study)
            tuner = tune.Tuner(
                trainable,
                param_space={},
                tune_config=tune.TuneConfig(
                    metric=study.metric, mode=study.mode, search_alg=search, scheduler=scheduler,
                    num_samples=num_samples, reuse_actors=True, max_concurrent_trials=study.max_concurrent_trials,
                    trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname),
                run_config=tune.RunConfig(
                    name=EXPERIMENT, storage_path=str(tune_root), verbose=0, callbacks=[callback],
                    failure_config=tune.FailureConfig(max_failures=study.max_failures),
                    checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=0, checkpoint_at_end=False)),
            )
        store.start_writer()
        with _plain_tune_actors(connected == "embedded"), pending_trials(study):
            tuner.fit()
    finally:
        store.stop_writer()
        store.flush(force=True)
        if connected:
            shutdown_ray()
    counts = store.counts()
    done = sum(counts.get(s, 0) for s in ("solved", "budget", "diverged", "failed"))
    if table is not None:
        table.update(counts, 0, callback.best, force=True)
    return StudyOutcome(out_dir=out, total=study.num_trials, counts=counts, interrupted=done < study.num_trials,
                        wall_time=time.monotonic() - t_begin, ray_start_time=ray_start,
                        iterations_path=store.iterations_path, trials_path=store.trials_path,
                        resumed=restorable, replayed=callback.replayed)
