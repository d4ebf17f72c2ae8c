"""The public API documents its contract: ``help()`` on each entry point shows Google-style ``Args:`` and
``Returns:`` sections (``Raises:`` where it validates input); a class says what its fields or arguments are."""
from __future__ import annotations

import importlib
import inspect

import pytest


def _attr(module: str, qualname: str):
    def get():
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    return get


def _runner(qualname: str):
    def get():
        pytest.importorskip("ray")  # sqn_ray.study.runner imports Ray: imported here, not at collection
        return _attr("sqn_ray.study.runner", qualname)()
    return get


#: (name, getter, sections the docstring must have)
FUNCTIONS = [
    ("minimize", _attr("sqn_ray", "minimize"), ("Args:", "Returns:", "Raises:")),
    ("Oracle.loss", _attr("sqn_ray.objective", "Oracle.loss"), ("Args:", "Returns:")),
    ("Oracle.loss_and_grad", _attr("sqn_ray.objective", "Oracle.loss_and_grad"), ("Args:", "Returns:")),
    ("Oracle.hvps", _attr("sqn_ray.objective", "Oracle.hvps"), ("Args:", "Returns:")),
    ("Oracle.grads", _attr("sqn_ray.objective", "Oracle.grads"), ("Args:", "Returns:")),
    ("Objective.value", _attr("sqn_ray.objective", "Objective.value"), ("Args:", "Returns:")),
    ("Objective.value_and_grad", _attr("sqn_ray.objective", "Objective.value_and_grad"), ("Args:", "Returns:")),
    ("Objective.hvp", _attr("sqn_ray.objective", "Objective.hvp"), ("Args:", "Returns:")),
    ("Objective.grads_at", _attr("sqn_ray.objective", "Objective.grads_at"), ("Args:", "Returns:")),
    ("module_objective_fun", _attr("sqn_ray.objective", "module_objective_fun"), ("Args:", "Returns:")),
    ("get_problem", _attr("sqn_ray.problems", "get_problem"), ("Args:", "Returns:", "Raises:")),
    ("get_method", _attr("sqn_ray.optim.registry", "get_method"), ("Args:", "Returns:", "Raises:")),
    ("method_options", _attr("sqn_ray.optim.registry", "method_options"), ("Args:", "Returns:", "Raises:")),
    ("validate_options", _attr("sqn_ray.optim.registry", "validate_options"), ("Args:", "Returns:", "Raises:")),
    ("methods_of", _attr("sqn_ray.optim.registry", "methods_of"), ("Args:", "Returns:", "Raises:")),
    ("MethodSpec.validate", _attr("sqn_ray.optim.registry", "MethodSpec.validate"),
     ("Args:", "Returns:", "Raises:")),
    ("run_study", _runner("run_study"), ("Args:", "Returns:", "Raises:")),
    ("load_study_spec", _attr("sqn_ray.study.spec", "load_study_spec"), ("Args:", "Returns:", "Raises:")),
    ("parse_study", _attr("sqn_ray.study.spec", "parse_study"), ("Args:", "Returns:", "Raises:")),
    ("read_yaml", _attr("sqn_ray.study.spec", "read_yaml"), ("Args:", "Returns:", "Raises:")),
    ("read_yaml_file", _attr("sqn_ray.study.spec", "read_yaml_file"), ("Args:", "Returns:", "Raises:")),
    ("deep_merge", _attr("sqn_ray.study.spec", "deep_merge"), ("Args:", "Returns:")),
    ("load_results", _attr("analysis.load", "load_results"), ("Args:", "Returns:", "Raises:")),
    ("StopRules.check", _attr("sqn_ray.stopping", "StopRules.check"), ("Args:", "Returns:")),
    ("StopRules.from_study", _attr("sqn_ray.stopping", "StopRules.from_study"), ("Args:", "Returns:", "Raises:")),
]

#: classes: a docstring of several lines with an ``Args:`` (constructor arguments) or ``Attributes:`` section
CLASSES = [
    ("SQNOptimizer", _attr("sqn_ray", "SQNOptimizer")),
    ("Oracle", _attr("sqn_ray.objective", "Oracle")),
    ("Objective", _attr("sqn_ray.objective", "Objective")),
    ("Counters", _attr("sqn_ray.objective", "Counters")),
    ("AutogradOracle", _attr("sqn_ray.objective", "AutogradOracle")),
    ("Problem", _attr("sqn_ray.problems", "Problem")),
    ("MethodSpec", _attr("sqn_ray.optim.registry", "MethodSpec")),
    ("StudySpec", _attr("sqn_ray.study.spec", "StudySpec")),
    ("StudyOutcome", _runner("StudyOutcome")),
    ("StudyResults", _attr("analysis.load", "StudyResults")),
]
MIN_CLASS_LINES = 5


@pytest.mark.parametrize("name, get, sections", FUNCTIONS, ids=[f[0] for f in FUNCTIONS])
def test_public_function_documents_its_contract(name, get, sections):
    doc = inspect.getdoc(get())
    assert doc, f"{name} has no docstring"
    missing = [s for s in sections if s not in doc]
    assert not missing, f"{name}'s docstring lacks {missing}"
    assert doc.index("Args:") < doc.index("Returns:"), f"{name}: Args: before Returns:"


@pytest.mark.parametrize("name, get", CLASSES, ids=[c[0] for c in CLASSES])
def test_public_class_documents_its_fields(name, get):
    cls = get()
    doc = cls.__doc__  # the class's own, not one inherited from a base class
    assert doc and doc.strip(), f"{name} has no docstring"
    doc = inspect.cleandoc(doc)
    assert len(doc.splitlines()) >= MIN_CLASS_LINES, f"{name}'s docstring is a one-liner"
    assert "Args:" in doc or "Attributes:" in doc, f"{name}'s docstring describes neither arguments nor attributes"


def test_oracle_documents_its_attributes_and_methods():
    from sqn_ray.objective import Oracle

    doc = inspect.getdoc(Oracle)
    for word in ("dim", "dtype", "device", "loss", "loss_and_grad", "hvps", "grads", "(d,)", "(d, m)"):
        assert word in doc, f"Oracle's docstring does not mention {word}"
