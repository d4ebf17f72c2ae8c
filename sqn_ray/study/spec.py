"""Study files: a declarative study over problems × methods × option grids × seeds.

A study file is YAML, loaded with a :class:`yaml.SafeLoader` (nothing in it is executed) and validated
completely before Ray starts. Every error is a :class:`StudySpecError` naming the file, the field path and
the allowed values, e.g. ``studies/x.yaml: methods.s-lsr1.memroy: unknown option; allowed: b0, memory, ...``.

Layout (every key but ``problems`` and ``methods`` is optional)::

    name: sensitivity                 # defaults to the file stem
    description: S-LSR1 and S-LBFGS over m × r × Option I/II
    problems: [toy-small, toy-medium]
    methods:                          # method -> its option axes (or a plain list of method names)
      s-lsr1: {memory: [4, 16], radius: [1.0e-3, 1.0], sampling: [hvp, grad-diff]}
      lbfgs: {memory: 16}             # a scalar is one fixed value, a list is a grid axis
    options: {memory: [4, 16]}        # shared axes, applied only to the methods that take the option
    seeds: 10                         # 10 -> seeds 0..9, or an explicit list
    budget: {iterations: 1000, grad_equivalents: null, wall_time: 60}
    stop: {accuracy: target}          # 'target' = the problem's target accuracy; or a number; or loss: 1e-4
    resources: {cpu: 1, gpu: 0}       # per trial; fractional gpu packs trials onto one device
                                      # {workers: 2, cpu: 1, gpu: 1}: data parallel, cpu/gpu per worker;
                                      # workers: [1, 2] sweeps it (a 'workers' column in the results)
    metric: {name: best_loss, mode: min}   # what Tune's search/scheduler and the ranking use
    search: {algorithm: grid, num_samples: 1, seed: 0}   # grid | random | optuna
    scheduler: {type: asha, time_attr: grad_equivalents, grace_period: 50, reduction_factor: 3}
    dtype: float64                    # or float32
    device: auto                      # cuda:0 when Ray gives the trial a GPU; cpu / cuda to insist
    accuracy_every: 1                 # evaluate training accuracy every k-th iterate (and at the end)
    max_failures: 2                   # retries of a trial whose worker died (an exception is not retried)
    max_concurrent_trials: null       # default: as many as the resources allow
    report_interval: 1.0              # seconds between a trial's reports (0: every iteration)
    checkpoint_every: 60              # seconds between a trial's checkpoints (null or 0: never)
    loggers: [tensorboard]            # also log to TensorBoard / MLflow / W&B (default: none; see below)
    tuning: {trials: 8, seeds: 2, metric: best_loss}     # a tuned study (below); default: none
    smoke: {seeds: 1, budget: {iterations: 10}}          # overrides applied by --smoke

Options that do not apply to a method are never crossed into it (``radius`` is not an L-BFGS option), so
the grid has no duplicate cells. Every cell with seed ``s`` starts from ``problem.init(s)`` and passes
``seed=s`` to the method: common random numbers, cells differ only by their hyperparameters.

Besides lists, an option may be a range for ``search.algorithm`` random or optuna::

    radius: {loguniform: [1.0e-4, 1.0]}    memory: {int: [2, 32]}    memory: {logint: [2, 64]}
    lr: {uniform: [0.01, 0.5]}             sampling: {choice: [hvp, grad-diff]}

Integer ranges include both ends.

With a ``tuning:`` block the study is a *tuned study* (:mod:`sqn_ray.study.tuning`): each method's axes (lists and
ranges, no ``search:`` needed) are its space, every method gets ``tuning.trials`` configurations on the tuning seeds,
and each method's best is rerun on the study's ``seeds`` (the evaluation seeds); both stages land in the same two
Parquet files, told apart by their ``stage`` column.

``loggers`` (:data:`LOGGERS`) adds Tune's own logger callbacks, which log every trial's reported metrics
(loss, grad_norm, best_loss, accuracy, best_accuracy, ...; never the per-iteration rows, which go to Parquet)
and its cell (problem, method, seed, options) as hyperparameters (:mod:`sqn_ray.study.loggers`):

* ``tensorboard``: event files in ``DIR/tensorboard/<trial id>/``, live: ``tensorboard --logdir DIR/tensorboard``.
* ``mlflow``: one MLflow run per trial in the experiment named after the study, in ``$MLFLOW_TRACKING_URI``
  when set, else in ``DIR/mlflow.db`` (``mlflow ui --backend-store-uri sqlite:///DIR/mlflow.db``).
* ``wandb``: one W&B run per trial in the project ``$WANDB_PROJECT``, else the study's name (local files in
  ``DIR/wandb`` unless ``$WANDB_DIR`` says otherwise).

A logger whose package is not installed is an error at validation (``pip install mlflow``). ``loggers`` and
``checkpoint_every`` change how a study is watched and saved, not its trials: they are not part of its
fingerprint, so a study may be resumed with other values.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from sqn_ray.options import OptionError, choice, finite_float, integer, nonneg_float, nonneg_int, positive_float, \
    positive_int

__all__ = [
    "StudySpecError", "Distribution", "StudySpec", "Study", "CellGrid", "load_study_spec", "load_study",
    "parse_study", "read_yaml", "read_yaml_file", "deep_merge", "METRICS", "TIME_ATTRS", "SEARCH_ALGORITHMS",
    "LOGGERS", "DEFAULT_CHECKPOINT_EVERY",
]

TOP_KEYS = ("name", "description", "problems", "methods", "options", "seeds", "budget", "stop", "resources",
            "metric", "search", "scheduler", "dtype", "device", "accuracy_every", "max_failures",
            "max_concurrent_trials", "report_interval", "checkpoint_every", "loggers", "tuning", "smoke")
BUDGET_KEYS = ("iterations", "grad_equivalents", "wall_time")
STOP_KEYS = ("accuracy", "loss")
RESOURCE_KEYS = ("cpu", "gpu", "workers")
#: the most workers one data-parallel trial may span
MAX_WORKERS = 1024
#: the option a data-parallel study adds to every method's cells: how many workers its trial spans
WORKERS_OPTION = "workers"
SEARCH_KEYS = ("algorithm", "num_samples", "seed", "max_concurrent")
TUNING_KEYS = ("trials", "seeds", "seed", "metric", "separate")
#: what a study's trials are: a plain study's ("main"), or one of the two stages of a tuned study
STAGES = ("main", "tuning", "evaluation")
SCHEDULER_KEYS = ("type", "time_attr", "grace_period", "max_t", "reduction_factor", "brackets")
SEARCH_ALGORITHMS = ("grid", "random", "optuna")
SCHEDULERS = ("asha",)
#: per-report values a study may rank by, with their natural direction
METRICS = {"loss": "min", "best_loss": "min", "grad_norm": "min", "accuracy": "max", "best_accuracy": "max"}
#: reported cost axes an ASHA scheduler may use as its clock
TIME_ATTRS = ("iteration", "grad_equivalents", "epochs", "wall_time")
DTYPES = ("float64", "float32")
DEVICES = ("auto", "cpu", "cuda")
DISTRIBUTIONS = ("loguniform", "uniform", "int", "logint", "choice")
DEFAULT_BUDGET = {"iterations": 1000, "grad_equivalents": None, "wall_time": None}
#: seconds between a trial's checkpoints when the study file does not say
DEFAULT_CHECKPOINT_EVERY = 60.0
#: ``loggers:`` name -> (the module it needs, the package that installs it); checked with find_spec, not imported
LOGGERS = {"tensorboard": ("tensorboardX", "tensorboardX"), "mlflow": ("mlflow", "mlflow"),
           "wandb": ("wandb", "wandb")}
#: what neither changes the trials nor their results: left out of the fingerprint (a resume may change them)
_NOT_FINGERPRINTED = ("source", "description", "max_concurrent_trials", "report_interval", "checkpoint_every",
                      "loggers")
#: the first tuning seed when ``tuning.seeds`` is a count (far from the evaluation seeds 0..k-1)
TUNING_FIRST_SEED = 10_000
#: what --smoke does to a study file without a ``smoke:`` block
DEFAULT_SMOKE = {"seeds": 1, "budget": {"iterations": 10, "wall_time": 30}, "search": {"num_samples": 2}}


#: limits checked before anything runs (each error names the limit)
MAX_FILE_BYTES = 1024**2            # a study file is a page of YAML: 1 MiB leaves room for long notes
MAX_YAML_NODES = 100_000            # values in the file once YAML aliases are expanded
MAX_DESCRIPTION_CHARS = 10_000      # stored in the metadata of every results file
MAX_SEEDS = 10_000
MAX_TRIALS = 100_000                # trials in one study (grid cells × samples, or Optuna samples)
MAX_PROBED_COMBINATIONS = 20_000   # a method's option grid up to this size is validated cell by cell
MAX_SHOWN_CHARS = 120               # a value quoted in an error message


class StudySpecError(OptionError):
    """A study file is invalid. The message names the file, the field path and the allowed values; as an
    :class:`~sqn_ray.options.OptionError` it carries them too: ``option`` the field path
    (``methods.s-lsr1.radius``; None for an error about the whole file), ``value`` the value found there,
    ``allowed`` the allowed values (a tuple) or a description of them."""


def _shown(value, limit: int = MAX_SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages (a value may be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 25]}... ({len(text):,} characters)"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.2), not as the string PyYAML makes of it, and
    refuses a mapping that gives one key twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                where = _line_col(key_node.start_mark)
                try:
                    seen = first.setdefault(key, where)
                except TypeError:  # an unhashable key: the constructor below says so
                    continue
                if seen is not where:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_shown(key)}: given at {seen} and again at {where} (YAML "
                                    "would silently keep the last)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line for a YAML error: what is wrong and where (PyYAML's own text quotes the offending lines)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        text = error.problem + (f" ({_line_col(mark)})" if mark is not None and "line" not in error.problem else "")
    else:
        text = " ".join(str(error).split())
    return text if len(text) <= 4 * MAX_SHOWN_CHARS else text[:4 * MAX_SHOWN_CHARS] + "..."


def _line_col(mark) -> str:
    return f"line {mark.line + 1}" if mark.column == 0 else f"line {mark.line + 1}, column {mark.column + 1}"


@dataclass(frozen=True)
class Distribution:
    """A range an option is searched over: ``kind`` in :data:`DISTRIBUTIONS`, ``args`` its bounds/choices."""

    kind: str
    args: tuple

    def tune_domain(self):
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "int":
            return tune.randint(self.args[0], self.args[1] + 1)  # Tune's upper bound is exclusive
        if self.kind == "logint":
            return tune.lograndint(self.args[0], self.args[1] + 1)
        return tune.choice(list(self.args))

    def suggest(self, trial, name: str):
        """Draw from an Optuna trial (define-by-run)."""
        if self.kind == "loguniform":
            return trial.suggest_float(name, *self.args, log=True)
        if self.kind == "uniform":
            return trial.suggest_float(name, *self.args)
        if self.kind in ("int", "logint"):
            return trial.suggest_int(name, *self.args, log=self.kind == "logint")
        return trial.suggest_categorical(name, list(self.args))

    def sample(self, rng):
        """One draw from a :class:`numpy.random.Generator` (random search), as Tune's domains draw: log
        ranges uniform in the logarithm, integer ranges including both ends."""
        if self.kind == "choice":
            return self.args[int(rng.integers(len(self.args)))]
        low, high = self.args
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        if self.kind == "uniform":
            return float(rng.uniform(low, high))
        if self.kind == "int":
            return int(rng.integers(low, high + 1))
        return min(high, int(math.exp(rng.uniform(math.log(low), math.log(high + 1)))))  # logint

    def to_json(self):
        return {self.kind: list(self.args)}


@dataclass(frozen=True)
class CellGrid:
    """The (problem, method, options, seed) cells of a study's grid as a sequence that computes each cell
    from its index: small to ship to every trial (its axes only), linear to walk, O(1) memory per cell.

    Order: problems, then methods, then each method's option combinations (option names sorted, the last
    varying fastest, as :func:`itertools.product`), then seeds."""

    problems: tuple[str, ...]
    methods: tuple[tuple[str, tuple[str, ...], tuple[tuple, ...]], ...]  # (method, option names, their values)
    seeds: tuple[int, ...]
    #: a tuned study's stages: one block per configuration (a method may have several), and here each block's
    #: configuration number within its method (its cells carry it as ``tuning_config``); () for a plain grid
    numbers: tuple[int, ...] = ()

    @functools.cached_property
    def _blocks(self) -> tuple[tuple[int, int], ...]:
        """(first combination index, number of combinations) of each method within one problem."""
        out, start = [], 0
        for _, _, values in self.methods:
            n = math.prod(len(v) for v in values)
            out.append((start, n))
            start += n
        return tuple(out)

    @property
    def combos_per_problem(self) -> int:
        return sum(n for _, n in self._blocks)

    def __len__(self) -> int:
        return len(self.problems) * self.combos_per_problem * len(self.seeds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"cell {index} of a grid of {n}")
        index %= n
        rest, seed_at = divmod(index, len(self.seeds))
        problem_at, combo = divmod(rest, self.combos_per_problem)
        block = next(b for b, (start, count) in enumerate(self._blocks) if combo < start + count)
        (method, names, values), start = self.methods[block], self._blocks[block][0]
        k, options = combo - start, {}
        for name, vals in zip(reversed(names), reversed(values)):
            k, at = divmod(k, len(vals))
            options[name] = vals[at]
        cell = {"problem": self.problems[problem_at], "method": method, "seed": int(self.seeds[seed_at]),
                "options": {name: options[name] for name in names}}
        if self.numbers:
            cell["tuning_config"] = self.numbers[block]
        return cell

    def __iter__(self):
        return (self[i] for i in range(len(self)))


@dataclass(frozen=True)
class StudySpec:
    """A validated, normalised study file (:func:`load_study_spec`, :func:`parse_study`); frozen.

    Attributes:
        name: the study's name (the file stem unless given): letters, digits, ``_``, ``.``, ``-``.
        description: free text ("" when absent).
        problems: problem names (of ``sqn_ray.problems.problem_names()``: the library's, installed plugins',
            or a notebook's).
        methods: method -> option name -> its axis: a tuple of grid values, or a :class:`Distribution`
            (only with random/optuna search); shared ``options:`` are merged in where the method takes them.
        seeds: the seeds; every cell with seed s starts from ``problem.init(s)`` and passes ``seed=s``.
        budget: ``{"iterations": int, "grad_equivalents": float | None, "wall_time": float | None}``
            (wall time in seconds).
        stop: ``{"accuracy": fraction | "target" | None, "loss": float | None}``.
        resources: per trial, ``{"cpu": float, "gpu": float}``, with ``"workers"`` (a count or a list of counts)
            where the file gives it; then cpu and gpu are each worker's (:attr:`worker_counts` reads it).
        metric, mode: what Tune's search/scheduler and the ranking use (a name of :data:`METRICS`;
            ``"min"`` or ``"max"``).
        search: ``{"algorithm": "grid" | "random" | "optuna", "num_samples", "seed", "max_concurrent"}``.
        scheduler: the ASHA settings, or None for no scheduler.
        dtype: ``"float64"`` or ``"float32"``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        accuracy_every: training accuracy is evaluated every k-th iterate (and at the end).
        max_failures: retries of a trial whose worker died.
        max_concurrent_trials: a cap on concurrent trials, or None (as the resources allow).
        report_interval: seconds between a trial's reports to Tune (0: every iteration).
        checkpoint_every: seconds between a trial's checkpoints, or None for never (``null`` or 0 in the file).
        loggers: names of :data:`LOGGERS` whose Tune logger callbacks the study also reports to (``()``: none).
        tuning: a tuned study's ``tuning:`` block, ``{"trials", "seeds", "seed", "metric", "mode"}``, or None (see
            :mod:`sqn_ray.study.tuning`); then ``seeds`` are the evaluation seeds and ``methods`` the spaces
            each method is tuned over.
        stage: what the trials are, one of :data:`STAGES`: ``"main"`` (a plain study) or a tuned study's
            ``"tuning"`` or ``"evaluation"`` stage (:func:`sqn_ray.study.tuning.stage_spec` makes those).
        configurations: a stage's explicit configurations, method -> ((number, {option: value}), ...), which
            replace the product of ``methods``' axes in :attr:`grid`; None for a plain study.
        source: where it was read from (the file path, or ``"<study>"``).
        smoke: whether the ``smoke:`` overrides were applied.
        raw: the file's mapping as read (before defaults and overrides).
        text: the file's text ("" when parsed from data).
        defaults: method -> its full option defaults (``sqn_ray.method_options``).

    ``num_trials``, ``grid`` (the cells), ``fingerprint`` (what a resumed study must match) and
    ``to_json()`` are derived from these.
    """

    name: str
    description: str
    problems: tuple[str, ...]
    methods: dict[str, dict[str, tuple | Distribution]]
    seeds: tuple[int, ...]
    budget: dict[str, Any]
    stop: dict[str, Any]
    resources: dict[str, float]
    metric: str
    mode: str
    search: dict[str, Any]
    scheduler: dict[str, Any] | None
    dtype: str
    device: str
    accuracy_every: int
    max_failures: int
    max_concurrent_trials: int | None
    report_interval: float
    source: str
    smoke: bool
    raw: dict = field(repr=False)
    text: str = field(default="", repr=False)
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    checkpoint_every: float | None = DEFAULT_CHECKPOINT_EVERY
    loggers: tuple[str, ...] = ()
    tuning: dict[str, Any] | None = None
    stage: str = "main"
    configurations: dict[str, tuple[tuple[int, dict], ...]] | None = field(default=None, repr=False)

    @property
    def worker_counts(self) -> tuple[int, ...]:
        """The worker counts a trial may span (``resources.workers`` as a tuple; ``(1,)`` when absent)."""
        workers = self.resources.get("workers", 1)
        return tuple(workers) if isinstance(workers, (list, tuple)) else (int(workers),)

    @property
    def data_parallel(self) -> bool:
        """Whether some trial spans more than one worker (Ray Train)."""
        return max(self.worker_counts) > 1

    # ---------------------------------------------------------------- grid
    def grid_axes(self, method: str) -> dict[str, tuple]:
        return {k: v for k, v in self.methods[method].items() if not isinstance(v, Distribution)}

    def ranges(self, method: str) -> dict[str, Distribution]:
        return {k: v for k, v in self.methods[method].items() if isinstance(v, Distribution)}

    def method_cells(self, method: str) -> list[dict[str, Any]]:
        """The grid's option combinations for one method (ranges excluded)."""
        axes = self.grid_axes(method)
        names = sorted(axes)
        return [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]

    @functools.cached_property
    def grid(self) -> CellGrid:
        """The grid's cells, indexable without building them all (what the trials are handed)."""
        if self.configurations is not None:  # a stage of a tuned study: one block per configuration
            blocks, numbers = [], []
            for method, configs in self.configurations.items():
                for number, options in configs:
                    names = tuple(sorted(options))
                    blocks.append((method, names, tuple((options[n],) for n in names)))
                    numbers.append(number)
            return CellGrid(self.problems, tuple(blocks), self.seeds, tuple(numbers))
        methods = []
        for method in self.methods:
            axes = self.grid_axes(method)
            names = tuple(sorted(axes))
            methods.append((method, names, tuple(axes[n] for n in names)))
        return CellGrid(self.problems, tuple(methods), self.seeds)

    def cells(self) -> list[dict[str, Any]]:
        """Every (problem, method, options, seed) cell of the grid, in a stable order (``list(study.grid)``)."""
        return list(self.grid)

    @property
    def num_trials(self) -> int:
        """The study's trials: grid cells × samples (Optuna: its samples); a tuned study: both stages'."""
        if self.tuning is not None:
            from .tuning import stage_trials

            return sum(stage_trials(self).values())
        if self.search["algorithm"] == "optuna":
            return int(self.search["num_samples"])
        return len(self.grid) * int(self.search["num_samples"])

    @property
    def option_names(self) -> list[str]:
        """Every option any method of the study sets or sweeps (the option columns of the results)."""
        names = {"memory", "radius", "sampling"}
        for axes in self.methods.values():
            names.update(axes)
        return sorted(names)

    @property
    def target_accuracy(self):
        """The stop rule's accuracy: a number, 'target' (the problem's own) or None."""
        return self.stop.get("accuracy")

    def to_json(self) -> dict:
        """The normalized study (what ran), JSON-serializable."""
        methods = {m: {k: (v.to_json() if isinstance(v, Distribution) else list(v)) for k, v in axes.items()}
                   for m, axes in self.methods.items()}
        return {"name": self.name, "description": self.description, "problems": list(self.problems),
                "methods": methods, "seeds": list(self.seeds), "budget": self.budget, "stop": self.stop,
                "resources": self.resources, "metric": {"name": self.metric, "mode": self.mode},
                "search": self.search, "scheduler": self.scheduler, "dtype": self.dtype, "device": self.device,
                "accuracy_every": self.accuracy_every, "max_failures": self.max_failures,
                "max_concurrent_trials": self.max_concurrent_trials, "report_interval": self.report_interval,
                "checkpoint_every": self.checkpoint_every, "loggers": list(self.loggers),
                "source": self.source, "smoke": self.smoke,
                # only where set, so the fingerprints of plain studies stay what they were
                **({"tuning": self.tuning} if self.tuning is not None else {}),
                **({"stage": self.stage} if self.stage != "main" else {}),
                **({"configurations": {m: [[n, o] for n, o in c] for m, c in self.configurations.items()}}
                   if self.configurations is not None else {})}

    @property
    def fingerprint(self) -> str:
        """Hash of what determines the trials; a resumed study must match it. The keys that only change how a
        study runs or is watched (:data:`_NOT_FINGERPRINTED`: concurrency, report and checkpoint intervals,
        loggers) are left out, so adding one to the study file keeps the fingerprints of existing studies."""
        body = self.to_json()
        for key in _NOT_FINGERPRINTED:
            body.pop(key)
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ loading
def load_study_spec(path: str | Path, *, smoke: bool = False, problems: Mapping | None = None) -> StudySpec:
    """Read and validate a study file (the layout: this module's docstring).

    Args:
        path: the YAML file; its stem is the study's default name.
        smoke: apply the file's ``smoke:`` overrides (without one: 1 seed, 10 iterations, 30 s; 2 samples for
            a random/optuna search), for ``--smoke``.
        problems: name -> problem or recipe defined by the caller (a notebook), which the study may name
            besides the library's and the installed plugins' problems.

    Returns:
        The validated :class:`StudySpec`, with ``source`` the path and ``text`` the file's text.

    Raises:
        StudySpecError: (a ValueError) for an unreadable or oversized file, invalid YAML, or any invalid field;
            the message names the file, the field path and the allowed values, and the error carries them as
            ``option``, ``value``, ``allowed``.
    """
    data, text = read_yaml_file(path)
    return parse_study(data, source=str(path), smoke=smoke, text=text, problems=problems)


# the earlier names, kept for notebooks and scripts (analysis.load has a StudyResults / load_results of its own)
Study = StudySpec
load_study = load_study_spec


def read_yaml_file(path: str | Path, *, error: type[Exception] = StudySpecError) -> tuple[Any, str]:
    """Read a YAML file of the platform's (studies, scaling specs) safely.

    Args:
        path: the file.
        error: the exception class to raise (called with the message; an :class:`~sqn_ray.options.OptionError`
            subclass also gets ``option``, ``value``, ``allowed`` of a YAML error).

    Returns:
        (data, text): the parsed YAML (as :func:`read_yaml` parses it; None for an empty file) and the file's
        text.

    Raises:
        error: (default :class:`StudySpecError`) with a message starting with the file's name when the path is
            a folder or cannot be read, is larger than :data:`MAX_FILE_BYTES`, is not UTF-8 text or holds NUL
            bytes, or is not valid YAML (see :func:`read_yaml`).
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise error(f"{path}: is a folder, not a file")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise error(f"{path}: cannot read the file: {e.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise error(f"{path}: the file is larger than the limit of {MAX_FILE_BYTES:,} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a text file (not UTF-8: byte {e.start} is {raw[e.start]:#04x}); "
                    "expected YAML text") from None
    if "\x00" in text:
        raise error(f"{path}: not a text file (it holds NUL bytes); expected YAML text")
    try:
        return read_yaml(text, source=str(path)), text
    except StudySpecError as e:
        if isinstance(error, type) and issubclass(error, OptionError):
            raise error(str(e), option=e.option, value=e.value, allowed=e.allowed) from None
        raise error(str(e)) from None


def read_yaml(text: str, *, source: str = "<study>", max_nodes: int | None = None) -> Any:
    """Parse YAML text safely: no tags or objects, ``1e-3`` a float, duplicate keys refused, and at most
    ``max_nodes`` values (default :data:`MAX_YAML_NODES`) once aliases are expanded, counted on the node graph
    before anything is built (a few hundred bytes of nested aliases expand to billions of values).

    Args:
        text: the YAML text (one document).
        source: the name error messages start with.
        max_nodes: the limit on expanded values; None for :data:`MAX_YAML_NODES`.

    Returns:
        The document's value (plain dicts, lists, strings, numbers, booleans, None), or None for an empty one.

    Raises:
        StudySpecError: for invalid YAML (with line and column), a duplicate key, or more than ``max_nodes``
            values once expanded (a recursive alias included).
    """
    limit = MAX_YAML_NODES if max_nodes is None else max_nodes
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, limit)
        if size > limit:
            raise StudySpecError(f"{source}: the YAML expands to more than {limit:,} values (nested aliases?); "
                                 f"a study file needs far fewer")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise StudySpecError(f"{source}: not valid YAML: {_yaml_problem(e)}") from None
    finally:
        loader.dispose()


def _expanded_size(root, limit: int) -> int:
    """How many nodes ``root`` stands for with every alias expanded, counting up to just past ``limit``.
    The node graph shares a node per alias, so sizes are memoized per node: linear in the file, whatever
    it expands to; a node that contains itself (a recursive alias) expands without end."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes and not children_done:
            continue
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if not children_done:
            if key in active:
                return limit + 1  # recursive: infinite
            active.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        active.discard(key)
        total = 1
        for c in children:
            if id(c) in active:
                return limit + 1
            total += sizes.get(id(c), 0)
            if total > limit:
                return limit + 1
        sizes[key] = total
    return sizes[id(root)]


def parse_study(data: Any, *, source: str = "<study>", smoke: bool = False, text: str = "",
                problems: Mapping | None = None) -> StudySpec:
    """Validate an already loaded study mapping (see the module docstring for the layout).

    Args:
        data: the study as :func:`read_yaml` returns it (a mapping).
        source: its file name, for error messages and the default study name (its stem; ``"study"`` for
            ``"<study>"``).
        smoke: apply its ``smoke:`` overrides (or the default shrink), as :func:`load_study_spec`.
        text: the file's text, kept as ``StudySpec.text`` (stored with the results).
        problems: name -> problem or recipe defined by the caller, as in :func:`load_study_spec`.

    Returns:
        The validated :class:`StudySpec`.

    Raises:
        StudySpecError: (a ValueError) for an empty or non-mapping study, an unknown key, any invalid field, a
            study with no trials or more than :data:`MAX_TRIALS`; the message names the source, the field path
            and the allowed values.
    """
    return _Parser(source, problems).parse(data, smoke=smoke, text=text)


def deep_merge(base: dict, over: Mapping) -> dict:
    """Merge ``over`` into ``base``, key by key into nested mappings.

    Args:
        base: the mapping to start from.
        over: the values to put in; where both hold a mapping under a key, they are merged recursively, else
            ``over``'s value replaces ``base``'s.

    Returns:
        A new dict (deep copies: neither argument is changed).
    """
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(dict(out[k]), v)
        else:
            out[k] = copy.deepcopy(v)
    return out


#: the checkers of ``integer(..., low=...)``
_AT_LEAST = {0: nonneg_int, 1: positive_int}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _fmt(values: Iterable) -> str:
    return ", ".join(str(v) for v in values)


class _Parser:
    def __init__(self, source: str, problems: Mapping | None = None):
        self.source = source
        self.extra_problems = dict(problems or {})
        self.suffix = ""
        self.shared_axes: dict = {}

    def fail(self, path: str, message: str, allowed: Iterable | None = None, *, value: Any = None,
             expected: str | None = None):
        """Raise the StudySpecError of field ``path``: ``allowed`` values are listed in the message (and are the
        error's ``allowed``), else ``expected`` describes what is allowed; ``value`` is the value found."""
        msg = f"{self.source}: {path}: {message}"
        if allowed is not None:
            allowed = tuple(allowed)
            msg += f"; allowed: {_fmt(allowed)}"
        raise StudySpecError(msg + self.suffix, option=path, value=value,
                             allowed=allowed if allowed is not None else expected)

    def check(self, checker, value, path: str, message: str):
        """``value`` judged (and normalised) by one of the :mod:`sqn_ray.options` checkers; on a bad value, fail
        with ``message`` (formatted with ``shown``, the value cut for the message, and ``value``)."""
        try:
            return checker(path, value)
        except OptionError as e:
            self.fail(path, message.format(shown=_shown(value), value=value), value=value, expected=e.allowed)

    # -- small typed readers ---------------------------------------------------------------------
    def mapping(self, value, path, keys: Iterable[str] | None = None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, f"expected a mapping, got {type(value).__name__} {_shown(value)}", value=value,
                      expected="a mapping")
        for k in value:
            if not isinstance(k, str):
                self.fail(path, f"keys must be strings, got {_shown(k)}", value=k, expected="a string key")
            if keys is not None and k not in keys:
                self.fail(f"{path}.{k}" if path else k, "unknown key", keys, value=value[k])
        return dict(value)

    def integer(self, value, path, *, low=None, none_ok=False):
        if value is None and none_ok:
            return None
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)
        value = self.check(integer, value, path, "expected an integer, got {shown}")
        if low in _AT_LEAST:
            self.check(_AT_LEAST[low], value, path, f"must be >= {low}, got {{value}}")
        elif low is not None and value < low:
            self.fail(path, f"must be >= {low}, got {value}", value=value, expected=f"an integer >= {low}")
        return value

    def number(self, value, path, *, positive=False, nonneg=False, none_ok=False):
        if value is None and none_ok:
            return None
        self.check(finite_float, value, path, "expected a finite number, got {shown}")
        if positive:
            self.check(positive_float, value, path, "must be > 0, got {value}")
        if nonneg:
            self.check(nonneg_float, value, path, "must be >= 0, got {value}")
        return value if isinstance(value, (int, float)) else float(value)  # a plain number, as YAML gives

    def choice(self, value, path, allowed):
        try:
            choice(*allowed)(path, value)
        except OptionError as e:
            self.fail(path, f"unknown value {_shown(value)}", e.allowed, value=value)
        return value

    def str_list(self, value, path, allowed) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.fail(path, f"expected a non-empty list, got {_shown(value)}", allowed, value=value)
        seen: dict = {}
        for i, v in enumerate(value):
            if not isinstance(v, str):
                self.fail(f"{path}[{i}]", f"unknown value {_shown(v)}", allowed, value=v)
            self.choice(v, f"{path}[{i}]", allowed)
            if v in seen:
                self.fail(f"{path}[{i}]", f"{_shown(v)} is listed twice (also {path}[{seen[v]}])", value=v,
                          expected="each value once")
            seen[v] = i
        return tuple(seen)

    # -- the study ---------------------------------------------------------------------------------
    def parse(self, data, *, smoke: bool, text: str) -> StudySpec:
        import sqn_ray
        from sqn_ray.problems import problem_names

        known = problem_names(self.extra_problems)  # the library's, the installed plugins', the caller's

        if data is None:
            self.fail("(top level)", "the study file is empty")
        if not isinstance(data, Mapping):
            self.fail("(top level)", f"expected a mapping of study fields, got {type(data).__name__}")
        raw = self.mapping(data, "", TOP_KEYS)
        if "smoke" in raw:
            smoke_block = self.mapping(raw["smoke"], "smoke", tuple(k for k in TOP_KEYS if k != "smoke"))
        else:  # the default shrink; more samples only where the search draws them (a grid runs each cell once)
            search = raw.get("search")
            grid = not isinstance(search, Mapping) or search.get("algorithm", "grid") == "grid"
            smoke_block = {k: v for k, v in DEFAULT_SMOKE.items() if not (grid and k == "search")}
        spec = {k: v for k, v in raw.items() if k != "smoke"}
        if smoke:
            spec = deep_merge(spec, smoke_block)
            self.suffix = " (after applying the study's smoke: overrides for --smoke)"

        stem = Path(self.source).stem if self.source != "<study>" else "study"
        name = spec.get("name", stem)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            self.fail("name", f"expected a name of letters, digits, '_', '.', '-', got {_shown(name)}",
                      value=name)
        description = spec.get("description", "")
        if not isinstance(description, str):
            self.fail("description", f"expected a string, got {_shown(description)}", value=description)
        if len(description) > MAX_DESCRIPTION_CHARS:
            self.fail("description", f"{len(description):,} characters, over the limit of "
                                     f"{MAX_DESCRIPTION_CHARS:,} (it is stored in every results file)")

        if "problems" not in spec:
            self.fail("problems", "missing (which problems to run)", known)
        problems = self.str_list(spec["problems"], "problems", known)

        search = self.mapping(spec.get("search"), "search", SEARCH_KEYS)
        algorithm = self.choice(search.get("algorithm", "grid"), "search.algorithm", SEARCH_ALGORITHMS)
        search = {
            "algorithm": algorithm,
            "num_samples": self.integer(search.get("num_samples", 1), "search.num_samples", low=1),
            "seed": self.integer(search.get("seed", 0), "search.seed", low=0),
            "max_concurrent": self.integer(search.get("max_concurrent"), "search.max_concurrent", low=1,
                                           none_ok=True),
        }

        tuned = spec.get("tuning") is not None
        if tuned and algorithm != "grid":
            self.fail("search.algorithm", f"a tuned study draws each method's configurations itself (tuning:), "
                                          f"got search.algorithm {algorithm}; leave search out",
                      value=algorithm, expected="grid (the default)")
        methods = self.methods(spec, sqn_ray, "tuning" if tuned else algorithm)
        seeds = self.seeds(spec.get("seeds", 1))

        budget = self.mapping(spec.get("budget"), "budget", BUDGET_KEYS)
        budget = {
            "iterations": self.integer(budget.get("iterations", DEFAULT_BUDGET["iterations"]),
                                       "budget.iterations", low=1),
            "grad_equivalents": self.number(budget.get("grad_equivalents"), "budget.grad_equivalents",
                                            positive=True, none_ok=True),
            "wall_time": self.number(budget.get("wall_time"), "budget.wall_time", positive=True, none_ok=True),
        }
        stop = self.mapping(spec.get("stop"), "stop", STOP_KEYS)
        accuracy = stop.get("accuracy")
        if accuracy is not None and accuracy != "target":
            accuracy = self.number(accuracy, "stop.accuracy", positive=True)
            if accuracy > 1:
                self.fail("stop.accuracy", f"an accuracy is at most 1 (a fraction), got {accuracy}", value=accuracy)
        stop = {"accuracy": accuracy, "loss": self.number(stop.get("loss"), "stop.loss", none_ok=True)}

        resources = self.mapping(spec.get("resources"), "resources", RESOURCE_KEYS)
        resources = {"cpu": self.number(resources.get("cpu", 1), "resources.cpu", positive=True),
                     "gpu": self.number(resources.get("gpu", 0), "resources.gpu", nonneg=True)}
        if resources["gpu"] > 1 and not float(resources["gpu"]).is_integer():
            self.fail("resources.gpu", f"a fraction of one GPU or a whole number of GPUs, got {resources['gpu']}",
                      value=resources["gpu"])
        workers = self.workers(spec.get("resources") or {}, problems, methods, tuned)
        if workers is not None:  # only where given: the fingerprints of single-process studies stay as they were
            resources["workers"] = list(workers) if len(workers) > 1 else workers[0]

        metric_spec = spec.get("metric", "loss")
        if isinstance(metric_spec, str):
            metric_spec = {"name": metric_spec}
        metric_spec = self.mapping(metric_spec, "metric", ("name", "mode"))
        metric = self.choice(metric_spec.get("name", "loss"), "metric.name", tuple(METRICS))
        mode = self.choice(metric_spec.get("mode", METRICS[metric]), "metric.mode", ("min", "max"))

        scheduler = self.scheduler(spec.get("scheduler"), budget)
        dtype = self.choice(spec.get("dtype", "float64"), "dtype", DTYPES)
        device = self.choice(spec.get("device", "auto"), "device", DEVICES)
        accuracy_every = self.integer(spec.get("accuracy_every", 1), "accuracy_every", low=1)
        max_failures = self.integer(spec.get("max_failures", 2), "max_failures", low=0)
        max_conc = self.integer(spec.get("max_concurrent_trials"), "max_concurrent_trials", low=1, none_ok=True)
        report_interval = self.number(spec.get("report_interval", 1.0), "report_interval", nonneg=True)
        checkpoint_every = self.checkpoint_every(spec.get("checkpoint_every", DEFAULT_CHECKPOINT_EVERY))
        loggers = self.loggers(spec.get("loggers", []))

        tuning = self.tuning(spec.get("tuning"), seeds, metric, mode, methods) if tuned else None
        if tuned and scheduler is not None:
            self.fail("scheduler", "a tuned study gives every configuration its whole budget (the same for every "
                                   "method); remove the scheduler")
        if device == "cuda" and resources["gpu"] <= 0:
            self.fail("device", "device: cuda needs resources.gpu > 0 (or device: auto)")
        if algorithm == "optuna" and len(problems) != 1:
            self.fail("problems", f"an optuna search tunes one problem at a time, got {len(problems)} "
                                  "(write one study per problem)")
        if algorithm == "grid" and search["num_samples"] != 1:
            self.fail("search.num_samples", "a grid runs every cell once; repeat it with more seeds, or use "
                                            "search.algorithm random or optuna")
        defaults = {m: dict(sqn_ray.method_options(m)) for m in methods}
        if workers is not None:
            for m in methods:
                defaults[m][WORKERS_OPTION] = 1
        study = StudySpec(name=name, description=description, problems=problems, methods=methods, seeds=seeds,
                      budget=budget, stop=stop, resources=resources, metric=metric, mode=mode, search=search,
                      scheduler=scheduler, dtype=dtype, device=device, accuracy_every=accuracy_every,
                      max_failures=max_failures, max_concurrent_trials=max_conc,
                      report_interval=report_interval, source=self.source, smoke=smoke, raw=raw, text=text,
                      defaults=defaults, checkpoint_every=checkpoint_every, loggers=loggers, tuning=tuning)
        if study.num_trials == 0:
            self.fail("methods", "the study has no trials")
        if study.num_trials > MAX_TRIALS:
            samples = f" × {search['num_samples']:,} samples" if search["num_samples"] > 1 else ""
            self.fail("methods", f"the study has {study.num_trials:,} trials ({len(problems)} problem(s) × "
                                 f"{study.grid.combos_per_problem:,} option cell(s) × {len(seeds):,} seed(s)"
                                 f"{samples}), over the limit of {MAX_TRIALS:,}; split it into several studies")
        self.check_memory(problems, methods)
        return study

    def check_memory(self, problems, methods) -> None:
        """``memory`` (m pairs) at most the problem's d, where d is known before building the problem: no
        quasi-Newton model has use for more than d pairs (they cannot be linearly independent)."""
        from sqn_ray.problems import problem_dim

        dims = {p: d for p in problems if (d := problem_dim(p, self.extra_problems)) is not None}
        for method, axes in methods.items():
            axis = axes.get("memory")
            if axis is None or not dims:
                continue
            largest = axis.args[-1] if isinstance(axis, Distribution) and axis.kind != "choice" else max(
                (v for v in (axis.args if isinstance(axis, Distribution) else axis) if _is_number(v)), default=None)
            for problem, d in dims.items():
                if largest is not None and largest > d:
                    where = "options.memory" if "memory" in self.shared_axes else f"methods.{method}.memory"
                    self.fail(where, f"memory {largest} is more than the d = {d} parameters of problem {problem} "
                                     f"(m pairs in R^d: at most d are independent)")

    def checkpoint_every(self, value) -> float | None:
        """Seconds between a trial's checkpoints: a number > 0, or None for never (``null`` or 0)."""
        expected = "seconds between checkpoints (a number > 0), or null or 0 for never"
        if value is None:
            return None
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            self.fail("checkpoint_every", f"expected {expected}, got {_shown(value)}", value=value, expected=expected)
        return float(value) if value > 0 else None

    def loggers(self, value) -> tuple[str, ...]:
        """Logger names of :data:`LOGGERS`, each once, whose packages can be imported (checked without
        importing them: a missing one is named with its install command, before anything runs)."""
        import importlib.util

        if value is None or value == []:
            return ()
        if not isinstance(value, (str, list)):
            self.fail("loggers", f"expected a list of logger names, got {_shown(value)}", tuple(LOGGERS), value=value)
        names = self.str_list(value, "loggers", tuple(LOGGERS))
        for i, name in enumerate(names):
            module, package = LOGGERS[name]
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                path = f"loggers[{i}]" if isinstance(value, list) else "loggers"
                self.fail(path, f"{name} needs the package {package}, which is not installed: pip install "
                                f"{package} (or remove {name} from loggers)", value=name,
                          expected=f"an installed logger of: {_fmt(LOGGERS)}")
        return names

    def workers(self, resources, problems, methods, tuned) -> tuple[int, ...] | None:
        """``resources.workers``: how many workers (Ray Train, one data shard each) a trial spans, a count or a
        list of counts (a grid axis: every method's cells get a ``workers`` option, a column of the results).
        None when absent. A study with more than one worker adds the ``workers`` option to every method, so
        a tuned study may not sweep it (it is not a hyperparameter), and the built-in problems that cannot be
        split (the toy sets, logistic, mini-batch MNIST) are refused here; a plugin's problem is checked when
        its trial builds it."""
        if "workers" not in resources:
            return None
        value = resources["workers"]
        listed = isinstance(value, list)
        if listed and not value:
            self.fail("resources.workers", "expected a worker count or a non-empty list of counts, got []",
                      value=value, expected="a positive integer or a list of them")
        counts: dict[int, int] = {}
        for i, k in enumerate(value if listed else [value]):
            path = f"resources.workers[{i}]" if listed else "resources.workers"
            k = self.integer(k, path, low=1)
            if k > MAX_WORKERS:
                self.fail(path, f"{k:,} workers, over the limit of {MAX_WORKERS:,}", value=k)
            if k in counts:
                self.fail(path, f"{k} is listed twice (also resources.workers[{counts[k]}])", value=k,
                          expected="each count once")
            counts[k] = i
        workers = tuple(counts)
        if tuned and len(workers) > 1:
            self.fail("resources.workers", "a tuned study runs every configuration on one worker count (the "
                                           "count is not a hyperparameter); give one count", value=value)
        if max(workers) > 1:
            from sqn_ray.problems import FASHION_MNIST_PROBLEMS, MNIST_PROBLEMS, PROBLEMS
            from sqn_ray.problems.mnist import parse_mnist_name

            for i, name in enumerate(problems):
                if name in self.extra_problems or name not in PROBLEMS:
                    continue  # a notebook's or a plugin's problem: its trial says whether it has shards
                if name not in MNIST_PROBLEMS + FASHION_MNIST_PROBLEMS or parse_mnist_name(name)[2] is not None:
                    self.fail(f"problems[{i}]", f"{name!r} cannot be split across workers (a data-parallel "
                                                f"trial needs a full-batch data set: mnist-mlp, mnist-cnn, their "
                                                f"fashion- twins, or a problem with a shard method); "
                                                f"resources.workers is {value!r}", value=name)
        if listed or workers[0] > 1:
            for axes in methods.values():
                axes[WORKERS_OPTION] = workers
        return workers

    def seeds(self, value, path: str = "seeds", first: int = 0) -> tuple[int, ...]:
        """A count k (seeds first..first+k-1) or a list of distinct seeds >= 0."""
        if isinstance(value, int) and not isinstance(value, bool):
            self.integer(value, path, low=1)
            if value > MAX_SEEDS:
                self.fail(path, f"{value:,} seeds, over the limit of {MAX_SEEDS:,}")
            return tuple(range(first, first + value))
        if not isinstance(value, list) or not value:
            self.fail(path, f"expected a count (10 -> seeds {first}..{first + 9}) or a non-empty list of seeds, "
                            f"got {_shown(value)}")
        if len(value) > MAX_SEEDS:
            self.fail(path, f"{len(value):,} seeds listed, over the limit of {MAX_SEEDS:,}")
        out: dict[int, int] = {}  # seed -> its index (a dict: the duplicate check stays linear)
        for i, s in enumerate(value):
            s = self.integer(s, f"{path}[{i}]", low=0)
            if s in out:
                self.fail(f"{path}[{i}]", f"seed {s} is listed twice (also {path}[{out[s]}])", value=s,
                          expected="each seed once")
            out[s] = i
        return tuple(out)

    def tuning(self, value, seeds, metric, mode, methods) -> dict:
        """The ``tuning:`` block: ``trials`` configurations per method (required), tuning ``seeds`` (a count k
        gives :data:`TUNING_FIRST_SEED` .. +k-1; none may be an evaluation seed), the draws' generator ``seed``,
        the selection ``metric`` (default: the study's) and the options tuned ``separate``ly (list axes)."""
        block = self.mapping(value, "tuning", TUNING_KEYS)
        if "trials" not in block:
            self.fail("tuning.trials", "missing: how many configurations every method is given (the same budget "
                                       "for each)")
        trials = self.integer(block["trials"], "tuning.trials", low=1)
        tuning_seeds = self.seeds(block.get("seeds", 2), "tuning.seeds", first=TUNING_FIRST_SEED)
        evaluation = set(seeds)
        for i, s in enumerate(tuning_seeds):
            if s in evaluation:
                self.fail(f"tuning.seeds[{i}]" if isinstance(block.get("seeds"), list) else "tuning.seeds",
                          f"seed {s} is also an evaluation seed (seeds:); a configuration is chosen on tuning seeds "
                          "and judged on fresh ones", value=s, expected="seeds not in seeds:")
        chosen = block.get("metric", {"name": metric, "mode": mode})
        if isinstance(chosen, str):
            chosen = {"name": chosen}
        chosen = self.mapping(chosen, "tuning.metric", ("name", "mode"))
        name = self.choice(chosen.get("name", metric), "tuning.metric.name", tuple(METRICS))
        out = {"trials": trials, "seeds": list(tuning_seeds), "seed": self.integer(block.get("seed", 0),
               "tuning.seed", low=0), "metric": name,
               "mode": self.choice(chosen.get("mode", METRICS[name]), "tuning.metric.mode", ("min", "max"))}
        if block.get("separate") not in (None, []):  # only when given: earlier tuned studies keep their fingerprint
            swept = sorted({o for axes in methods.values() for o, v in axes.items() if isinstance(v, tuple)})
            out["separate"] = list(self.str_list(block["separate"], "tuning.separate", swept))
            for method, axes in methods.items():
                for option in out["separate"]:
                    if isinstance(axes.get(option), Distribution):
                        self.fail(f"methods.{method}.{option}", "an option tuned apart (tuning.separate) takes a "
                                                                "list of values, not a range", value=option)
        return out

    def scheduler(self, value, budget) -> dict | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = {"type": value}
        value = self.mapping(value, "scheduler", SCHEDULER_KEYS)
        kind = self.choice(value.get("type", "asha"), "scheduler.type", SCHEDULERS)
        time_attr = self.choice(value.get("time_attr", "iteration"), "scheduler.time_attr", TIME_ATTRS)
        default_max = {"iteration": budget["iterations"], "grad_equivalents": budget["grad_equivalents"],
                       "wall_time": budget["wall_time"], "epochs": None}[time_attr]
        max_t = value.get("max_t", default_max)
        if max_t is None:
            self.fail("scheduler.max_t", f"needed: the budget sets no limit on {time_attr}")
        max_t = self.number(max_t, "scheduler.max_t", positive=True)
        grace = self.number(value.get("grace_period", max(1, max_t / 27)), "scheduler.grace_period", positive=True)
        if grace > max_t:
            self.fail("scheduler.grace_period", f"must be <= max_t ({max_t}), got {grace}", value=grace)
        rf = self.number(value.get("reduction_factor", 3), "scheduler.reduction_factor", positive=True)
        if rf <= 1:
            self.fail("scheduler.reduction_factor", f"must be > 1, got {rf}", value=rf)
        return {"type": kind, "time_attr": time_attr, "max_t": max_t, "grace_period": grace,
                "reduction_factor": rf, "brackets": self.integer(value.get("brackets", 1), "scheduler.brackets",
                                                                 low=1)}

    def axis(self, value, path, algorithm) -> tuple | Distribution:
        """One option's values: scalar -> fixed, list -> grid axis, {kind: args} -> range."""
        if isinstance(value, Mapping):
            if len(value) != 1:
                self.fail(path, f"a range is one of {{kind: [low, high]}}, got {_shown(dict(value))}", DISTRIBUTIONS)
            (kind, args), = value.items()
            self.choice(kind, f"{path}.{kind}" if isinstance(kind, str) else path, DISTRIBUTIONS)
            if algorithm == "grid":
                self.fail(path, f"a range ({kind}) needs search.algorithm random or optuna, or a tuning: stage; "
                                "a grid takes lists")
            if not isinstance(args, list) or not args:
                self.fail(f"{path}.{kind}", f"expected a list, got {_shown(args)}")
            if kind == "choice":
                return Distribution(kind, tuple(args))
            if len(args) != 2:
                self.fail(f"{path}.{kind}", f"expected [low, high], got {_shown(args)}")
            if kind in ("int", "logint"):
                low, high = (self.integer(a, f"{path}.{kind}") for a in args)
            else:
                low, high = (self.number(a, f"{path}.{kind}") for a in args)
            if not low < high:
                self.fail(f"{path}.{kind}", f"low must be < high, got {_shown(args)}")
            if kind in ("loguniform", "logint") and low <= 0:
                self.fail(f"{path}.{kind}", f"a log range needs low > 0, got {low}")
            return Distribution(kind, (low, high))
        if isinstance(value, list):
            if not value:
                self.fail(path, "empty grid: give at least one value")
            seen: dict = {}  # value -> index; hashing treats 1, 1.0 and True as one value, as == does
            for i, v in enumerate(value):
                if isinstance(v, (list, Mapping)):
                    self.fail(f"{path}[{i}]", f"grid values are scalars, got {_shown(v)}")
                if v in seen:
                    self.fail(f"{path}[{i}]", f"{_shown(v)} is listed twice (also {path}[{seen[v]}])")
                seen[v] = i
            return tuple(value)
        if value is None:
            self.fail(path, "no value given")
        return (value,)

    def methods(self, spec, sqn_ray, algorithm) -> dict[str, dict]:
        allowed = tuple(sqn_ray.METHODS)
        if "methods" not in spec:
            self.fail("methods", "missing (which methods to run)", allowed)
        value = spec["methods"]
        if isinstance(value, (str, list)):
            value = {m: None for m in self.str_list(value, "methods", allowed)}
        value = self.mapping(value, "methods")
        if not value:
            self.fail("methods", "no methods given", allowed)
        shared = self.shared_axes = self.mapping(spec.get("options"), "options")
        out: dict[str, dict] = {}
        shared_used = set()
        for method, opts in value.items():
            self.choice(method, f"methods.{method}", allowed)
            known = dict(sqn_ray.method_options(method))
            known.pop("seed", None)
            opts = self.mapping(opts, f"methods.{method}")
            axes = {}
            for opt, v in shared.items():
                if opt in known:
                    axes[opt] = self.axis(v, f"options.{opt}", algorithm)
                    shared_used.add(opt)
            for opt, v in opts.items():
                if opt == "seed":
                    self.fail(f"methods.{method}.seed", "seeds come from the top-level 'seeds' (common random "
                                                        "numbers across cells)")
                if opt not in known:
                    self.fail(f"methods.{method}.{opt}", f"not an option of {method}", sorted(known), value=v)
                axes[opt] = self.axis(v, f"methods.{method}.{opt}", algorithm)
            self.check_values(method, axes, sqn_ray)
            self.check_unused_lr(method, axes, known)
            out[method] = axes
        for opt in shared:
            if opt == "seed":
                self.fail("options.seed", "seeds come from the top-level 'seeds'")
            if opt not in shared_used:
                self.fail(f"options.{opt}", f"no listed method takes option {_shown(opt)}", sorted(
                    {o for m in out for o in sqn_ray.method_options(m) if o != "seed"}))
        return out

    def check_unused_lr(self, method, axes, known) -> None:
        """A line-search method's ``lr`` is its fixed step (``step_rule: fixed``); under the default Armijo search
        it does nothing, so sweeping it would only make duplicate trials."""
        lr, rule = axes.get("lr"), axes.get("step_rule", (known.get("step_rule"),))
        if "step_rule" not in known or lr is None:
            return
        swept = isinstance(lr, Distribution) or len(lr) > 1
        if swept and "fixed" not in (rule.args if isinstance(rule, Distribution) else rule):
            self.fail(f"methods.{method}.lr", f"lr is the step of step_rule: fixed and unused by the Armijo search "
                                              f"{method} runs here: sweeping it gives identical trials; set "
                                              f"step_rule: fixed, or remove lr", value=lr)

    def check_values(self, method, axes, sqn_ray):
        """Let the optimizer core judge every value: each grid combination (or, for a grid too large to
        probe cell by cell, each value with the other options at their first value), each range's ends."""
        fixed = {k: v for k, v in axes.items() if not isinstance(v, Distribution)}
        names = sorted(fixed)
        combos = math.prod(len(fixed[n]) for n in names)
        if combos > MAX_TRIALS:
            self.fail(f"methods.{method}", f"its option grid has {combos:,} cells, over the limit of "
                                           f"{MAX_TRIALS:,} trials a study may have")
        if combos <= MAX_PROBED_COMBINATIONS:
            probes = [dict(zip(names, c)) for c in itertools.product(*(fixed[n] for n in names))]
        else:
            first = {n: fixed[n][0] for n in names}
            probes = [{**first, n: v} for n in names for v in fixed[n]]
        for opt, dist in axes.items():
            if isinstance(dist, Distribution):
                probes = [{**p, opt: a} for p in probes[:1] for a in dist.args]
        for probe in probes:
            try:
                sqn_ray.validate_options(method, **probe, seed=0)
            except OptionError as e:  # the core names the option: the field is methods.<method>.<option>
                known = isinstance(e.option, str) and e.option in probe
                self.fail(f"methods.{method}" + (f".{e.option}" if known else ""), f"{e} (values {probe})",
                          value=e.value, expected=e.allowed)
            except (ValueError, TypeError) as e:
                self.fail(f"methods.{method}", f"{e} (values {probe})", value=probe)
