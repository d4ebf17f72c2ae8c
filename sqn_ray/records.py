"""The per-iteration record, defined once: every field an optimizer run records for each iterate.

``ITERATION_RECORD`` is the one home of the record's fields: their names and order (the columns of
``minimize(...).history``), their Arrow types (the columns of a study's ``iterations.parquet``), their units
and meaning (the README's table, :func:`doc_table`), and the default a step records for a field it does not
measure (:func:`step_defaults`). The optimizer, the study platform, the CLI and the analysis all read their
lists from here; a field added to the tuple appears in all of them.

Ray-free and pyarrow-free: the Arrow types are names (``"int64"``, ``"float64"``, ``"bool"``) that the
platform's :mod:`sqn_ray.study.results` turns into pyarrow types.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Field", "ITERATION_RECORD", "RECORD_FIELDS", "FIELDS", "ARROW_TYPES", "SOURCES", "record_names",
           "step_defaults", "arrow_types", "leading_names", "metric_names", "doc_table"]

#: the Arrow type names a field may declare
ARROW_TYPES = ("int64", "float64", "bool")
#: who fills a field in, in the order a study's iterations.parquet lists its leading block: the loop (the
#: iterate's identity, loss and gradient norm), the objective's counters, the clock, the method's step
SOURCES = ("iterate", "counter", "clock", "step")


class _Required:
    """The default of a field every record carries (no step supplies it)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


@dataclass(frozen=True)
class Field:
    """One field of the record.

    ``arrow``: its Arrow type name (one of ARROW_TYPES); ``unit``: its unit ("" when a pure number);
    ``doc``: what it means; ``default``: what a step records when it does not measure it (``REQUIRED`` for
    fields the loop or the counters always fill in); ``source``: who fills it in (one of SOURCES);
    ``leading``: always a column of a study's ``iterations.parquet``, in its leading block (null where a
    method does not record it); ``optional``: recorded by some methods only (not in RECORD_FIELDS, not a
    column of every history); ``metric``: reported to Ray Tune as a live trial metric."""

    name: str
    arrow: str
    unit: str
    doc: str
    default: Any = REQUIRED
    source: str = "step"
    leading: bool = False
    optional: bool = False
    metric: bool = False

    def __post_init__(self):
        if self.arrow not in ARROW_TYPES:
            raise ValueError(f"Field {self.name!r}: arrow must be one of {ARROW_TYPES}, got {self.arrow!r}")
        if self.source not in SOURCES:
            raise ValueError(f"Field {self.name!r}: source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "step" and self.default is REQUIRED and not self.optional:
            raise ValueError(f"Field {self.name!r}: a step field needs the default a step records without it")


_NAN = math.nan

#: the record, in the order of a history's columns
ITERATION_RECORD: tuple[Field, ...] = (
    Field("iteration", "int64", "", "iterate index; 0 is the initial point", source="iterate", leading=True,
          metric=True),
    Field("loss", "float64", "", "F(w), the objective at the iterate", source="iterate", leading=True, metric=True),
    Field("grad_norm", "float64", "", "‖∇F(w)‖ (Euclidean)", source="iterate", leading=True, metric=True),
    Field("n_fun", "int64", "calls", "loss evaluations so far (with or without a gradient)", source="counter",
          leading=True),
    Field("n_grad", "int64", "calls", "gradients computed so far", source="counter", leading=True),
    Field("n_hvp", "int64", "products", "Hessian-vector products computed so far", source="counter", leading=True),
    Field("grad_equivalents", "float64", "gradients",
          "n_grad + n_hvp + ½ × loss-only evaluations so far (the paper's cost axis)", source="counter",
          leading=True, metric=True),
    Field("epochs", "float64", "data passes", "passes over the data so far (every evaluation of any kind)",
          source="counter", leading=True, metric=True),
    Field("step_size", "float64", "",
          "the step length: the line search's or the learning rate (NaN: none; 0: the search failed)", _NAN,
          leading=True),
    Field("trust_radius", "float64", "", "the trust radius Δ the step was tried with (NaN: no trust region)",
          _NAN, leading=True),
    Field("accepted", "bool", "", "whether the step was taken", True, leading=True),
    Field("pairs_kept", "int64", "pairs", "curvature pairs the model used", 0, leading=True),
    Field("s_norm", "float64", "",
          "mean column norm of the sampled S; for a path method, ‖s‖ of the step taken (NaN: no pairs)", _NAN,
          leading=True),
    Field("step_norm", "float64", "", "‖w_{k+1} − w_k‖", _NAN),
    Field("identity_fallback", "bool", "", "whether the model fell back to the identity (no pair survived)",
          False),
    Field("rho", "float64", "", "trust-region ratio actual / predicted reduction (NaN: no trust region)", _NAN),
    Field("inner_iters", "int64", "iterations", "inner iterations: CG steps or line-search evaluations", 0),
    Field("wall_time", "float64", "s", "optimizer wall time since the start", source="clock", leading=True,
          metric=True),
    Field("t_pairs", "float64", "s", "time of the step spent sampling curvature pairs", 0.0),
    Field("t_model", "float64", "s", "time of the step spent building the quasi-Newton model", 0.0),
    Field("t_search", "float64", "s", "time of the step spent in the line search or trust-region subproblem", 0.0),
    Field("t_grad", "float64", "s", "time of the step spent on the new iterate's loss and gradient", 0.0),
    Field("b0_gamma", "float64", "", "the initial matrix scale γ of a compact LSR1 model (B0 = γI)",
          optional=True),
)

#: name -> Field
FIELDS: dict[str, Field] = {f.name: f for f in ITERATION_RECORD}
if len(FIELDS) != len(ITERATION_RECORD):
    raise ValueError("ITERATION_RECORD names a field twice")


def record_names(*, optional: bool = False, record: tuple[Field, ...] | None = None) -> tuple[str, ...]:
    """The record's field names in order: those every record carries, and the optional ones too if asked."""
    return tuple(f.name for f in (ITERATION_RECORD if record is None else record) if optional or not f.optional)


#: the fields every record carries, in the order of a history's columns
RECORD_FIELDS: tuple[str, ...] = record_names()


def step_defaults(**known) -> dict:
    """A step's fields (every non-optional step field) with their defaults, updated with ``known``: what a
    step records for what it does not measure (NaN floats, ``accepted`` True, no pairs, no fallback, no inner
    iterations, zero timings)."""
    fields = {f.name: f.default for f in ITERATION_RECORD if f.source == "step" and not f.optional}
    fields.update(known)
    return fields


def arrow_types(*, optional: bool = True) -> dict[str, str]:
    """name -> Arrow type name of every field (the optional ones too unless told otherwise)."""
    return {f.name: f.arrow for f in ITERATION_RECORD if optional or not f.optional}


def leading_names() -> tuple[str, ...]:
    """The fields of a study's ``iterations.parquet`` leading block, in its order: by source (the iterate, the
    counters, the clock, the step), record order within a source."""
    leading = [f for f in ITERATION_RECORD if f.leading]
    return tuple(f.name for f in sorted(leading, key=lambda f: SOURCES.index(f.source)))


def metric_names() -> tuple[str, ...]:
    """The fields a study trial reports to Ray Tune as live metrics, in record order."""
    return tuple(f.name for f in ITERATION_RECORD if f.metric)


def doc_table() -> str:
    """The record as a Markdown table (the README's)."""
    lines = ["| field | type | unit | meaning |", "|---|---|---|---|"]
    for f in ITERATION_RECORD:
        doc = f.doc + (" (some methods only)" if f.optional else "")
        lines.append(f"| `{f.name}` | {f.arrow} | {f.unit} | {doc} |")
    return "\n".join(lines)
