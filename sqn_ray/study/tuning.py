"""A fair comparison protocol: every method tuned with the same budget, then judged on fresh seeds.

A study file with a ``tuning:`` block is a *tuned study* (the protocol of DeepOBS and AlgoPerf)::

    methods:                              # each method's space: lists and ranges, over its own options
      gd:     {lr: {loguniform: [1.0e-3, 10.0]}}
      s-lsr1: {memory: [4, 8, 16, 32], initial_trust_radius: {loguniform: [0.1, 10.0]}}
      lsr1:   {}                          # nothing to tune: its one configuration
    seeds: 10                             # the evaluation seeds
    tuning:
      trials: 8                           # configurations per method: the same budget for every method
      seeds: 2                            # tuning seeds: a count (10000, 10001) or a list; never evaluation seeds
      seed: 0                             # the generator of the draws
      metric: {name: best_loss, mode: min}   # what the choice is made on (default: the study's metric)
      separate: [sampling]                # tuned apart: each value its own budget and choice (Options I, II)

It runs in two stages, each an ordinary study (resumable, in Parquet) in a subfolder of the output folder:

1. ``DIR/tuning/``: each method's configurations (:func:`draw_configurations`) on every problem and tuning seed;
2. ``DIR/evaluation/``: each method's chosen configuration (:func:`choose`) on every problem and evaluation seed.

``DIR/iterations.parquet`` and ``DIR/trials.parquet`` then hold both stages (:func:`combine`), told apart by the
``stage`` column (``"tuning"``, ``"evaluation"``), with ``tuning_config`` the configuration's number within its
method; their ``sqn_ray.tuning`` metadata (and ``DIR/tuning.json``) record the configurations, every
configuration's score and the choice. A plain study's rows have ``stage`` ``"main"``.

Pure functions over the validated :class:`~sqn_ray.study.spec.StudySpec` and Parquet files; no Ray.
"""
from __future__ import annotations

import itertools
import json
import math
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import atomic_path
from .results import METRIC_COLUMNS, _conform
from .spec import Distribution, StudySpec

__all__ = ["TUNING_DIR", "EVALUATION_DIR", "RECORD_FILE", "variant", "draw_configurations", "stage_spec",
           "stage_trials", "scores", "choose", "record", "chosen_configurations", "combine", "read_record"]

TUNING_DIR = "tuning"
EVALUATION_DIR = "evaluation"
RECORD_FILE = "tuning.json"
ROW_GROUP_ROWS = 65536


def _method_rng(seed: int, method: str) -> np.random.Generator:
    """The draws of one method: its own stream (adding a method to the study changes no other's draws)."""
    return np.random.default_rng([seed, zlib.crc32(method.encode())])


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def variant(method: str, options: dict, separate=()) -> str:
    """What a configuration is tuned as: its method, plus the values of the ``tuning.separate`` options it has
    (``"s-lsr1/sampling=hvp"``); each variant gets its own budget and its own choice."""
    tags = [f"{k}={options[k]}" for k in sorted(separate) if k in options]
    return "/".join([method, *tags])


def _draw(axes: dict, budget: int, rng: np.random.Generator) -> list[dict]:
    """``budget`` configurations of one space (a small grid: all its cells; see :func:`draw_configurations`)."""
    names = sorted(axes)
    if not any(isinstance(axes[n], Distribution) for n in names):
        sizes = [len(axes[n]) for n in names]
        cells = math.prod(sizes)
        if cells <= budget:
            return [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]
        combos = []  # mixed-radix decoding of cells drawn without repetition (never building the product)
        for index in rng.choice(cells, size=budget, replace=False):
            index, combo = int(index), []
            for n, size in zip(reversed(names), reversed(sizes)):
                index, at = divmod(index, size)
                combo.append(axes[n][at])
            combos.append(dict(zip(names, reversed(combo))))
        return combos
    return [{n: (axes[n].sample(rng) if isinstance(axes[n], Distribution)
                 else axes[n][int(rng.integers(len(axes[n])))]) for n in names} for _ in range(budget)]


def draw_configurations(study: StudySpec) -> dict[str, tuple[tuple[int, dict], ...]]:
    """Each method's tuning configurations, numbered in the order drawn.

    A method whose space is a grid (lists only) of at most ``tuning.trials`` cells gets every cell, in grid
    order (a method with nothing to tune: its one configuration); a larger grid, ``trials`` cells drawn
    without repetition; a space with ranges, ``trials`` draws (ranges as in random search, lists uniformly).
    The ``tuning.separate`` options are not drawn: each of their values (each combination) gets that budget
    of its own, numbered after the previous value's.

    Args:
        study: a tuned study (``study.tuning`` set).

    Returns:
        method -> ((number, {option: value}), ...), options in name order; deterministic in
        ``tuning.seed``, the method's name and the separate options' values.
    """
    budget, seed = study.tuning["trials"], study.tuning["seed"]
    separate = study.tuning.get("separate", ())
    out = {}
    for method, axes in study.methods.items():
        apart = sorted(n for n in separate if n in axes)
        drawn = {n: v for n, v in axes.items() if n not in apart}
        configs: list[dict] = []
        for values in itertools.product(*(axes[n] for n in apart)):
            fixed = dict(zip(apart, values))
            rng = _method_rng(seed, variant(method, fixed, apart))  # with nothing apart: the method's own stream
            configs += [dict(sorted({**c, **fixed}.items())) for c in _draw(drawn, budget, rng)]
        out[method] = tuple((i, {k: _plain(v) for k, v in c.items()}) for i, c in enumerate(configs))
    return out


def stage_spec(study: StudySpec, stage: str, configurations: dict | None = None) -> StudySpec:
    """The study one stage runs: an ordinary study over explicit configurations.

    Args:
        study: the tuned study.
        stage: ``"tuning"`` (the drawn configurations on the tuning seeds, chosen on ``tuning.metric``) or
            ``"evaluation"`` (``configurations`` on the evaluation seeds, ranked by the study's metric).
        configurations: for ``"evaluation"``, method -> ((number, options),), the chosen ones.

    Returns:
        A :class:`StudySpec` with ``stage`` set, ``tuning`` None and the configurations as its grid.
    """
    if stage == "tuning":
        configurations = draw_configurations(study)
        seeds, metric, mode = tuple(study.tuning["seeds"]), study.tuning["metric"], study.tuning["mode"]
    elif stage == "evaluation":
        if configurations is None:
            raise ValueError("the evaluation stage needs the chosen configurations")
        seeds, metric, mode = study.seeds, study.metric, study.mode
    else:
        raise ValueError(f"stage={stage!r} is not one of ('tuning', 'evaluation')")
    methods = {m: {opt: tuple(dict.fromkeys(o[opt] for _, o in configs if opt in o))
                   for opt in sorted({k for _, o in configs for k in o})}
               for m, configs in configurations.items()}
    return replace(study, methods=methods, seeds=seeds, metric=metric, mode=mode, tuning=None, stage=stage,
                   configurations=configurations)


def stage_trials(study: StudySpec) -> dict[str, int]:
    """The trials of each stage of a tuned study: ``{"tuning": n, "evaluation": n}``."""
    problems = len(study.problems)
    drawn = draw_configurations(study)
    separate = study.tuning.get("separate", ())
    variants = {variant(m, o, separate) for m, configs in drawn.items() for _, o in configs}
    return {"tuning": sum(len(c) for c in drawn.values()) * problems * len(study.tuning["seeds"]),
            "evaluation": len(variants) * problems * len(study.seeds)}


def scores(trials: pa.Table, metric: str, mode: str, configurations: dict | None = None,
           separate=()) -> dict[str, dict[str, dict[int, float]]]:
    """The selection score of every tuning configuration: the mean over tuning seeds of its trials' metric.

    A trial without a finite value (diverged, failed) scores the worst possible value (+∞ for ``min``, −∞ for
    ``max``), and so does its configuration's mean.

    Args:
        trials: the tuning stage's ``trials.parquet`` (columns problem, method, tuning_config and the metric's).
        metric, mode: a name of :data:`~sqn_ray.study.spec.METRICS` and ``"min"`` / ``"max"``.
        configurations, separate: the drawn configurations (:func:`draw_configurations`) and the
            ``tuning.separate`` options: each value of those a configuration sets is a variant of its own.

    Returns:
        variant (:func:`variant`: the method, with the separate options' values) -> problem -> configuration
        number -> score.
    """
    worst = math.inf if mode == "min" else -math.inf
    values: dict[tuple, list[float]] = {}
    options = {m: dict(c) for m, c in (configurations or {}).items()}
    columns = trials.select(["method", "problem", "tuning_config", METRIC_COLUMNS[metric]]).to_pydict()
    for method, problem, number, value in zip(*columns.values()):
        ok = value is not None and math.isfinite(value)
        name = variant(method, options[method][int(number)], separate) if separate else method
        values.setdefault((name, problem, int(number)), []).append(float(value) if ok else worst)
    out: dict[str, dict[str, dict[int, float]]] = {}
    for (method, problem, number), vals in sorted(values.items()):
        out.setdefault(method, {}).setdefault(problem, {})[number] = (
            worst if worst in vals else float(np.mean(vals)))
    return out


#: scores this close (relative) are a tie: configurations that differ only in round-off (e.g. in r under Option II,
#: which the trajectory is invariant to) must not be told apart by their last bits
TIE_TOLERANCE = 1e-9


def _better(a: float, b: float) -> bool:
    """a < b by more than :data:`TIE_TOLERANCE` (relative); infinities compare as they are."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return a < b
    return a < b - TIE_TOLERANCE * max(abs(a), abs(b))


def choose(config_scores: dict[str, dict[str, dict[int, float]]], mode: str) -> dict[str, dict[str, Any]]:
    """Each method's chosen configuration: the best mean rank across problems (ranked within each problem by
    score, ties sharing their mean rank; one problem: the best score); ties go to the earlier configuration.
    Scores within :data:`TIE_TOLERANCE` of each other (relative) are ties.

    Args:
        config_scores: :func:`scores`' value.
        mode: ``"min"`` or ``"max"`` (which scores are better).

    Returns:
        method -> ``{"tuning_config": number, "mean_rank": r, "scores": {problem: score}, "score": mean of
        those}``.
    """
    sign = 1.0 if mode == "min" else -1.0
    chosen = {}
    for method, by_problem in config_scores.items():
        numbers = sorted(set().union(*(set(s) for s in by_problem.values())))
        ranks = {n: 0.0 for n in numbers}
        for problem_scores in by_problem.values():
            keyed = {n: sign * problem_scores.get(n, math.inf * sign) for n in numbers}
            for n in numbers:  # 1 + the better ones + half the ties (mean rank)
                better = sum(1 for m in numbers if _better(keyed[m], keyed[n]))
                ties = sum(1 for m in numbers if not _better(keyed[m], keyed[n]) and not _better(keyed[n], keyed[m]))
                ranks[n] += 1 + better + (ties - 1) / 2
        best = min(numbers, key=lambda n: (ranks[n], n))
        per_problem = {p: s[best] for p, s in by_problem.items() if best in s}
        chosen[method] = {"tuning_config": best, "mean_rank": ranks[best] / len(by_problem),
                          "scores": per_problem, "score": float(np.mean(list(per_problem.values())))}
    return chosen


def read_record(out: str | Path) -> dict | None:
    """``DIR/tuning.json``: the configurations, their scores and the choice (None before the choice)."""
    path = Path(out) / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_record(out: str | Path, record: dict) -> None:
    with atomic_path(Path(out) / RECORD_FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str))


def record(study: StudySpec, configurations: dict, config_scores: dict, chosen: dict) -> dict:
    """What ``tuning.json`` and the ``sqn_ray.tuning`` metadata hold."""
    method_of = {v: v.split("/", 1)[0] for v in chosen}
    return {"trials": study.tuning["trials"], "seeds": list(study.tuning["seeds"]), "seed": study.tuning["seed"],
            "metric": study.tuning["metric"], "mode": study.tuning["mode"],
            "separate": list(study.tuning.get("separate", ())),
            "configurations": {m: [o for _, o in c] for m, c in configurations.items()},
            "scores": {v: {p: {str(n): s for n, s in by_n.items()} for p, by_n in by_p.items()}
                       for v, by_p in config_scores.items()},
            "chosen": {v: {**c, "method": method_of[v],
                           "options": dict(configurations[method_of[v]][c["tuning_config"]][1])}
                       for v, c in chosen.items()}}


def chosen_configurations(record: dict) -> dict[str, tuple[tuple[int, dict], ...]]:
    """The evaluation stage's configurations from a :func:`record`: method -> its variants' choices."""
    out: dict[str, list] = {}
    for c in record["chosen"].values():
        out.setdefault(c["method"], []).append((c["tuning_config"], c["options"]))
    return {m: tuple(sorted(v, key=lambda x: x[0])) for m, v in out.items()}


def combine(out: str | Path, sources: list[Path], metadata: dict[bytes, bytes]) -> Path:
    """One file from the stages' files of the same kind (``iterations.parquet`` or ``trials.parquet``): their
    rows in stage order, one row group at a time (never a whole file in memory), columns unified (a column one
    stage lacks is null there), ``metadata`` as the schema metadata; written atomically to ``out``."""
    schemas = [pq.read_schema(s).remove_metadata() for s in sources]
    merged = pa.unify_schemas(schemas, promote_options="permissive")
    head = [n for n in schemas[0].names]
    schema = pa.schema([merged.field(n) for n in head + sorted(set(merged.names) - set(head))], metadata=metadata)
    out = Path(out)
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for source in sources:
                file = pq.ParquetFile(source)
                for group in range(file.num_row_groups):
                    writer.write_table(_conform(file.read_row_group(group), schema), row_group_size=ROW_GROUP_ROWS)
    return out
