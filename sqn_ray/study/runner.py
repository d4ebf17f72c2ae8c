"""Run a validated :class:`~sqn_ray.study.spec.StudySpec` on Ray Tune and write its Parquet results.

:func:`run_study` is what ``sqn-ray study run`` calls. Without an address it starts an embedded local Ray
(no dashboard, a small object store, reachable on loopback only and with token auth: see
:mod:`sqn_ray.ray_session`) and stops it at the end; with ``address`` (or RAY_ADDRESS) it joins an existing
cluster and only disconnects. Trials run through
``ray.tune.Tuner``: a grid (or random/Optuna search, optionally ASHA) over :class:`StudyTrainable` actors
sized by the study's resources, actors reused across trials. Results stream into ``DIR/iterations.parquet``
and ``DIR/trials.parquet`` (:mod:`sqn_ray.study.results`); Tune's own state lives in ``DIR/.tune`` and lets
``resume=True`` continue an interrupted study (Ctrl-C, or kill -9 of the driver): finished trials replay
from their recorded results, unfinished ones start over, no row is duplicated or lost. The folder's own
parts are the source of truth: when Tune's state is damaged, lost, or counts as finished a trial whose part
is gone, Tune's side is rebuilt from them (the same trial ids; see :mod:`sqn_ray.study.outdir` for the
folder's lock and checks, :mod:`sqn_ray.study.search` for how trials are generated).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, TextIO

from ray import tune

from .. import ray_session
from .progress import ProgressTable
from .results import LIVE, PARTS, ResultStore, variant_label
from .outdir import STATE_FILE, StudyError, open_output_folder, read_state, tune_trial_statuses, write_state
from .search import OptunaSpace, pending_trials, search_setup, trial_id_prefix  # noqa: F401 - OptunaSpace: its old home
from .loggers import TENSORBOARD_DIR, logger_callbacks
from .spec import WORKERS_OPTION, StudySpec, StudySpecError
from .trainable import StudyTrainable, cell_from_config, trial_dirname

__all__ = ["run_study", "StudyError", "StudyOutcome", "init_ray", "shutdown_ray", "DEFAULT_OUT_ROOT"]

DEFAULT_OUT_ROOT = Path("results")
TUNE_DIR = ".tune"
EXPERIMENT = "study"


@dataclass
class StudyOutcome:
    """What :func:`run_study` returns: where the results are and how the trials ended.

    Attributes:
        out_dir: the study's output folder (absolute).
        total: the number of trials the study has (``study.num_trials``).
        counts: trial status -> number of trials: the final statuses ``"solved"``, ``"budget"``,
            ``"diverged"``, ``"failed"``, and ``"running"`` for trials not finished.
        interrupted: True when fewer than ``total`` trials finished (e.g. Ctrl-C); ``resume=True`` continues.
        wall_time: seconds of the whole call, Ray's start included.
        ray_start_time: seconds spent connecting to or starting Ray.
        iterations_path, trials_path: ``out_dir/iterations.parquet`` and ``out_dir/trials.parquet``.
        resumed: whether the call continued a study the folder already held.
        replayed: trials finished earlier whose results were replayed from the folder, not rerun.
        extra: free-form additions: ``bytes_written``, the bytes the results store wrote by kind (segments,
            parts, live trials.parquet, final files).
        done: (property) the trials with a final status.
        exit_code: (property) 130 when interrupted, else 0: the CLI's exit status.
    """

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


#: Tune's experiment state is ~5 KB a trial, written whole (and copied into DIR/.tune) at every snapshot, every
#: 10 s by default: on a 1,200-trial study that is gigabytes, 100x the results. The folder's parts are the
#: source of truth (finished trials replay from them, a stale Tune state is merely older: a resumed trial may
#: restart from an older checkpoint), so the snapshots are spaced with the study's size: 60 s, plus 1 s a trial,
#: at most 30 min (Tune also snapshots at the end, and after a trial's every second checkpoint).
SNAPSHOT_SECONDS = (60.0, 1.0, 1800.0)


@contextlib.contextmanager
def _tune_snapshots(study: StudySpec):
    """TUNE_GLOBAL_CHECKPOINT_S for this run (:data:`SNAPSHOT_SECONDS`), unless the user set it."""
    key = "TUNE_GLOBAL_CHECKPOINT_S"
    if key in os.environ:
        yield
        return
    base, per_trial, cap = SNAPSHOT_SECONDS
    os.environ[key] = f"{min(cap, base + per_trial * study.num_trials):g}"
    try:
        yield
    finally:
        os.environ.pop(key, None)


# ------------------------------------------------------------------------------------------ callback
class StudyCallback(tune.Callback):
    """Driver side: streams trial rows into the :class:`ResultStore`, draws the progress table."""

    def __init__(self, store: ResultStore | None, progress: ProgressTable | None, study: StudySpec | None,
                 filter_known: bool = False):
        self.store, self.progress, self.study = store, progress, study
        # a restored Tune experiment may regenerate trials it had not saved: then only the trials Tune knows
        # are written (a new Tuner knows every trial by the end, and a rebuilt one must not hide old parts)
        self.filter_known = filter_known
        self.best: tuple | None = None
        self.replayed = 0
        self.running = 0
        self.events = 0  # trial starts and results seen (a restored experiment that fails before any: rebuilt)
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
        self.events += 1
        if self.store is not None:
            self.store.start(trial.trial_id, self._cell(trial))

    def on_trial_recover(self, iteration, trials, trial, **info):
        if self.store is not None:  # retried after its worker died: it starts over
            self.store.restart(trial.trial_id, self._cell(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.events += 1
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

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if self.store is not None:  # its rows up to the checkpoint are written before Tune's state names it
            self.store.checkpointed(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.store is not None and not self.store.is_finished(trial.trial_id):
            # stopped by the scheduler before its own end
            self.store.finish(trial.trial_id, self._cell(trial), {"status": "budget", "stop_reason": "scheduler"})

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.store is not None and not self.store.is_finished(trial.trial_id):
            known = self.store.trials.get(trial.trial_id)
            ray_text = _tune_error_text(trial)
            text = (unimportable_text(ray_text, self.study.problems)
                    or worker_death_text(ray_text, known.info if known is not None else {}))
            self.store.finish(trial.trial_id, self._cell(trial),
                              {"status": "failed", "stop_reason": "worker_died", "error": text})

    def on_step_end(self, iteration, trials, **info):
        if self.store is None:
            return
        if self.filter_known and len(trials) != len(self._ids):
            self._ids = frozenset(t.trial_id for t in trials)
            self.store.set_known(self._ids)
        self.running = sum(1 for t in trials if t.status == "RUNNING")
        if self.progress is not None:
            self.progress.update(self.store.counts(), self.running, self.best)

    def on_experiment_end(self, trials, **info):
        if self.store is not None:
            if self.filter_known:
                self.store.set_known(t.trial_id for t in trials)
            self.store.flush(force=True)


def _tune_error_text(trial) -> str:
    """The text of the trial's last error as Tune wrote it (its local error file, else its storage copy). Tune
    appends every failure of a trial to one file, each under a ``Failure # N`` line: only the last one is this
    error (an earlier one, retried or resumed from, would otherwise be reported again)."""
    try:
        text = Path(trial.error_file).read_text()
    except (OSError, TypeError, AttributeError):
        try:
            text = str(trial.get_error() or "")
        except Exception:  # noqa: BLE001 - only a message is at stake
            return ""
    return last_failure(text)[-20000:]


def last_failure(text: str) -> str:
    """The last of the failures in a Tune error file's text (all of it when it has no ``Failure # N`` line)."""
    heads = list(re.finditer(r"^Failure # \d+.*$", text, flags=re.M))
    return text[heads[-1].end():].lstrip("\n") if heads else text


def unimportable_text(ray_text: str, problems) -> str | None:
    """When the trial's actor died because its node could not import a module (the driver could: it pickled the
    problem), what to do about it, naming the problem plugin the module belongs to; None for any other error.
    The classic case: a plugin installed where the study was started but not on the cluster's nodes."""
    m = re.search(r"No module named '([\w.]+)'", ray_text)
    if m is None:
        return None
    module = m.group(1)
    ip = re.search(r"\bip: ([0-9a-fA-F.:]+)", ray_text)
    where = f"the node{f' at {ip.group(1)}' if ip else ''} running this trial"
    from sqn_ray.problems import PROBLEMS
    from sqn_ray.problems.plugins import describe, plugin_entry_points

    for name, ep in plugin_entry_points(PROBLEMS).items():
        if name in problems and ep.value.split(":")[0].split(".")[0] == module.split(".")[0]:
            return (f"{where} cannot import module {module!r} of problem {name!r} (plugin {describe(ep)}): install "
                    "the plugin on every node (cluster.yaml's setup_commands), then resume the study")
    return (f"{where} cannot import module {module!r}, which the driver could (ModuleNotFoundError): install it on "
            "every node (cluster.yaml's setup_commands), then resume the study")


def worker_death_text(ray_text: str, info: dict) -> str:
    """What died, from Ray's error text and the trial's own record of where it ran: the process (pid), its
    node (id, address, host), how it ended as Ray saw it, and what that usually means."""
    def find(pattern):
        m = re.search(pattern, ray_text)
        return m.group(1).strip() if m else None

    pid = find(r"\bpid: (\d+)") or find(r"Worker PID: (\d+)") or info.get("pid")
    ip = find(r"\bip: ([0-9a-fA-F.:]+)") or find(r"Worker IP address: (\S+)") or info.get("node_ip")
    node = info.get("node_id") or find(r"Node ID: ([0-9a-f]+)")
    exit_type, detail = find(r"Worker exit type: (\w+)"), find(r"Worker exit detail: (.*?\.)(?: |$)")
    where = ", ".join(x for x in (f"node {node[:12]}" if node else None, ip,
                                   f"host {info['hostname']}" if info.get("hostname") else None) if x)
    head = f"the trial's worker process{f' (pid {pid})' if pid else ''} died{f' on {where}' if where else ''}"
    if "NodeDiedError" in ray_text or "node died" in ray_text.lower() or "node has died" in ray_text.lower():
        return f"{head}: its whole node died (lost, or pre-empted)"
    if exit_type == "SYSTEM_ERROR" and detail and "connection error" in detail:
        cause = ("it ended without a word: killed by a signal that cannot be caught (SIGKILL: kill -9, the OOM "
                 "killer, a pre-empted machine) or crashed (SIGSEGV)")
        return f"{head}: {cause}; Ray: {exit_type}: {detail}"
    if exit_type:
        return f"{head}: Ray: {exit_type}{': ' + detail if detail else ''}"
    last = " ".join(ray_text.strip().splitlines()[-1:]) if ray_text.strip() else "no error text from Ray"
    return f"{head}: {last[:1000]}"


# -------------------------------------------------------------------------------------------- runner
def _cpu_problems(study: StudySpec, problems: Mapping | None = None) -> dict:
    """The study's problems built once here, shipped to the trial actors through the object store, for
    trials that run on the CPU (a GPU trial builds its problem on its device, from the same ``problems``)."""
    if study.resources["gpu"] > 0 and study.device != "cpu":
        return {}
    import torch

    from sqn_ray.problems import get_problem

    return {name: get_problem(name, dtype=getattr(torch, study.dtype), device="cpu", problems=problems)
            for name in study.problems}


def _as_study(study: StudySpec | Mapping | str | Path, problems: Mapping | None) -> StudySpec:
    """A validated study from a StudySpec, a mapping (a notebook's study) or a study file's path; the problems
    it names must be the library's, installed plugins' or in ``problems``."""
    from sqn_ray.problems import problem_names

    from .spec import load_study_spec, parse_study

    if isinstance(study, StudySpec):
        known = problem_names(problems)
        unknown = [p for p in study.problems if p not in known]
        if unknown:
            raise StudySpecError(f"{study.source}: problems: {unknown} are not known here; valid names: "
                                 f"{', '.join(known)} (pass a notebook's problems as run_study(..., problems=...))",
                                 option="problems", value=unknown, allowed=known)
        return study
    if isinstance(study, Mapping):
        return parse_study(study, source="<study>", problems=problems)
    if isinstance(study, (str, Path)):
        return load_study_spec(study, problems=problems)
    raise TypeError(f"study must be a StudySpec, a mapping or a study file's path, got {type(study).__name__}")


def run_study(study: StudySpec | Mapping | str | Path, out_dir: str | Path | None = None, *,
              address: str | None = None, resume: bool = False, progress: bool = True, num_cpus: int | None = None,
              num_gpus: int | None = None, stream: TextIO | None = None,
              problems: Mapping | None = None) -> StudyOutcome:
    """Run (or, with ``resume``, continue) ``study`` on Ray Tune, writing ``out_dir/iterations.parquet`` and
    ``out_dir/trials.parquet``. What ``sqn-ray study run`` calls.

    Args:
        study: the validated study (:func:`~sqn_ray.study.spec.load_study_spec`), or a study as a mapping (what
            a study file holds, e.g. written in a notebook) or a study file's path, validated here.
        out_dir: the output folder, created if needed and locked for this driver; default
            ``results/<study name>`` (relative to the working directory).
        address: a Ray cluster to join (or the RAY_ADDRESS environment variable); None starts an embedded
            local Ray for the call and stops it at the end. An already initialised Ray is used and left alone.
        resume: continue the study the folder holds (finished trials replay from their results, unfinished
            ones start over); without it a folder holding a study is refused.
        progress: draw the live progress table.
        num_cpus, num_gpus: the resources of an embedded Ray (None: Ray's own detection).
        stream: where the progress table and notes go (default ``sys.stderr``).
        problems: name -> problem or recipe (e.g. :class:`~sqn_ray.problems.ModuleProblem`) defined by the
            caller, which the study may name; shipped to the trials (it must pickle, as cloudpickle does a
            notebook's classes and lambdas).

    Returns:
        A :class:`StudyOutcome`: the folder, the Parquet paths, the trial counts by status, whether it was
        interrupted, and timings. A study that Tune stops early (Ctrl-C) returns with ``interrupted`` True.

    Raises:
        StudyError: (a RuntimeError; one line, before Ray starts) when the folder cannot be used: another
            driver holds it, it is a file or cannot be created or written, it holds a study and ``resume`` is
            False, it holds a different study definition (another fingerprint), or it holds results without
            their study record. Errors of Ray or Tune themselves propagate as they are.
    """
    study = _as_study(study, problems)
    out = Path(out_dir if out_dir is not None else DEFAULT_OUT_ROOT / study.name).resolve()
    run = _run_tuned if study.tuning is not None else _run_in
    with open_output_folder(out):
        return run(out, study, address=address, resume=resume, progress=progress, num_cpus=num_cpus,
                   num_gpus=num_gpus, stream=stream, problems=dict(problems or {}))


def _held_study(out: Path, study: StudySpec, resume: bool) -> dict | None:
    """The record of the study ``out`` holds (None: none), after checking that this run may use the folder:
    resuming it, and from the same definition (its fingerprint)."""
    state = read_state(out)
    if state is not None and not resume:
        raise StudyError(f"{out} already holds study '{state['name']}' (started {state.get('started', '?')}); "
                         f"rerun with --resume to continue it, or choose another --out")
    if state is not None and state["fingerprint"] != study.fingerprint:
        raise StudyError(f"{out} holds study '{state['name']}' run from a different study definition "
                         f"(fingerprint {state['fingerprint']}, this file gives {study.fingerprint}"
                         f"{', --smoke' if study.smoke else ''}); use another --out")
    return state


def _run_tuned(out: Path, study: StudySpec, *, address, resume, progress, num_cpus, num_gpus, stream,
               problems: dict) -> StudyOutcome:
    """A tuned study (:mod:`sqn_ray.study.tuning`): the tuning stage, the choice, the evaluation stage, each an
    ordinary study in its subfolder on one Ray, then both stages' rows into ``out``'s two files."""
    import pyarrow.parquet as pq

    from . import tuning as T
    from .results import study_metadata

    t_begin = time.monotonic()
    say = stream or sys.stderr
    state = _held_study(out, study, resume)
    if state is None:
        write_state(out, study)
    tuning = T.stage_spec(study, "tuning")
    stages: dict[str, StudyOutcome] = {}
    t0 = time.monotonic()
    connected = init_ray(address, num_cpus=num_cpus, num_gpus=num_gpus)
    ray_start = time.monotonic() - t0
    try:
        def run_stage(stage: StudySpec, folder: str) -> StudyOutcome:
            where = out / folder
            print(f"stage {stage.stage} of study '{study.name}': {stage.num_trials} trials in {where}", file=say)
            return _run_in(where, stage, address=None, resume=read_state(where) is not None and state is not None,
                           progress=progress, num_cpus=None, num_gpus=None, stream=stream, problems=problems,
                           embedded=connected == "embedded")

        stages["tuning"] = first = run_stage(tuning, T.TUNING_DIR)
        if not first.interrupted:
            config_scores = T.scores(pq.read_table(first.trials_path), tuning.metric, tuning.mode,
                                     tuning.configurations, study.tuning.get("separate", ()))
            record = T.record(study, tuning.configurations, config_scores, T.choose(config_scores, tuning.mode))
            T.write_record(out, record)
            picked = T.chosen_configurations(record)
            stages["evaluation"] = run_stage(T.stage_spec(study, "evaluation", picked), T.EVALUATION_DIR)
    finally:
        if connected:
            shutdown_ray()
    record = T.read_record(out)
    meta_extra = {b"sqn_ray.tuning": json.dumps(record).encode()} if record else {}
    paths = {}
    for kind in ("iterations", "trials"):
        sources = [o.out_dir / f"{kind}.parquet" for o in stages.values() if (o.out_dir / f"{kind}.parquet").is_file()]
        target = out / f"{kind}.parquet"
        if sources:
            stage_meta = pq.read_schema(sources[-1]).metadata or {}
            T.combine(target, sources, {**stage_meta, **study_metadata(study), **meta_extra})
        paths[kind] = target
    counts: dict[str, int] = {}
    for o in stages.values():
        for k, v in o.counts.items():
            counts[k] = counts.get(k, 0) + v
    done = sum(o.done for o in stages.values())
    written: dict[str, int] = {}
    for o in stages.values():
        for k, v in o.extra.get("bytes_written", {}).items():
            written[k] = written.get(k, 0) + v
    return StudyOutcome(out_dir=out, total=study.num_trials, counts=counts, interrupted=done < study.num_trials,
                        wall_time=time.monotonic() - t_begin, ray_start_time=ray_start,
                        iterations_path=paths["iterations"], trials_path=paths["trials"], resumed=state is not None,
                        replayed=sum(o.replayed for o in stages.values()),
                        extra={"bytes_written": written, "stages": stages, "tuning": record})


def _run_in(out: Path, study: StudySpec, *, address, resume, progress, num_cpus, num_gpus, stream,
            problems: dict, embedded: bool | None = None) -> StudyOutcome:
    t_begin = time.monotonic()
    say = stream or sys.stderr
    tune_root = out / TUNE_DIR
    exp_path = tune_root / EXPERIMENT
    state = _held_study(out, study, resume)

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # rows go to Parquet, not result.json
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # with num_to_keep set, Tune snapshots its experiment state after a trial's checkpoints and warns each time
    # it does so often; short checkpoint_every make that the expected case, not a bottleneck worth a warning
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tune's ResultGrid looks for result.json files we do not write (the rows are in our Parquet)
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

    if state is None and (any((out / PARTS).glob("*.parquet")) or any((out / PARTS / LIVE).glob("*.parquet"))
                          or (out / "iterations.parquet").exists()):
        raise StudyError(f"{out} holds a study's results but not its record {STATE_FILE} (deleted?): starting over "
                         "would delete them; restore the file, or move the results away, or choose another --out")
    # the problems are built before anything is written or Ray starts: a problem that cannot be built (a broken
    # plugin, missing data) leaves the folder as it was, and the error is one line
    cpu_problems = _cpu_problems(study, problems)
    store = ResultStore(out, study)
    if state is None:  # a new study: nothing of an earlier one is kept
        shutil.rmtree(tune_root, ignore_errors=True)
        shutil.rmtree(store.parts_dir, ignore_errors=True)
        shutil.rmtree(out / TENSORBOARD_DIR, ignore_errors=True)  # an earlier study's event files
        store.live_dir.mkdir(parents=True)
        write_state(out, study)
        recorded, restore = {}, False
    else:
        print(f"resuming study '{study.name}' in {out}", file=say)
        recorded = store.load_parts()  # the source of truth; damaged parts are quarantined, their trials rerun
        restore, why = _tune_state_usable(exp_path, recorded)
        if not restore:
            quiet = not tune_root.exists() or (not recorded and why == "Tune's experiment state is missing")
            recorded = _rebuild(out, study, store, None, None if quiet else why, say)
    table = ProgressTable(study.name, study.num_trials, study.metric, study.mode, stream=stream) if progress else None
    callback = StudyCallback(store, table, study, filter_known=restore)

    t0 = time.monotonic()
    connected = init_ray(address, num_cpus=num_cpus, num_gpus=num_gpus)
    ray_start = time.monotonic() - t0
    failed = True
    try:
        settings = {"budget": study.budget, "stop": study.stop, "dtype": study.dtype, "device": study.device,
                    "accuracy_every": study.accuracy_every, "report_interval": study.report_interval,
                    "lockstep": study.scheduler is not None, "cpus": study.resources["cpu"],
                    "gpus": study.resources["gpu"], "grid": study.grid,
                    "checkpoint_every": study.checkpoint_every,
                    # checkpoints taken under this driver continue whatever rows it kept; an earlier driver's
                    # only up to the rows the folder holds (durable)
                    "session": uuid.uuid4().hex}
        trainable = tune.with_resources(
            tune.with_parameters(StudyTrainable, settings=settings, recorded=recorded, durable=store.durable_rows(),
                                 problems=cpu_problems, recipes=problems),
            _resources_of(study))
        tuner = None
        if restore:
            try:
                tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_unfinished=True,
                                           resume_errored=True)
                # The run config (with the first run's callbacks) comes back from tuner.pkl; ours replace them.
                tuner._local_tuner.get_run_config().callbacks = [  # noqa: SLF001 - pinned ray 2.60
                    callback, *logger_callbacks(study, out)]  # the loggers after ours: they never see the rows
            except Exception as e:  # noqa: BLE001 - any damage Tune's own reader finds: rebuild from the parts
                _rebuild(out, study, store, callback, f"Tune could not restore its state ({_brief(e)})", say)
                tuner = None
        if tuner is None:
            tuner = _new_tuner(study, trainable, tune_root, callback)
        store.start_writer()
        # embedded: whether the Ray in use is this process's own (a tuned study's stages share the one it started)
        plain = connected == "embedded" if embedded is None else embedded
        with _plain_tune_actors(plain), pending_trials(study), _tune_snapshots(study):
            try:
                tuner.fit()
            except Exception as e:  # noqa: BLE001 - Tune's restored state failed it before any trial ran
                if not restore or callback.events:
                    raise
                _rebuild(out, study, store, callback, f"Tune could not resume ({_brief(e)})", say)
                tuner = _new_tuner(study, trainable, tune_root, callback)
                tuner.fit()
        failed = False
    finally:
        try:
            store.stop_writer()
            if failed:
                store.set_known(None)  # never fewer trials than the folder held: every trial the store has
            store.flush(force=True)
        finally:
            if connected:
                shutdown_ray()
    counts = store.counts()
    done = sum(counts.get(s, 0) for s in ("solved", "budget", "diverged", "failed"))
    if table is not None:
        table.update(counts, 0, callback.best, force=True)
    return StudyOutcome(out_dir=out, total=study.num_trials, counts=counts, interrupted=done < study.num_trials,
                        wall_time=time.monotonic() - t_begin, ray_start_time=ray_start,
                        iterations_path=store.iterations_path, trials_path=store.trials_path,
                        resumed=state is not None, replayed=callback.replayed,
                        extra={"bytes_written": dict(store.bytes_written)})


def _tune_state_usable(experiment: Path, recorded: dict) -> tuple[bool, str]:
    """Whether Tune's saved experiment can be restored as it is: readable, and every trial it counts as
    finished has its results part (Tune never reruns a trial it finished, so a lost part means rebuilding)."""
    statuses, why = tune_trial_statuses(experiment)
    if statuses is None:
        return False, why
    lost = sorted(t for t, status in statuses.items() if status == "TERMINATED" and t not in recorded)
    if lost:
        return False, (f"{len(lost)} trial(s) Tune counts as finished have no readable results part "
                       f"({', '.join(lost[:3])}{', ...' if len(lost) > 3 else ''}); they run again")
    return True, ""


def _brief(e: BaseException) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= 200 else text[:200] + "..."


def _rebuild(out: Path, study: StudySpec, store: ResultStore, callback, why: str | None, say) -> dict[str, dict]:
    """Forget Tune's state: a new Tuner runs the study again (the same trial ids; finished trials replay from
    their parts, the others run). Says ``why`` in one line; returns the parts it can match ({trial_id: ...})."""
    keep = store.keep_parts(lambda trial_id: trial_id.startswith(trial_id_prefix(study) + "_"))
    if why:
        print(f"rebuilding Tune's side of the study from the {len(keep)} finished trial(s) in "
              f"{store.parts_dir.name}/: {why}", file=say)
    shutil.rmtree(out / TUNE_DIR, ignore_errors=True)
    if callback is not None:
        callback.filter_known = False
    store.set_known(None)
    return keep


def _resources_of(study: StudySpec):
    """Tune's per-trial resources: the study's ``{"cpu", "gpu"}``, or, in a study with data-parallel trials, a
    function of the trial's config (a k-worker trial's own actor takes almost nothing; Ray Train reserves its
    workers, :func:`sqn_ray.study.data_parallel.trial_resources`)."""
    resources = {"cpu": study.resources["cpu"], "gpu": study.resources["gpu"]}
    if not study.data_parallel:
        return resources
    grid = study.grid

    def per_trial(config):
        from .data_parallel import trial_resources

        workers = int(cell_from_config(config, grid)["options"].get(WORKERS_OPTION, 1))
        return trial_resources(resources, workers)

    return per_trial


def _concurrency(study: StudySpec) -> int | None:
    """The study's cap on concurrent trials; with data-parallel trials, at most as many as the cluster has
    workers' worth of resources (a k-worker trial's own actor takes almost nothing, so without a cap Tune would
    start every trial's actor and worker-group request at once, each waiting for its workers)."""
    if study.max_concurrent_trials is not None or not study.data_parallel:
        return study.max_concurrent_trials
    import ray

    total = ray.cluster_resources()
    caps = [total.get("CPU", 1.0) / study.resources["cpu"]]
    if study.resources["gpu"] > 0:
        caps.append(total.get("GPU", 0.0) / study.resources["gpu"])
    return max(1, int(min(caps) + 1e-9))


def _new_tuner(study: StudySpec, trainable, tune_root: Path, callback) -> tune.Tuner:
    search, scheduler, num_samples = search_setup(study, _concurrency(study))
    # A finished trial's actor waits, holding its resources, for a next trial of the same shape; a data-parallel
    # trial's workers are Ray Train's, outside Tune's view, so a cached actor would hold the CPUs they wait for
    reuse = not study.data_parallel
    return tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(
            metric=study.metric, mode=study.mode, search_alg=search, scheduler=scheduler,
            num_samples=num_samples, reuse_actors=reuse,
            trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=EXPERIMENT, storage_path=str(tune_root), verbose=0,
            callbacks=[callback, *logger_callbacks(study, tune_root.parent)],  # the loggers after ours: no rows
            failure_config=tune.FailureConfig(max_failures=study.max_failures),
            # the trials checkpoint themselves (should_checkpoint, every checkpoint_every seconds); the newest is
            # all a retried or resumed trial needs
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=0, checkpoint_at_end=False, num_to_keep=2)),
    )
