"""One error type for bad option values: registry options, study files and scaling files all raise an
OptionError (a ValueError) that names the option or field path, the value and what is allowed."""
from __future__ import annotations

import pickle
import textwrap

import pytest

import sqn_ray
from sqn_ray.options import OptionError, choice, positive_int


def test_registry_options_raise_option_errors_with_the_old_wording():
    with pytest.raises(OptionError) as err:
        sqn_ray.validate_options("s-lsr1", memory=0)
    e = err.value
    assert isinstance(e, ValueError) and sqn_ray.OptionError is OptionError
    assert (e.option, e.value, e.allowed) == ("memory", 0, "a positive integer")
    assert str(e) == "memory must be a positive integer, got 0"

    with pytest.raises(OptionError) as err:
        sqn_ray.validate_options("s-lsr1", sampling="x")
    e = err.value
    assert (e.option, e.value, e.allowed) == ("sampling", "x", ("hvp", "grad-diff"))
    assert str(e) == "sampling='x' is not one of ('hvp', 'grad-diff')"

    with pytest.raises(OptionError) as err:
        sqn_ray.validate_options("gd", bogus_option=1)
    assert (err.value.option, err.value.value, err.value.allowed) == ("bogus_option", 1, ("lr", "seed"))
    with pytest.raises(OptionError) as err:
        sqn_ray.validate_options("newton")
    assert (err.value.option, err.value.value) == ("method", "newton") and "s-lsr1" in err.value.allowed


def test_checkers_normalise_and_errors_survive_pickling():
    assert positive_int("m", 3) == 3
    assert choice("a", "b")("x", "b") == "b"
    with pytest.raises(OptionError) as err:
        positive_int("m", True)  # a bool is not an integer here
    copy = pickle.loads(pickle.dumps(err.value))
    assert type(copy) is OptionError and str(copy) == str(err.value) == "m must be a positive integer, got True"
    assert (copy.option, copy.value, copy.allowed) == ("m", True, "a positive integer")


def test_study_file_errors_carry_the_field_path(tmp_path):
    from sqn_ray.study.spec import StudySpecError, load_study_spec

    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent("""
        problems: [toy-small]
        methods: {s-lsr1: {radius: [1.0, -2.0]}}
    """))
    with pytest.raises(StudySpecError) as err:
        load_study_spec(path)
    e = err.value
    assert isinstance(e, OptionError) and isinstance(e, ValueError)
    assert (e.option, e.value, e.allowed) == ("methods.s-lsr1.radius", -2.0, "a finite number > 0")
    assert str(e).startswith(f"{path}: methods.s-lsr1.radius: radius must be a finite number > 0, got -2.0")

    path.write_text("problems: [toy-small]\nmethods: [gd]\nbudget: {iterations: 0}\n")
    with pytest.raises(StudySpecError) as err:
        load_study_spec(path)
    assert (err.value.option, err.value.value) == ("budget.iterations", 0)
    assert str(err.value) == f"{path}: budget.iterations: must be >= 1, got 0"

    path.write_text("problems: [toy-small]\nmethods: [gd]\ndtype: float16\n")
    with pytest.raises(StudySpecError) as err:
        load_study_spec(path)
    assert (err.value.option, err.value.value, err.value.allowed) == ("dtype", "float16", ("float64", "float32"))
    assert str(err.value) == f"{path}: dtype: unknown value 'float16'; allowed: float64, float32"

    path.write_text("problems: [toy-small]\nproblems: [toy-large]\nmethods: [gd]\n")
    with pytest.raises(StudySpecError, match="duplicate key") as err:
        load_study_spec(path)
    assert err.value.option is None  # about the file, not one field


def test_scaling_file_errors_carry_the_field_path(tmp_path):
    from sqn_ray.scaling import ScalingSpecError, load_scaling_spec, parse_scaling_spec

    with pytest.raises(ScalingSpecError) as err:
        parse_scaling_spec({"workers": {"counts": [0, 2]}}, source="s.yaml")
    e = err.value
    assert isinstance(e, OptionError) and isinstance(e, ValueError)
    assert (e.option, e.value, e.allowed) == ("workers.counts[0]", 0, "a positive integer")
    assert str(e) == "s.yaml: workers.counts[0]: expected a positive integer, got 0"

    with pytest.raises(ScalingSpecError) as err:
        parse_scaling_spec({"problems": ["cifar"], "workers": {}}, source="s.yaml")
    assert (err.value.option, err.value.value) == ("problems[0]", "cifar")
    assert err.value.allowed == ("mnist-mlp", "mnist-cnn", "synthetic-mlp")
    assert str(err.value) == "s.yaml: problems[0]: unknown value 'cifar'; allowed: mnist-mlp, mnist-cnn, synthetic-mlp"

    with pytest.raises(ScalingSpecError) as err:
        parse_scaling_spec({"workers": {"sg_lr": -1}}, source="s.yaml")
    assert (err.value.option, err.value.value) == ("workers.sg_lr", -1)

    path = tmp_path / "s.yaml"  # the study files' YAML reader: 1e-3 is a float, its errors are ScalingSpecErrors
    path.write_text("problem: synthetic-mlp\nworkers: {counts: [1], sg_lr: 1e-3, seed: 3}\n")
    spec = load_scaling_spec(path)
    assert spec.workers["sg_lr"] == 0.001 and isinstance(spec.workers["sg_lr"], float)
    path.write_text("workers: {counts: [1]\n")
    with pytest.raises(ScalingSpecError, match="not valid YAML") as err:
        load_scaling_spec(path)
    assert err.value.option is None


@pytest.mark.parametrize("method", ["s-lbfgs", "lbfgs", "bfgs"])
@pytest.mark.parametrize("bad", [0, -0.5, float("inf"), float("nan"), "0.1", True, None])
def test_the_fixed_step_lr_is_a_positive_finite_number(method, bad):
    with pytest.raises(OptionError) as err:
        sqn_ray.validate_options(method, step_rule="fixed", lr=bad)
    e = err.value
    assert e.option == "lr" and (e.value is bad or e.value != e.value) and e.allowed == "a finite number > 0"
    assert str(e) == f"lr must be a finite number > 0, got {bad!r}"


@pytest.mark.parametrize("method", ["s-lbfgs", "lbfgs", "bfgs"])
def test_the_step_rule_is_armijo_or_fixed(method):
    assert sqn_ray.method_options(method)["step_rule"] == "armijo"
    assert sqn_ray.validate_options(method, step_rule="fixed", lr=2)["lr"] == 2.0
    with pytest.raises(OptionError) as err:
        sqn_ray.validate_options(method, step_rule="wolfe")
    assert (err.value.option, err.value.value, err.value.allowed) == ("step_rule", "wolfe", ("armijo", "fixed"))
