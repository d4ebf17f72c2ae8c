"""How a study's trials are generated for Ray Tune: its grid cells one at a time, with stable trial ids.

* :class:`CellSearcher` (grid and random search) hands Tune one config per trial, ``{"cell": index,
  "draw": {option: value}}``: the index of a :class:`~sqn_ray.study.spec.CellGrid` cell (computed from the
  index, never built as a list) and, for random search, the cell's method's ranges drawn from one seeded
  generator. Tune's own ``grid_search`` over a list of n cells deep-copies the list for every variant,
  O(n²): 4,000 cells took 6 s to expand, 100,000 would take hours before the first trial.
* :class:`StudyTrialGenerator` wraps any searcher (Optuna's too) and names trials ``<prefix>_<n>`` (n the
  trial's sequence number, the prefix from the study's fingerprint): the same study generates the same trial
  ids, so results kept in the output folder can be matched to the trials of a Tune experiment rebuilt from
  scratch when Tune's own state is lost or damaged.
* :class:`OptunaSpace`: Optuna's define-by-run space (method, then only that method's options).
"""
from __future__ import annotations

import contextlib
import os
import pickle
from typing import Any
from unittest import mock

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher

from .spec import Distribution, StudySpec

__all__ = ["CellSearcher", "StudyTrialGenerator", "OptunaSpace", "search_setup", "trial_id_prefix", "pending_trials"]

PENDING_VAR = "TUNE_MAX_PENDING_TRIALS_PG"


def trial_id_prefix(study: StudySpec) -> str:
    """The trial-id prefix of a study: the same for every run of the same definition."""
    return study.fingerprint[:6]


class CellSearcher(Searcher):
    """Grid and random search over a study's cells: ``num_samples`` passes over the grid, each cell's
    ranges drawn afresh in every pass (random search) from ``numpy.random.default_rng(search.seed)``."""

    def __init__(self, study: StudySpec):
        super().__init__(metric=study.metric, mode=study.mode)
        self.grid = study.grid
        self.ranges = {m: study.ranges(m) for m in study.methods}
        self.total = len(self.grid) * int(study.search["num_samples"])
        self.rng = np.random.default_rng(study.search["seed"])
        self.next = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is the study's own; Tune's param_space is empty

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if self.next >= self.total:
            return Searcher.FINISHED
        index = self.next % len(self.grid)
        self.next += 1
        config: dict[str, Any] = {"cell": index}
        ranges = self.ranges[self.grid[index]["method"]]
        if ranges:
            config["draw"] = {opt: dist.sample(self.rng) for opt, dist in ranges.items()}
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # a grid does not learn from results

    def get_state(self) -> dict:
        return {"next": self.next, "rng": self.rng.bit_generator.state}

    def set_state(self, state: dict) -> None:
        self.next = state["next"]
        self.rng.bit_generator.state = state["rng"]

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.get_state(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.set_state(pickle.load(fh))  # noqa: S301 - Tune's own checkpoint of this searcher


class StudyTrialGenerator(SearchGenerator):
    """Tune's :class:`SearchGenerator`, with trial ids ``<prefix>_<sequence number>`` instead of random ones
    (the sequence number is part of the generator's saved state, so a restored experiment goes on counting)."""

    def __init__(self, searcher: Searcher, prefix: str):
        super().__init__(searcher)
        self.prefix = prefix

    def next_trial_id(self) -> str:
        return f"{self.prefix}_{self._counter:05d}"

    def create_trial_if_possible(self, experiment_spec: dict):
        trial_id = self.next_trial_id()
        # SearchGenerator draws the id from Trial.generate_id right before asking the searcher: this id instead
        with mock.patch.object(Trial, "generate_id", classmethod(lambda cls: trial_id)):
            return super().create_trial_if_possible(experiment_spec)


class OptunaSpace:
    """Define-by-run Optuna space: method (categorical if several), then only that method's options."""

    def __init__(self, study: StudySpec):
        self.problem = study.problems[0]
        self.methods = {m: dict(axes) for m, axes in study.methods.items()}
        self.seeds = list(study.seeds)

    def __call__(self, trial):
        methods = list(self.methods)
        method = trial.suggest_categorical("method", methods) if len(methods) > 1 else methods[0]
        seed = trial.suggest_categorical("seed", self.seeds) if len(self.seeds) > 1 else self.seeds[0]
        const = {"problem": self.problem, "seed": seed}
        if len(methods) == 1:
            const["method"] = method
        for opt, axis in self.methods[method].items():
            name = f"{method}.{opt}"
            if isinstance(axis, Distribution):
                axis.suggest(trial, name)
            elif len(axis) > 1:
                trial.suggest_categorical(name, list(axis))
            else:
                const[name] = axis[0]
        return const


@contextlib.contextmanager
def pending_trials(study: StudySpec):
    """As many trials queued ahead as Tune queues for its own grid search (it allows a custom searcher one
    pending trial, which leaves actors idle between trials): max(200, 1.1 × the cluster's CPUs), as
    ``TUNE_MAX_PENDING_TRIALS_PG`` would set it. Optuna keeps Tune's default (it learns from each result);
    a user's own setting wins."""
    if study.search["algorithm"] == "optuna" or study.search["max_concurrent"] or PENDING_VAR in os.environ:
        yield
        return
    import ray

    os.environ[PENDING_VAR] = str(max(200, int(ray.cluster_resources().get("CPU", 1.0) * 1.1)))
    try:
        yield
    finally:
        os.environ.pop(PENDING_VAR, None)


def search_setup(study: StudySpec, max_concurrent: int | None = None):
    """(search algorithm, scheduler, num_samples) for the study's Tuner (its param_space stays empty).

    ``max_concurrent``: a cap on running trials (Tune ignores its own ``max_concurrent_trials`` with a search
    generator like this one, so the cap is a :class:`ConcurrencyLimiter`); ``search.max_concurrent`` wins."""
    from ray.tune.schedulers import ASHAScheduler

    scheduler = None
    if study.scheduler:
        sch = study.scheduler
        scheduler = ASHAScheduler(time_attr=sch["time_attr"], max_t=sch["max_t"], grace_period=sch["grace_period"],
                                  reduction_factor=sch["reduction_factor"], brackets=sch["brackets"])
    if study.search["algorithm"] == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(space=OptunaSpace(study), metric=study.metric, mode=study.mode,
                                seed=study.search["seed"])
    else:
        searcher = CellSearcher(study)
    limit = study.search["max_concurrent"] or max_concurrent
    if limit:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=int(limit))
    return StudyTrialGenerator(searcher, trial_id_prefix(study)), scheduler, study.num_trials
