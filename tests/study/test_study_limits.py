"""Study files that cannot hurt: duplicate keys, alias bombs, size and count limits, undecodable files, and
validation and grid expansion linear in the grid's size."""
from __future__ import annotations

import itertools
import textwrap

import pytest

import sqn_ray
from sqn_ray.study import spec as spec_module
from sqn_ray.study.spec import (MAX_DESCRIPTION_CHARS, MAX_FILE_BYTES, MAX_SEEDS, MAX_TRIALS, MAX_YAML_NODES,
                                StudySpecError, load_study_spec, parse_study)


def write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path, **kw) -> str:
    with pytest.raises(StudySpecError) as e:
        load_study_spec(path, **kw)
    return str(e.value)


# ---------------------------------------------------------------------------------------- duplicate keys
def test_a_duplicate_key_names_the_key_and_both_lines(tmp_path):
    path = write(tmp_path, """\
        problems: [toy-small]
        methods:
          gd: {lr: 0.1}
        seeds: 1
        methods:
          adam: {}
        seeds: 3
        """)
    msg = error_of(path)
    assert msg.startswith(f"{path}: not valid YAML") and "duplicate key 'methods'" in msg
    assert "line 2" in msg and "line 5" in msg


def test_a_duplicate_key_in_a_nested_mapping_is_refused_too(tmp_path):
    path = write(tmp_path, """\
        problems: [toy-small]
        methods: {gd: {lr: 0.1, lr: 0.5}}
        """)
    assert "duplicate key 'lr'" in error_of(path)


def test_merge_keys_and_plain_aliases_still_work(tmp_path):
    path = write(tmp_path, """\
        problems: [toy-small]
        base: &m {memory: 4}
        """)
    # (an unknown top-level key: but the alias itself parses; the study's own check names the key)
    assert "base: unknown key" in error_of(path)
    path = write(tmp_path, """\
        problems: [toy-small]
        methods:
          s-lsr1: &opts {memory: 4}
          s-lbfgs: *opts
        """)
    study = load_study_spec(path)
    assert study.methods["s-lsr1"]["memory"] == study.methods["s-lbfgs"]["memory"] == (4,)


# -------------------------------------------------------------------------------------------- alias bombs
def test_an_alias_bomb_is_refused_before_it_expands(tmp_path, monkeypatch):
    """The billion laughs: nine levels of nine aliases, a few hundred bytes, 9^9 values once expanded."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    path = write(tmp_path, "\n".join(lines) + "\nproblems: *a9\nmethods: [gd]\n")
    assert path.stat().st_size < 600
    built = []
    monkeypatch.setattr(spec_module._Loader, "construct_document",
                        lambda self, node: built.append(node) or {})
    msg = error_of(path)
    assert f"expands to more than {MAX_YAML_NODES:,} values" in msg and len(msg) < 300
    assert not built  # refused on the node graph: nothing was constructed


def test_a_recursive_alias_is_refused(tmp_path):
    path = write(tmp_path, "problems: &p [toy-small, *p]\nmethods: [gd]\n")
    assert "expands to more than" in error_of(path)


def test_values_quoted_in_errors_are_cut(tmp_path):
    path = write(tmp_path, f"problems: [toy-small]\nmethods: [gd]\nname: {'x' * 200_000}!\n")
    msg = error_of(path)
    assert msg.startswith(f"{path}: name:") and len(msg) < 400 and "(200,003 characters)" in msg


# ------------------------------------------------------------------------------------------------ limits
def test_a_file_over_the_size_limit_is_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("problems: [toy-small]\nmethods: [gd]\n#" + "x" * MAX_FILE_BYTES)
    assert error_of(path) == f"{path}: the file is larger than the limit of {MAX_FILE_BYTES:,} bytes"


def test_a_long_description_is_refused(tmp_path):
    path = write(tmp_path, f"problems: [toy-small]\nmethods: [gd]\ndescription: {'y' * (MAX_DESCRIPTION_CHARS + 1)}\n")
    msg = error_of(path)
    assert "description:" in msg and f"limit of {MAX_DESCRIPTION_CHARS:,}" in msg


@pytest.mark.parametrize("seeds, words", [(MAX_SEEDS + 1, "seeds"), (list(range(MAX_SEEDS + 1)), "seeds listed")])
def test_seed_counts_are_bounded(seeds, words):
    with pytest.raises(StudySpecError, match=f"seeds: {MAX_SEEDS + 1:,} {words}, over the limit of {MAX_SEEDS:,}"):
        parse_study({"problems": ["toy-small"], "methods": ["gd"], "seeds": seeds}, source="t.yaml")


def test_a_grid_over_the_trial_limit_is_refused_with_its_size():
    lrs = [0.001 * (i + 1) for i in range(1000)]
    with pytest.raises(StudySpecError) as e:
        parse_study({"problems": ["toy-small", "toy-medium"], "methods": {"gd": {"lr": lrs}}, "seeds": 51},
                    source="t.yaml")
    msg = str(e.value)
    assert "102,000 trials (2 problem(s) × 1,000 option cell(s) × 51 seed(s))" in msg
    assert f"limit of {MAX_TRIALS:,}" in msg
    # one method's grid alone over the limit: refused before a single cell is probed
    with pytest.raises(StudySpecError, match="methods.s-lsr1: its option grid has 1,000,000 cells"):
        parse_study({"problems": ["toy-large"], "methods": {"s-lsr1": {
            "radius": [float(i + 1) for i in range(100)], "epsilon": [1e-8 * (i + 1) for i in range(100)],
            "initial_trust_radius": [float(i + 1) for i in range(100)]}}}, source="t.yaml")


def test_memory_is_checked_against_the_problems_dimension():
    with pytest.raises(StudySpecError) as e:
        parse_study({"problems": ["toy-medium", "toy-small"], "methods": {"s-lsr1": {"memory": [4, 40]}}},
                    source="t.yaml")
    assert str(e.value).startswith("t.yaml: methods.s-lsr1.memory: memory 40 is more than the d = 36 parameters "
                                   "of problem toy-small")
    with pytest.raises(StudySpecError, match="options.memory: memory 37"):
        parse_study({"problems": ["toy-small"], "methods": ["lbfgs"], "options": {"memory": [37]}}, source="t.yaml")
    assert parse_study({"problems": ["toy-small"], "methods": {"lbfgs": {"memory": 36}}}, source="t.yaml")


def test_the_smoke_block_is_validated_by_plain_validate(tmp_path, capsys):
    from sqn_ray.cli import main

    path = write(tmp_path, """\
        problems: [toy-small]
        methods: [gd]
        smoke: {budget: {iterations: 0}}
        """)
    assert main(["study", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "budget.iterations: must be >= 1, got 0" in err and "--smoke" in err


def test_the_default_smoke_of_a_grid_study_runs_each_cell_once(tmp_path):
    path = write(tmp_path, "problems: [toy-small]\nmethods: [gd, adam]\nseeds: 4\n")
    smoke = load_study_spec(path, smoke=True)
    assert smoke.num_trials == 2 and smoke.search["num_samples"] == 1 and smoke.budget["iterations"] == 10


# ---------------------------------------------------------------------------------------- undecodable files
@pytest.mark.parametrize("payload", [bytes(range(256)) * 4, b"problems: [toy-small]\x00\x00\n",
                                     "problems: [toy-small]\n".encode("utf-16")])
def test_binary_garbage_names_the_file(tmp_path, payload):
    path = tmp_path / "garbage.yaml"
    path.write_bytes(payload)
    msg = error_of(path)
    assert msg.startswith(f"{path}: not a text file") and len(msg) < 200


def test_a_folder_or_a_missing_file_names_itself(tmp_path):
    assert error_of(tmp_path) == f"{tmp_path}: is a folder, not a file"
    assert error_of(tmp_path / "none.yaml").startswith(f"{tmp_path / 'none.yaml'}: cannot read the file")


# ------------------------------------------------------------------------------------ linear in the grid size
def test_the_grid_computes_each_cell_from_its_index_in_the_old_order():
    study = parse_study({"problems": ["toy-small", "toy-medium"], "seeds": [3, 1],
                         "methods": {"s-lsr1": {"memory": [2, 4], "radius": [0.1, 1.0, 10.0]},
                                     "gd": {"lr": [0.1, 0.2]}}},
                        source="t.yaml")
    expected = [{"problem": p, "method": m, "seed": s, "options": opts}
                for p in study.problems for m in study.methods for opts in study.method_cells(m) for s in study.seeds]
    assert list(study.grid) == study.cells() == expected and len(study.grid) == study.num_trials == 32
    assert study.grid[-1] == expected[-1]
    with pytest.raises(IndexError):
        study.grid[32]


def test_a_100000_cell_study_validates_without_building_its_grid(monkeypatch):
    """Every value probed once (the grid is too large to probe cell by cell), duplicates checked with a set,
    and no list of cells built: a few lookups of the cell at an index."""
    calls = []
    real = sqn_ray.validate_options
    monkeypatch.setattr(sqn_ray, "validate_options", lambda *a, **k: calls.append(k) or real(*a, **k))
    monkeypatch.setattr(spec_module.StudySpec, "cells", lambda self: pytest.fail("the grid was built"))
    radii = [1e-4 * (i + 1) for i in range(1000)]
    study = parse_study({"problems": ["toy-large"],
                         "methods": {"s-lsr1": {"radius": radii, "memory": list(range(1, 51))}},
                         "seeds": 2}, source="t.yaml")
    assert study.num_trials == 100_000 and len(calls) == 1000 + 50
    assert study.grid[99_999] == {"problem": "toy-large", "method": "s-lsr1", "seed": 1,
                                  "options": {"memory": 50, "radius": radii[-1]}}


def test_the_searcher_hands_out_cell_indices_and_stable_trial_ids():
    pytest.importorskip("ray.tune")
    from sqn_ray.study.search import CellSearcher, StudyTrialGenerator, trial_id_prefix

    study = parse_study({"problems": ["toy-small"], "seeds": 2, "search": {"algorithm": "random", "num_samples": 3},
                         "methods": {"s-lsr1": {"radius": {"loguniform": [1e-3, 1.0]}, "memory": [2, 4]},
                                     "gd": {"lr": 0.1}}}, source="t.yaml")
    searcher = CellSearcher(study)
    configs = list(itertools.takewhile(lambda c: c != "FINISHED", (searcher.suggest(str(i)) for i in range(100))))
    assert len(configs) == study.num_trials == 18
    assert [c["cell"] for c in configs] == list(range(6)) * 3
    draws = [c["draw"]["radius"] for c in configs if "draw" in c]
    assert len(draws) == 12 and len(set(draws)) == 12 and all(1e-3 <= r <= 1.0 for r in draws)
    assert all("draw" not in c for c in configs if study.grid[c["cell"]]["method"] == "gd")
    # the same study draws the same values; a saved searcher continues where it stopped
    again = CellSearcher(study)
    assert [again.suggest(str(i)) for i in range(5)] == configs[:5]
    resumed = CellSearcher(study)
    resumed.set_state(again.get_state())
    assert resumed.suggest("x") == configs[5]
    generator = StudyTrialGenerator(CellSearcher(study), trial_id_prefix(study))
    assert generator.next_trial_id() == f"{study.fingerprint[:6]}_00000"
