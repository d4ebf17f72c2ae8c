"""Study files: the shipped studies, grid expansion without useless crossings, validation errors."""
from __future__ import annotations

import json
import textwrap

import pytest

import sqn_ray
from sqn_ray.problems import PROBLEMS
from sqn_ray.study.spec import Distribution, StudySpecError, load_study_spec, parse_study

from pathlib import Path

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


BASE = {"problems": ["toy-small"], "methods": {"s-lsr1": {}}}


def parse(**over):
    return parse_study({**BASE, **over}, source="t.yaml")


# ------------------------------------------------------------------------------------------ shipped files
@pytest.mark.parametrize("name", ["paper-toy", "sensitivity", "smoke"])
@pytest.mark.parametrize("smoke", [False, True])
def test_shipped_studies_validate(name, smoke):
    study = load_study_spec(STUDIES / f"{name}.yaml", smoke=smoke)
    assert study.name == name and study.num_trials > 0
    keys = [json.dumps(c, sort_keys=True) for c in study.cells()]
    assert len(keys) == len(set(keys)), "duplicate grid cells"


def test_paper_toy_is_the_papers_comparison():
    study = load_study_spec(STUDIES / "paper-toy.yaml")
    assert set(study.methods) == set(sqn_ray.METHODS)
    assert set(study.problems) == {"toy-small", "toy-medium", "toy-large"}
    assert len(study.seeds) >= 10
    assert study.stop["accuracy"] == "target" and study.budget["iterations"] == 1000
    assert study.num_trials == len(sqn_ray.METHODS) * 3 * len(study.seeds)
    smoke = load_study_spec(STUDIES / "paper-toy.yaml", smoke=True)
    assert smoke.num_trials < study.num_trials and smoke.budget["iterations"] <= 20


def test_sensitivity_sweeps_m_r_and_both_options_on_the_sampled_methods():
    study = load_study_spec(STUDIES / "sensitivity.yaml")
    assert set(study.methods) == {"s-lsr1", "s-lbfgs"}
    for axes in study.methods.values():
        assert set(axes["sampling"]) == {"hvp", "grad-diff"}
        assert len(axes["memory"]) >= 3 and len(axes["radius"]) >= 3


# ------------------------------------------------------------------------------------------------- grids
def test_options_are_crossed_only_into_methods_that_take_them():
    study = parse(methods={"s-lsr1": {}, "lbfgs": {}, "gd": {"lr": [0.1, 0.5]}},
                  options={"memory": [2, 4], "radius": [0.1, 1.0, 10.0]}, seeds=2)
    per_method = {m: len(study.method_cells(m)) for m in study.methods}
    assert per_method == {"s-lsr1": 6, "lbfgs": 2, "gd": 2}  # radius never crosses lbfgs, memory never gd
    assert study.num_trials == (6 + 2 + 2) * 2
    assert all("radius" not in c["options"] for c in study.cells() if c["method"] == "lbfgs")


def test_method_options_override_shared_ones():
    study = parse(methods={"s-lsr1": {"memory": 7}, "lbfgs": {}}, options={"memory": [2, 4]})
    assert study.methods["s-lsr1"]["memory"] == (7,) and study.methods["lbfgs"]["memory"] == (2, 4)


def test_seeds_are_common_random_numbers_across_cells():
    study = parse(methods={"s-lsr1": {"radius": [0.1, 1.0]}, "gd": {}}, seeds=[3, 5])
    for seed in (3, 5):
        cells = [c for c in study.cells() if c["seed"] == seed]
        assert len(cells) == 3  # every cell of the grid runs every seed


def test_methods_as_a_list_and_count_seeds():
    study = parse(methods=["gd", "adam"], seeds=3)
    assert study.seeds == (0, 1, 2) and set(study.methods) == {"gd", "adam"}


def test_yaml_12_floats(tmp_path):
    path = write(tmp_path, """
        problems: [toy-small]
        methods: {s-lsr1: {radius: [1e-3, 1E2]}}
    """)
    assert load_study_spec(path).methods["s-lsr1"]["radius"] == (1e-3, 100.0)


def test_ranges_and_search(tmp_path):
    study = parse(methods={"s-lsr1": {"radius": {"loguniform": [1e-3, 1.0]}, "memory": {"int": [2, 16]}}},
                  search={"algorithm": "optuna", "num_samples": 5},
                  scheduler={"type": "asha", "time_attr": "iteration", "grace_period": 5})
    assert study.methods["s-lsr1"]["radius"] == Distribution("loguniform", (1e-3, 1.0))
    assert study.num_trials == 5 and study.scheduler["max_t"] == 1000


def test_smoke_overrides_and_fingerprint(tmp_path):
    path = write(tmp_path, """
        problems: [toy-small, toy-large]
        methods: [gd]
        seeds: 4
        smoke: {problems: [toy-small], seeds: 1, budget: {iterations: 3}}
    """)
    full, smoke = load_study_spec(path), load_study_spec(path, smoke=True)
    assert (full.num_trials, smoke.num_trials) == (8, 1) and smoke.budget["iterations"] == 3
    assert full.fingerprint == load_study_spec(path).fingerprint != smoke.fingerprint


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("text, path, allowed", [
    ("problems: [toy-small]\nmethods: [gd]\nbugdet: {iterations: 3}\n", "bugdet", "budget"),
    ("problems: [toy-small]\nmethods: [newton]\n", "methods", "s-lsr1"),
    ("problems: [mnist-huge]\nmethods: [gd]\n", "problems[0]", "toy-small"),
    ("problems: [toy-small]\nmethods: {s-lsr1: {memroy: 3}}\n", "methods.s-lsr1.memroy", "memory"),
    ("problems: [toy-small]\nmethods: {s-lsr1: {sampling: [hvp, finite-diff]}}\n", "methods.s-lsr1", "grad-diff"),
    ("problems: [toy-small]\nmethods: {s-lsr1: {memory: []}}\n", "methods.s-lsr1.memory", "empty grid"),
    ("problems: [toy-small]\nmethods: [gd]\nseeds: three\n", "seeds", "count"),
    ("problems: [toy-small]\nmethods: [gd]\nbudget: {iterations: 2.5}\n", "budget.iterations", "integer"),
    ("problems: [toy-small]\nmethods: {gd: {lr: {loguniform: [0.1, 1]}}}\n", "methods.gd.lr", "random or optuna"),
    ("problems: [toy-small]\nmethods: [gd]\noptions: {radius: [1, 2]}\n", "options.radius", "lr"),
    ("problems: [toy-small]\nmethods: {gd: {seed: 3}}\n", "methods.gd.seed", "seeds"),
    ("problems: [toy-small, toy-large]\nmethods: {gd: {lr: {uniform: [0.1, 1]}}}\nsearch: {algorithm: optuna}\n",
     "problems", "one problem"),
    ("problems: [toy-small]\nmethods: [gd]\nmetric: accuracy_at_end\n", "metric.name", "best_loss"),
    ("problems: [toy-small]\nmethods: [gd]\ndevice: cuda\n", "device", "resources.gpu"),
    ("problems: []\nmethods: [gd]\n", "problems", "toy-small"),
    ("methods: [gd]\n", "problems", "toy-small"),
])
def test_invalid_study_names_file_field_and_allowed_values(tmp_path, text, path, allowed):
    file = write(tmp_path, text, "bad.yaml")
    with pytest.raises(StudySpecError) as err:
        load_study_spec(file)
    msg = str(err.value)
    assert msg.startswith(f"{file}: {path}"), msg
    assert allowed in msg, msg


def test_bad_option_value_is_judged_by_the_core(tmp_path):
    file = write(tmp_path, "problems: [toy-small]\nmethods: {s-lsr1: {memory: [4, 0]}}\n")
    with pytest.raises(StudySpecError, match=r"methods\.s-lsr1\.memory.*memory"):
        load_study_spec(file)


def test_yaml_is_loaded_safely(tmp_path):
    marker = tmp_path / "executed"
    file = write(tmp_path, f"""
        problems: !!python/object/apply:os.system ["touch {marker}"]
        methods: [gd]
    """)
    with pytest.raises(StudySpecError, match="not valid YAML"):
        load_study_spec(file)
    assert not marker.exists()


def test_every_registered_problem_is_accepted():
    assert parse(problems=list(PROBLEMS)).problems == tuple(PROBLEMS)


def test_the_spec_names_say_which_study_and_the_earlier_names_still_work():
    import sqn_ray.study as study_pkg
    from sqn_ray.study import spec

    assert spec.Study is spec.StudySpec and spec.load_study is spec.load_study_spec
    assert study_pkg.Study is spec.StudySpec and study_pkg.load_study is spec.load_study_spec
    assert isinstance(spec.load_study(STUDIES / "paper-toy.yaml"), spec.StudySpec)


# ----------------------------------------------------------------- run settings outside the fingerprint
#: a study written before checkpoint_every and loggers existed, and the fingerprint it had then: a study folder
#: started from it must still resume (the fingerprint is what a resume checks)
OLD_STUDY = {"name": "t", "problems": ["toy-small"], "methods": {"gd": {"lr": [0.1, 0.5]}}, "seeds": 2,
             "budget": {"iterations": 10}}
OLD_FINGERPRINT = "768df415a7d8b8ee"


def test_checkpoint_every_defaults_to_a_minute_and_zero_or_null_is_never():
    assert parse().checkpoint_every == 60.0
    assert parse(checkpoint_every=5).checkpoint_every == 5.0 and parse(checkpoint_every=0.5).checkpoint_every == 0.5
    assert parse(checkpoint_every=0).checkpoint_every is None
    assert parse(checkpoint_every=None).checkpoint_every is None
    assert parse(checkpoint_every=30).to_json()["checkpoint_every"] == 30.0


@pytest.mark.parametrize("value", [-1, "60s", True, float("inf"), [60], {"seconds": 60}])
def test_a_bad_checkpoint_every_is_named_with_what_is_allowed(value):
    with pytest.raises(StudySpecError) as err:
        parse(checkpoint_every=value)
    msg = str(err.value)
    assert msg.startswith("t.yaml: checkpoint_every: expected seconds between checkpoints (a number > 0), or "
                          "null or 0 for never, got "), msg
    assert err.value.option == "checkpoint_every" and err.value.value == value


def test_new_run_settings_keep_the_fingerprint_of_existing_studies(tmp_path):
    old = parse_study(OLD_STUDY, source="t.yaml")
    assert old.fingerprint == OLD_FINGERPRINT
    # the defaults written out, other values, in the file: the same trials, so the same fingerprint
    for extra in ({"checkpoint_every": 60, "loggers": []}, {"checkpoint_every": None, "loggers": ["tensorboard"]},
                  {"checkpoint_every": 0.5}, {"loggers": "tensorboard"}):
        assert parse_study({**OLD_STUDY, **extra}, source="t.yaml").fingerprint == OLD_FINGERPRINT, extra
    # ... and what ran is still recorded
    body = parse_study({**OLD_STUDY, "checkpoint_every": 5, "loggers": ["tensorboard"]}, source="t.yaml").to_json()
    assert body["checkpoint_every"] == 5.0 and body["loggers"] == ["tensorboard"]
    assert parse_study({**OLD_STUDY, "seeds": 3}, source="t.yaml").fingerprint != OLD_FINGERPRINT
    # nor do they in a smoke: block
    path = write(tmp_path, """
        name: s
        problems: [toy-small]
        methods: [gd]
        smoke: {seeds: 1, checkpoint_every: null, loggers: [tensorboard]}
    """)
    plain = write(tmp_path, "name: s\nproblems: [toy-small]\nmethods: [gd]\nsmoke: {seeds: 1}\n", "plain.yaml")
    assert load_study_spec(path, smoke=True).fingerprint == load_study_spec(plain, smoke=True).fingerprint


def test_sweeping_lr_of_a_line_search_method_needs_the_fixed_step_rule():
    with pytest.raises(StudySpecError, match=r"methods\.lbfgs\.lr.*step_rule: fixed"):
        parse_study({"problems": ["toy-small"], "methods": {"lbfgs": {"lr": [0.1, 1.0]}}}, source="t.yaml")
    fixed = parse_study({"problems": ["toy-small"], "methods": {"s-lbfgs": {"lr": [0.1, 1.0], "step_rule": "fixed"}}},
                        source="t.yaml")
    assert fixed.num_trials == 2
    one = parse_study({"problems": ["toy-small"], "methods": {"lbfgs": {"lr": 0.5}, "gd": {"lr": [0.1, 0.5]}}},
                      source="t.yaml")
    assert one.num_trials == 3  # a single lr is harmless; gd's lr is its own
