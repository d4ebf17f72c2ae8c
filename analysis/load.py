"""Load a study's results from Parquet, and nothing else: ``DIR/iterations.parquet``, ``DIR/trials.parquet``
(the study platform's contract, see :mod:`sqn_ray.study.results`) and, when present, ``DIR/eigen.parquet``
(written by ``sqn-ray eigen``, see :mod:`analysis.eigen`).

    >>> from analysis.load import load_results
    >>> study = load_results("results/paper-toy")
    >>> study.trials.groupby(["problem", "config"]).solved.mean()

Partial studies load too: a study that is still running (trials with status ``running``), one whose
``trials.parquet`` is missing (trial summaries are then derived from the iterations) or one with only some
methods. Every trial gets a ``config`` label: its method plus the options that vary between that method's
trials in this study (``s-lsr1 [m=5, Option I]``), so that seeds of one configuration share a label.

A *tuned* study (a study file with a ``tuning:`` block, :mod:`sqn_ray.study.tuning`) holds two stages in the same
files, told apart by the ``stage`` column: ``"tuning"`` (each method's configurations on the tuning seeds,
``tuning_config`` their number within the method) and ``"evaluation"`` (each method's chosen configuration on
fresh seeds); a plain study's trials are ``"main"`` (also files written before stages existed). Labels are made
within a stage: a tuning configuration is ``s-lsr1 [#3, m=8, r=0.01]``, an evaluation trial its method alone
when, as usual, the method has one configuration there (``s-lsr1 [Option II]`` and so on when options were tuned
apart, ``tuning.separate``). :meth:`StudyResults.comparison` is the one place that
decides which trials compare the methods (a tuned study's evaluation stage; any other study: every trial):

    >>> results = load_results("results/tuned-toy")
    >>> results.stages                      # ['tuning', 'evaluation']
    >>> study = results.comparison()        # what the report's tables, figures and findings compare
    >>> results.stage("tuning").trials      # the tuning stage alone (figure 8, analysis.tuning)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sqn_ray.io import read_parquet_metadata as read_metadata  # one reader for every Parquet the project writes
from sqn_ray.optim.registry import METHODS, method_family, methods_of
from sqn_ray.records import RECORD_FIELDS
from sqn_ray.study.results import ACCURACY, ID_COLUMNS, TRIAL_COLUMNS, record_arrow_schema

__all__ = ["StudyResults", "load_results", "read_metadata", "load_eigen", "problem_size", "config_label",
           "options_text", "family", "METHOD_ORDER", "SAMPLED", "CLASSICAL", "ANCHORS", "LN2", "ITERATIONS_FILE",
           "TRIALS_FILE", "EIGEN_FILE", "STAGES", "MAIN", "TUNING", "EVALUATION"]

ITERATIONS_FILE = "iterations.parquet"
TRIALS_FILE = "trials.parquet"
EIGEN_FILE = "eigen.parquet"
LN2 = math.log(2.0)

#: the stages a trial can belong to (the ``stage`` column), in protocol order: a plain study's, then a tuned
#: study's two (``sqn_ray.study.spec.STAGES``)
MAIN, TUNING, EVALUATION = "main", "tuning", "evaluation"
STAGES = (MAIN, TUNING, EVALUATION)
#: the columns that place a trial in its stage (absent from files written before stages: filled in on load)
STAGE_COLUMNS = ("stage", "tuning_config")

#: the registry's methods in the order figures and tables list them (unknown methods follow, sorted), and
#: their families: all from the method registry, the one place that names methods
METHOD_ORDER = METHODS
SAMPLED = methods_of("sampled QN")
CLASSICAL = methods_of("classical QN")
FIRST_ORDER = methods_of("first order")
ANCHORS = methods_of("external anchor")

#: columns of iterations.parquet the analysis uses (missing ones are added as NaN): the platform's typed
#: per-iteration columns (the record schema of sqn_ray.records, plus accuracy) in the file's order, but the
#: optional fields and the flags (a missing bool column is not NaN)
ITERATION_COLUMNS = tuple(f.name for f in record_arrow_schema()
                          if f.name == ACCURACY or (f.name in RECORD_FIELDS and not pa.types.is_boolean(f.type)))
#: every per-iteration column the platform writes for the record (never a hyperparameter)
_RECORD_COLUMNS = frozenset(f.name for f in record_arrow_schema())
#: trials.parquet columns that are results or bookkeeping, not hyperparameters
#: (the platform's own list, so that a column it adds, such as a data-parallel trial's, is never taken for one)
_TRIAL_RESULT_COLUMNS = {*ID_COLUMNS, "seed", *TRIAL_COLUMNS, *STAGE_COLUMNS}
_OPTION_SHORT = {"memory": "m", "radius": "r"}


def family(method: str) -> str:
    """sampled / classical / first-order / anchor (the registry's family): the line style of a method in the
    figures; "other" for a method the registry does not know."""
    return method_family(method)


def _method_rank(method: str) -> tuple:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def problem_size(name: str) -> dict[str, Any]:
    """``{"n", "d", "target"}`` of a named problem built from the problem library (kept for notebooks; the
    analysis reads a study's own record instead: :meth:`StudyResults.problem_size`). See
    :func:`analysis.eigen.library_problem_size`."""
    from .eigen import library_problem_size

    return library_problem_size(name)


def _read(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise ValueError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None


def load_eigen(path: str | Path) -> pd.DataFrame:
    """``eigen.parquet`` (columns point, iteration, matrix, rank, eigenvalue, ...), checked."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such eigenvalue file (make one with `sqn-ray eigen --out {path}`)")
    df = _read(path)
    missing = {"point", "iteration", "matrix", "rank", "eigenvalue"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not an eigenvalue file: missing columns {sorted(missing)}")
    return df


def _fmt_value(v) -> str:
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        return f"{v:g}"
    return str(v)


def options_text(options: dict) -> str:
    """Options as a label shows them: ``m=5, r=0.01, Option I`` (the paper's axes first, then by name)."""
    parts = []
    for k in sorted(options, key=lambda k: (["memory", "radius", "sampling"] + [k]).index(k)):
        v = options[k]
        if k == "sampling":
            parts.append({"grad-diff": "Option I", "hvp": "Option II"}.get(v, f"sampling={v}"))
        else:
            parts.append(f"{_OPTION_SHORT.get(k, k)}={_fmt_value(v)}")
    return ", ".join(parts)


def config_label(method: str, options: dict, tuning_config: int | None = None) -> str:
    """``method`` or ``method [m=5, r=0.01, Option I]`` from the options that distinguish the config; a tuning
    configuration leads with its number: ``method [#3, m=5]``."""
    parts = ([f"#{int(tuning_config)}"] if tuning_config is not None else []) + (
        [options_text(options)] if options else [])
    return f"{method} [{', '.join(parts)}]" if parts else method


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


@dataclass
class StudyResults:
    """A study's results, as :func:`load_results` returns them.

    Attributes:
        path: the study folder.
        iterations: one row per trial × iteration (``iterations.parquet``), sorted by trial and iteration; the
            record's columns (missing ones NaN), ``config``, ``family``, the option columns and
            ``accuracy_filled`` (the last evaluated accuracy carried forward within a trial).
        trials: one row per trial (``trials.parquet``, plus summaries derived from the iterations for trials it
            does not list yet, status ``"running"``): status, final/best loss and accuracy, budgets used, the
            ``*_to_target`` columns, ``config`` (method + the options that vary among that method's trials),
            ``family``, ``solved`` (bool) and the option columns.
        eigen: ``eigen.parquet`` (the figure-5 eigenvalues), or None when there is none.
        metadata: the Parquet files' key-value metadata (study spec and text, problem sizes, versions, git
            revision), decoded.
        options: the hyperparameter columns, sorted.
        sources: file name -> the path each table was read from.

    ``name``, ``description``, ``problems``, ``methods``, ``configs``, ``running``, ``stages`` and ``tuning`` are
    derived from these; :meth:`of` restricts the results to some methods or configs, :meth:`stage` to one stage
    of a tuned study, and :meth:`comparison` to the trials that compare the methods.
    """

    path: Path
    iterations: pd.DataFrame
    trials: pd.DataFrame
    eigen: pd.DataFrame | None = None
    metadata: dict = field(default_factory=dict)
    options: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        spec = self.metadata.get("sqn_ray.study")
        if isinstance(spec, dict) and spec.get("name"):
            return str(spec["name"])
        names = self.trials["study"].dropna().unique() if "study" in self.trials else []
        return str(names[0]) if len(names) else self.path.name

    def problem_size(self, name: str) -> dict[str, Any]:
        """``{"n", "d", "target"}`` of a problem as the study's trials built it (the results' ``sqn_ray.problems``
        metadata; None values for files written before it was recorded). No problem is built here."""
        known = self.metadata.get("sqn_ray.problems")
        entry = known.get(name) if isinstance(known, dict) else None
        if not isinstance(entry, dict):
            return {"n": None, "d": None, "target": None}
        return {"n": entry.get("n"), "d": entry.get("d"), "target": entry.get("target_accuracy")}

    @property
    def description(self) -> str:
        """The study file's description: stored once, in the file's text (``sqn_ray.study_yaml``); files
        written before that keep it in the normalized study too."""
        spec = self.metadata.get("sqn_ray.study")
        if isinstance(spec, dict) and "description" in spec:
            return str(spec["description"])
        text = self.metadata.get("sqn_ray.study_yaml")
        if not isinstance(text, str):
            return ""
        from sqn_ray.study.spec import StudySpecError, read_yaml

        try:
            data = read_yaml(text)
        except StudySpecError:
            return ""
        return str(data.get("description", "")) if isinstance(data, dict) else ""

    @property
    def problems(self) -> list[str]:
        order = {"toy-small": 0, "toy-medium": 1, "toy-large": 2}
        return sorted(self.trials["problem"].dropna().unique(), key=lambda p: (order.get(p, 9), p))

    @property
    def methods(self) -> list[str]:
        return sorted(self.trials["method"].dropna().unique(), key=_method_rank)

    @property
    def configs(self) -> list[str]:
        """Config labels in display order (method order, then stage, configuration number and option values)."""
        t = self.trials.drop_duplicates("config")
        if "stage" in t and "tuning_config" in t:
            rank = {s: i for i, s in enumerate(STAGES)}
            t = t.assign(_stage=t["stage"].map(lambda s: rank.get(s, len(STAGES))),
                         _number=t["tuning_config"].astype("Float64").fillna(-1.0).astype(float))
            return list(t.sort_values(["_method_rank", "_stage", "_number", "_option_key"], kind="stable")["config"])
        return list(t.sort_values(["_method_rank", "_option_key"])["config"])

    @property
    def running(self) -> int:
        return int((self.trials["status"] == "running").sum())

    def of(self, values, column: str = "method") -> "StudyResults":
        """The same study restricted to some methods (or values of another ``column``, e.g. ``config``): a
        view for figures that compare a subset."""
        values = [values] if isinstance(values, str) else list(values)
        return StudyResults(self.path, self.iterations[self.iterations[column].isin(values)],
                     self.trials[self.trials[column].isin(values)], self.eigen, self.metadata, self.options,
                     self.sources)

    @property
    def stages(self) -> list[str]:
        """The stages the trials belong to, in :data:`STAGES` order: ``["main"]`` for a plain study,
        ``["tuning", "evaluation"]`` for a tuned one (``["tuning"]`` while its tuning stage runs)."""
        present = set(self.trials["stage"].dropna()) if "stage" in self.trials else set()
        present = present or {MAIN}
        return [s for s in STAGES if s in present] + sorted(present - set(STAGES))

    @property
    def tuned(self) -> bool:
        """Whether the results hold a tuning stage."""
        return TUNING in self.stages

    @property
    def tuning(self) -> dict | None:
        """A tuned study's ``sqn_ray.tuning`` metadata (decoded): ``trials`` (B configurations per method),
        ``seeds`` (the tuning seeds), ``metric`` and ``mode`` (what the choice was made on),
        ``configurations`` (method -> the options of each configuration, in number order), ``chosen`` (method,
        or variant ``s-lsr1/sampling=hvp`` when options are tuned apart, -> ``{"tuning_config", "options",
        "score"}``) and, if any, ``separate`` (the options tuned apart); None for a plain study."""
        value = self.metadata.get("sqn_ray.tuning")
        return value if isinstance(value, dict) else None

    def stage(self, name: str) -> "StudyResults":
        """The trials of one stage (``"tuning"``, ``"evaluation"`` or ``"main"``), as a view like :meth:`of`.

        Raises:
            ValueError: for a name not in :data:`STAGES` (a known stage the results lack gives an empty view).
        """
        if name not in STAGES:
            raise ValueError(f"stage={name!r} is not one of {STAGES}; these results hold {self.stages}")
        if "stage" not in self.trials:  # results built by hand, without the column: every trial is "main"
            return self if name == MAIN else self.of([], column="trial_id")
        return self.of(name, column="stage")

    def comparison(self) -> "StudyResults":
        """The trials that compare the methods: a tuned study's evaluation stage (each method's chosen
        configuration on fresh seeds) when it has one, else every trial (a plain study; a tuned study whose
        evaluation has not started). The one place this is decided: the report's tables, figures, findings
        and profiles are computed from it, the tuning stage only for figure 8 (:mod:`analysis.tuning`)."""
        return self.stage(EVALUATION) if EVALUATION in self.stages else self


def _option_columns(trials: pd.DataFrame, iterations: pd.DataFrame) -> list[str]:
    """Hyperparameter columns: from the platform's ``cell`` JSON when present, else by elimination."""
    names: set[str] = set()
    if "cell" in trials and trials["cell"].notna().any():
        for text in trials["cell"].dropna().unique():
            try:
                names.update(json.loads(text).get("options", {}))
            except (json.JSONDecodeError, AttributeError):
                pass
    if not names:
        cols = trials.columns if len(trials.columns) else iterations.columns
        names = {c for c in cols if c not in _TRIAL_RESULT_COLUMNS and c not in _RECORD_COLUMNS
                 and not c.startswith("t_")}
    names.update(("memory", "radius", "sampling"))  # the paper's axes, always columns of the platform's files
    return sorted(n for n in names if n in trials.columns or n in iterations.columns)


def _derive_trials(iterations: pd.DataFrame, options: list[str], problems: dict | None = None) -> pd.DataFrame:
    """One row per trial from its iterations (used when trials.parquet is missing or lags behind);
    ``problems``: the results' ``sqn_ray.problems`` metadata (each problem's target accuracy)."""
    rows = []
    for tid, t in iterations.groupby("trial_id", sort=True):
        t = t.sort_values("iteration")
        first = t.iloc[0]
        acc = t["accuracy"]
        target = ((problems or {}).get(str(first["problem"])) or {}).get("target_accuracy")
        hit = t[acc >= target] if target is not None else t.iloc[:0]
        loss = t["loss"].replace([np.inf, -np.inf], np.nan)
        row = {k: first.get(k) for k in ("study", "cell", "variant", "problem", "method", "seed", *STAGE_COLUMNS,
                                          *options) if k in t}
        row.update(trial_id=tid, status="solved" if len(hit) else "unknown",
                   final_loss=t["loss"].iloc[-1], best_loss=loss.min(),
                   final_accuracy=acc.dropna().iloc[-1] if acc.notna().any() else np.nan,
                   best_accuracy=acc.max(), iterations=t["iteration"].iloc[-1],
                   grad_equivalents=t["grad_equivalents"].iloc[-1], wall_time=t["wall_time"].iloc[-1],
                   target_accuracy=target if target is not None else np.nan,
                   iters_to_target=hit["iteration"].iloc[0] if len(hit) else np.nan,
                   grad_equivalents_to_target=hit["grad_equivalents"].iloc[0] if len(hit) else np.nan,
                   wall_time_to_target=hit["wall_time"].iloc[0] if len(hit) else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _stage_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``stage`` (``"main"`` where the file has none) and ``tuning_config`` (nullable Int64)."""
    df = df.copy()
    df["stage"] = (df["stage"].fillna(MAIN) if "stage" in df else pd.Series(MAIN, index=df.index)).astype(str)
    number = pd.to_numeric(df["tuning_config"], errors="coerce") if "tuning_config" in df else np.nan
    df["tuning_config"] = pd.Series(number, index=df.index, dtype="Float64").astype("Int64")
    return df


def _label_configs(trials: pd.DataFrame, options: list[str]) -> pd.DataFrame:
    """``config`` labels, made within each stage: the method plus the options that vary among its trials of
    that stage (a tuning configuration also its number), so an evaluation trial reads as its method alone."""
    trials = trials.copy()
    labels, keys = {}, {}
    for (stage, method), t in trials.groupby(["stage", "method"], sort=False):
        varying = [o for o in options
                   if o in t and t[o].map(lambda v: "∅" if _is_missing(v) else repr(v)).nunique() > 1]
        for idx, row in t.iterrows():
            opts = {o: row[o] for o in varying if not _is_missing(row[o])}
            number = row["tuning_config"] if stage == TUNING and not _is_missing(row["tuning_config"]) else None
            labels[idx] = config_label(str(method), opts, number)
            keys[idx] = ((() if number is None else ((0, float(number)),))
                         + tuple((0, float(v)) if isinstance(v, (int, float)) else (1, str(v)) for v in opts.values()))
    trials["config"] = pd.Series(labels, dtype=object)
    trials["_option_key"] = pd.Series(keys, dtype=object).map(repr)
    trials["_method_rank"] = trials["method"].map(lambda m: _method_rank(str(m)))
    trials["family"] = trials["method"].map(lambda m: family(str(m)))
    return trials


def _live_iterations(path: Path, it_path: Path) -> pd.DataFrame | None:
    """The rows of a study whose part files are newer than its compacted ``iterations.parquet`` (it is running,
    or its driver was killed): read from the parts (:func:`sqn_ray.study.read_live`); None otherwise."""
    from sqn_ray.study.results import live_files, read_live

    files = live_files(path)
    if not files:
        return None
    if it_path.is_file() and it_path.stat().st_mtime_ns >= max(f.stat().st_mtime_ns for f in files):
        return None
    try:
        return read_live(path).to_pandas()
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: the running study's parts cannot be read ({e})") from e


def load_results(path: str | Path, *, eigen: str | Path | None = None) -> StudyResults:
    """Read a study folder (see the module docstring); partial and running studies load too (a running
    study's rows from its part files, when they are newer than its ``iterations.parquet``).

    Args:
        path: the study's output folder (``sqn-ray study run --out``), holding ``iterations.parquet`` and/or
            ``trials.parquet``.
        eigen: an ``eigen.parquet`` to load; None loads ``path/eigen.parquet`` when it exists.

    Returns:
        A :class:`StudyResults` of the iterations, the trials (derived from the iterations when
        ``trials.parquet`` is missing), the eigenvalues and the metadata.

    Raises:
        ValueError: with the reason, when ``path`` does not exist or is not a folder, holds neither Parquet
            file, a file is not readable Parquet, ``iterations.parquet`` lacks ``trial_id``, ``problem`` or
            ``method``, the study has no trials yet, or ``eigen`` (when given) is missing or not an
            eigenvalue file.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such study folder")
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder; give the study's output folder (the one holding "
                         f"{ITERATIONS_FILE} and {TRIALS_FILE})")
    it_path, tr_path = path / ITERATIONS_FILE, path / TRIALS_FILE
    live = _live_iterations(path, it_path)  # a running (or killed) study: its parts are newer than the last
    if not it_path.is_file() and not tr_path.is_file() and live is None:  # compacted file
        raise ValueError(f"{path}: no {ITERATIONS_FILE} or {TRIALS_FILE} here; is it a study output folder? "
                         f"(`sqn-ray study run FILE --out {path}` writes them)")
    sources, metadata = {}, {}
    if live is not None:
        iterations = live
        sources["live"] = str(path / ".parts")
    else:
        iterations = _read(it_path) if it_path.is_file() else pd.DataFrame()
    trials = _read(tr_path) if tr_path.is_file() else pd.DataFrame()
    for p in (tr_path, it_path):
        if p.is_file():
            sources[p.name] = str(p)
            metadata = {**read_metadata(p), **metadata}
    if len(iterations.columns) == 0:
        iterations = pd.DataFrame(columns=["trial_id", "problem", "method", "seed", *ITERATION_COLUMNS])
    for c in ITERATION_COLUMNS:
        if c not in iterations:
            iterations[c] = np.nan
    for c in ("trial_id", "problem", "method"):
        if c not in iterations:
            raise ValueError(f"{it_path}: missing column {c!r}; not a study's iterations file")
    options = _option_columns(trials, iterations)
    problems = metadata.get("sqn_ray.problems") if isinstance(metadata.get("sqn_ray.problems"), dict) else {}

    if len(trials.columns) == 0:
        trials = _derive_trials(iterations, options, problems) if len(iterations) else pd.DataFrame()
    else:  # summaries only for trials the trials file does not list yet (a study being written)
        unlisted = iterations[~iterations["trial_id"].isin(trials["trial_id"])]
        if len(unlisted):
            missing = _derive_trials(unlisted, options, problems)
            trials = pd.concat([trials, missing.assign(status="running")], ignore_index=True)
    if len(trials) == 0:
        raise ValueError(f"{path}: the study has no trials yet")
    for c in ("status", "final_loss", "best_loss", "final_accuracy", "best_accuracy", "iterations",
              "grad_equivalents", "wall_time", "target_accuracy", "iters_to_target", "grad_equivalents_to_target",
              "wall_time_to_target", "seed"):
        if c not in trials:
            trials[c] = np.nan
    trials = _label_configs(_stage_columns(trials.reset_index(drop=True)), options)
    trials["solved"] = trials["iters_to_target"].notna() | (trials["status"] == "solved")

    iterations = iterations.drop(columns=[c for c in ("config", "family") if c in iterations])
    iterations = iterations.merge(trials[["trial_id", "config", "family"]], on="trial_id", how="left")
    by_trial = trials.set_index("trial_id")
    for c in STAGE_COLUMNS:  # the trials are the authority on a trial's stage (a file without one: "main")
        iterations[c] = iterations["trial_id"].map(by_trial[c])
    iterations = iterations.sort_values(["trial_id", "iteration"], kind="stable").reset_index(drop=True)
    # accuracy is evaluated every `accuracy_every` iterations: carry the last value forward within a trial
    iterations["accuracy_filled"] = iterations.groupby("trial_id")["accuracy"].ffill()

    eigen_df = None
    eigen_path = Path(eigen) if eigen is not None else path / EIGEN_FILE
    if eigen is not None or eigen_path.is_file():
        eigen_df = load_eigen(eigen_path)
        sources[EIGEN_FILE] = str(eigen_path)
        metadata.setdefault("sqn_ray.eigen", read_metadata(eigen_path).get("sqn_ray.eigen"))
    return StudyResults(path=path, iterations=iterations, trials=trials, eigen=eigen_df, metadata=metadata,
                 options=options, sources=sources)



# the earlier names, kept for notebooks and scripts (sqn_ray.study.spec has a StudySpec / load_study_spec)
Study = StudyResults
load_study = load_results
