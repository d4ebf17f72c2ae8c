"""The per-iteration record has one definition (sqn_ray.records) and every consumer reads it from there."""
from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import sqn_ray
from sqn_ray import records
from sqn_ray.optim import minimize as minimize_module
from sqn_ray.problems import get_problem
from sqn_ray.records import FIELDS, ITERATION_RECORD, RECORD_FIELDS, Field, record_names, step_defaults

ROOT = Path(__file__).resolve().parents[2]
#: what a record's value may be for each Arrow type name
PYTHON_TYPES = {"int64": (int,), "float64": (int, float), "bool": (bool,)}


@pytest.fixture(scope="module")
def runs():
    """Every registered method's records (as its callback saw them) and history on the toy problem."""
    problem = get_problem("toy-small")
    out = {}
    for method in sqn_ray.METHODS:
        seen = []
        res = sqn_ray.minimize(problem.oracle, problem.init(0), method, max_iters=3,
                               callback=lambda x, record, seen=seen: seen.append(dict(record)))
        out[method] = (seen, res.history)
    return out


def test_the_schema_is_todays_record():
    assert RECORD_FIELDS == record_names() == (
        "iteration", "loss", "grad_norm", "n_fun", "n_grad", "n_hvp", "grad_equivalents", "epochs", "step_size",
        "trust_radius", "accepted", "pairs_kept", "s_norm", "step_norm", "identity_fallback", "rho", "inner_iters",
        "wall_time", "t_pairs", "t_model", "t_search", "t_grad")
    assert minimize_module.RECORD_FIELDS is RECORD_FIELDS  # the public alias
    assert record_names(optional=True) == (*RECORD_FIELDS, "b0_gamma")
    assert set(FIELDS) == set(record_names(optional=True))
    assert all(f.unit is not None and f.doc for f in ITERATION_RECORD)


def test_the_counters_snapshot_is_the_schemas_counter_fields():
    from sqn_ray.objective import Counters

    counter_fields = tuple(f.name for f in ITERATION_RECORD if f.source == "counter")
    assert counter_fields == ("n_fun", "n_grad", "n_hvp", "grad_equivalents", "epochs")
    c = Counters(n_fun=3, n_grad=2, n_hvp=5, n_fun_alone=1, data_passes=1.5)
    snap = c.snapshot()
    assert tuple(snap) == counter_fields
    assert snap == {"n_fun": 3, "n_grad": 2, "n_hvp": 5, "grad_equivalents": 7.5, "epochs": 1.5}
    assert type(snap["n_fun"]) is int and type(snap["epochs"]) is float


def test_step_defaults_are_what_a_step_records_without_measuring():
    d = step_defaults()
    assert list(d) == ["step_size", "trust_radius", "accepted", "pairs_kept", "s_norm", "step_norm",
                       "identity_fallback", "rho", "inner_iters", "t_pairs", "t_model", "t_search", "t_grad"]
    nan = [k for k, v in d.items() if isinstance(v, float) and math.isnan(v)]
    assert nan == ["step_size", "trust_radius", "s_norm", "step_norm", "rho"]
    assert d["accepted"] is True and d["identity_fallback"] is False and d["pairs_kept"] == 0
    assert d["inner_iters"] == 0 and all(d[k] == 0.0 and isinstance(d[k], float) for k in
                                         ("t_pairs", "t_model", "t_search", "t_grad"))
    got = step_defaults(accepted=False, rho=0.5)
    assert got["accepted"] is False and got["rho"] == 0.5 and list(got) == list(d)


def test_the_methods_and_the_anchors_record_the_schemas_step_defaults():
    """The methods have no field list of their own: their step defaults are the schema's."""
    from sqn_ray.optim import external, methods

    assert methods._nan_fields is step_defaults and external._nan_fields is step_defaults


def test_bad_fields_are_refused():
    with pytest.raises(ValueError, match="arrow"):
        Field("x", "int32", "", "doc", 0)
    with pytest.raises(ValueError, match="source"):
        Field("x", "int64", "", "doc", 0, source="somewhere")
    with pytest.raises(ValueError, match="default"):
        Field("x", "int64", "", "doc")  # a step field without the default a step records


def test_every_method_records_exactly_the_schema(runs):
    for method, (seen, history) in runs.items():
        assert list(history.columns[:len(RECORD_FIELDS)]) == list(RECORD_FIELDS), method
        assert set(history.columns) <= set(record_names(optional=True)), method
        for rec in seen:
            assert set(RECORD_FIELDS) <= set(rec) <= set(record_names(optional=True)), (method, set(rec))
            for k, v in rec.items():
                ok = PYTHON_TYPES[FIELDS[k].arrow]
                assert isinstance(v, ok) and (FIELDS[k].arrow == "bool" or not isinstance(v, bool)), (method, k, v)


def test_iterations_parquet_types_every_record_field_as_declared(tmp_path, runs):
    from sqn_ray.study import results as R
    from sqn_ray.study.spec import parse_study

    study = parse_study({"name": "unit", "problems": ["toy-small"], "methods": {m: {} for m in sqn_ray.METHODS},
                         "seeds": 1}, source="unit.yaml", text="name: unit\n")
    store = R.ResultStore(tmp_path, study)
    for i, (method, (seen, _)) in enumerate(runs.items()):
        keys = list(dict.fromkeys(k for r in seen for k in r))
        chunk = {k: [r.get(k) for r in seen] for k in keys}
        chunk["accuracy"] = [0.5] * len(seen)
        cell = {"problem": "toy-small", "method": method, "seed": 0, "options": {}}
        store.start(f"t{i}", cell)
        store.add_rows(f"t{i}", cell, chunk, {"node_id": "n", "device": "cpu"})
        store.finish(f"t{i}", cell, {"status": "budget", "stop_reason": "iterations"})
    store.flush(force=True)
    schema = pq.read_schema(tmp_path / "iterations.parquet")
    for f in ITERATION_RECORD:
        assert f.name in schema.names, f.name
        assert schema.field(f.name).type == R.arrow_type(f.arrow), f.name
    # the leading block: the record's leading fields, accuracy after loss, right after the identity columns
    lead = list(R.RECORD_COLUMNS)
    start = schema.names.index("iteration")
    assert schema.names[start:start + len(lead)] == lead
    assert lead[:3] == ["iteration", "loss", "accuracy"]
    assert set(R.RECORD_COLUMNS) | set(R.OPTIMIZER_COLUMNS) == {*record_names(optional=True), "accuracy"}
    assert [f.name for f in R.record_arrow_schema()] == [*lead, *R.OPTIMIZER_COLUMNS]


def test_the_analysis_expects_the_record_columns():
    from analysis import load

    numeric = [n for n in RECORD_FIELDS if FIELDS[n].arrow != "bool"]
    assert set(load.ITERATION_COLUMNS) == {*numeric, "accuracy"}
    assert load._RECORD_COLUMNS == {*record_names(optional=True), "accuracy"}


def test_the_live_table_shows_record_fields():
    from sqn_ray.cli import LiveTable

    names = [c[0] for c in LiveTable.COLUMNS]
    assert set(names) - {"accuracy"} <= set(RECORD_FIELDS)


def test_the_tune_metrics_are_the_schemas():
    trainable = pytest.importorskip("sqn_ray.study.trainable")
    assert trainable._RECORD_METRICS == records.metric_names() == (
        "iteration", "loss", "grad_norm", "grad_equivalents", "epochs", "wall_time")


def test_a_field_added_to_the_schema_appears_everywhere():
    """Every consumer reads the schema object: a new field shows up in the history, the Parquet types and the
    analysis' columns with no other change (run in a fresh interpreter with a patched sqn_ray.records)."""
    script = textwrap.dedent('''
        import importlib.util, sys
        path = sys.argv[1] + "/sqn_ray/records.py"
        text = open(path).read()
        anchor = "\\n)\\n\\n#: name -> Field"
        assert text.count(anchor) == 1
        extra = ('    Field("t_extra", "float64", "s", "a new timing", 0.0),\\n'
                 '    Field("lead_extra", "int64", "", "a new leading field", 0, leading=True, metric=True),')
        text = text.replace(anchor, "\\n" + extra + anchor)
        spec = importlib.util.spec_from_loader("sqn_ray.records", loader=None, origin=path)
        mod = importlib.util.module_from_spec(spec)
        mod.__file__ = path
        sys.modules["sqn_ray.records"] = mod
        exec(compile(text, path, "exec"), mod.__dict__)

        import sqn_ray
        from sqn_ray.optim.minimize import RECORD_FIELDS
        from sqn_ray.problems import get_problem
        from sqn_ray.study import results as R
        from analysis import load
        assert RECORD_FIELDS[-2:] == ("t_extra", "lead_extra"), RECORD_FIELDS
        p = get_problem("toy-small")
        res = sqn_ray.minimize(p.oracle, p.init(0), "gd", max_iters=1)
        assert {"t_extra", "lead_extra"} <= set(res.history.columns)
        assert str(R.OPTIMIZER_COLUMNS["t_extra"]) == "double" and str(R.RECORD_COLUMNS["lead_extra"]) == "int64"
        assert {"t_extra", "lead_extra"} <= set(load.ITERATION_COLUMNS) and "lead_extra" in load._RECORD_COLUMNS
        assert mod.step_defaults()["t_extra"] == 0.0 and "lead_extra" in mod.metric_names()
        assert "`t_extra`" in mod.doc_table()
        print("ok")
    ''')
    out = subprocess.run([sys.executable, "-c", script, str(ROOT)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def test_the_readme_table_is_the_schemas():
    m = re.search(r"<!-- record-table:[^\n]*-->\n(.*?)\n<!-- /record-table -->", _readme(), re.S)
    assert m, "README.md lost its generated record table"
    assert m.group(1) == records.doc_table(), "regenerate it with sqn_ray.records.doc_table()"


def test_the_readme_lists_the_iterations_leading_columns():
    from sqn_ray.study.results import RECORD_COLUMNS

    text = " ".join(_readme().split())
    m = re.search(r"every other swept option, `(iteration, [^`]*)` \(always columns\)", text)
    assert m, "README.md's Results paragraph no longer lists the leading columns"
    assert [c.strip() for c in m.group(1).split(",")] == list(RECORD_COLUMNS)
