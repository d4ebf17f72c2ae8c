"""Problem plugins: the ``sqn_ray.problems`` entry-point group, read from a real (fake) installed distribution:
listed without importing, loaded lazily, checked, broken ones named without hiding the others."""
from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from sqn_ray.cli import main
from sqn_ray.problems import (ENTRY_POINT_GROUP, PROBLEMS, ModuleProblem, PluginError, get_problem, plugin_entry_points,
                              problem_names)
from sqn_ray.study.spec import StudySpecError, parse_study

PLUGIN = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from sqn_ray.problems import ModuleProblem

    def _data():
        X = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
        return X, (X[:, 0] > 0).long()

    def good():
        return ModuleProblem("plug-net", lambda: nn.Linear(3, 2), F.cross_entropy, *_data(), target_accuracy=1.0)

    def misnamed():
        return ModuleProblem("other", lambda: nn.Linear(3, 2), F.cross_entropy, *_data())

    def junk():
        return 42

    def raises():
        raise RuntimeError("no GPU driver here")

    NOT_CALLABLE = 3
""")
ENTRY_POINTS = textwrap.dedent(f"""
    [{ENTRY_POINT_GROUP}]
    plug-net = fakeplug:good
    plug-misnamed = fakeplug:misnamed
    plug-junk = fakeplug:junk
    plug-raises = fakeplug:raises
    plug-constant = fakeplug:NOT_CALLABLE
    plug-broken = brokenplug:make
    toy-small = fakeplug:good
""")


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """A distribution 'fakeplug 0.1' installed on sys.path, as pip would leave it (dist-info + modules)."""
    (tmp_path / "fakeplug.py").write_text(PLUGIN)
    (tmp_path / "brokenplug.py").write_text("import a_module_that_is_not_installed\n")
    info = tmp_path / "fakeplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in ("fakeplug", "brokenplug"):
        sys.modules.pop(module, None)


def test_plugins_are_listed_after_the_library_without_importing_them(plugins):
    names = problem_names()
    assert names[:len(PROBLEMS)] == PROBLEMS and len(set(names)) == len(names)  # toy-small once: the library's
    ours = tuple(n for n in names if n.startswith("plug-"))  # (other plugins may be installed here too)
    assert ours == ("plug-broken", "plug-constant", "plug-junk", "plug-misnamed", "plug-net", "plug-raises")
    assert set(plugin_entry_points(PROBLEMS)) == set(names[len(PROBLEMS):])
    assert "fakeplug" not in sys.modules and "brokenplug" not in sys.modules


def test_a_plugin_problem_is_built_in_the_dtype_asked_for(plugins):
    p = get_problem("plug-net", dtype=torch.float32)
    assert isinstance(p, ModuleProblem) and p.name == "plug-net" and p.dtype == torch.float32 and p.dim == 8
    assert get_problem("plug-net", dtype=torch.float64).dtype == torch.float64
    assert get_problem("toy-small").description.startswith("toy sine bands")  # the built-in wins


@pytest.mark.parametrize("name, message", [
    ("plug-broken", r"'plug-broken = brokenplug:make' from fakeplug 0.1 cannot be imported: ModuleNotFoundError"),
    ("plug-raises", r"'plug-raises = fakeplug:raises' from fakeplug 0.1 failed when called: RuntimeError: no GPU"),
    ("plug-constant", r"'plug-constant = fakeplug:NOT_CALLABLE' from fakeplug 0.1 is a int, not a zero-argument"),
    ("plug-junk", r"'plug-junk = fakeplug:junk' from fakeplug 0.1: problem 'plug-junk': a int is not a problem"),
    ("plug-misnamed", r"problem 'plug-misnamed': the object returned is named 'other'"),
])
def test_a_broken_plugin_gives_an_error_naming_it(plugins, name, message):
    with pytest.raises(PluginError, match=message):
        get_problem(name)


def test_sqn_ray_problems_lists_the_plugins_and_a_broken_one_hides_no_other(plugins, capsys):
    assert main(["problems"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith("(")}
    assert "d = 8" in lines["plug-net"] and "[plugin 'plug-net = fakeplug:good' from fakeplug 0.1]" in lines["plug-net"]
    assert "plugin cannot be loaded" in lines["plug-broken"] and "ModuleNotFoundError" in lines["plug-broken"]
    assert "d = 36" in lines["toy-small"]  # the library's problems are still listed
    assert "(ignored: plugin 'toy-small = fakeplug:good' from fakeplug 0.1 has the name of a built-in problem)" in out


def test_study_files_validate_plugin_names_without_running_them(plugins):
    study = parse_study({"problems": ["plug-net", "plug-broken"], "methods": {"s-lsr1": {"memory": 4}}})
    assert study.problems == ("plug-net", "plug-broken")
    assert "fakeplug" not in sys.modules and "brokenplug" not in sys.modules  # a study file executes nothing
    with pytest.raises(StudySpecError, match=r"problems\[0\].*'plug-nett'.*plug-net") as e:
        parse_study({"problems": ["plug-nett"], "methods": {"s-lsr1": {}}})
    assert "plug-net" in e.value.allowed and "toy-small" in e.value.allowed


def test_a_notebooks_problems_validate_and_build_by_name():
    from torch import nn

    X = torch.randn(10, 3)
    mine = ModuleProblem("mine", lambda: nn.Linear(3, 2), torch.nn.functional.cross_entropy, X, (X[:, 0] > 0).long())
    study = parse_study({"problems": ["mine"], "methods": {"s-lsr1": {"memory": 4}}}, problems={"mine": mine})
    assert study.problems == ("mine",)
    with pytest.raises(StudySpecError, match="memory 9 is more than the d = 8 parameters of problem mine"):
        parse_study({"problems": ["mine"], "methods": {"s-lsr1": {"memory": 9}}}, problems={"mine": mine})
    assert get_problem("mine", dtype=torch.float64, problems={"mine": mine}).dtype == torch.float64
    with pytest.raises(ValueError, match="unknown problem 'mine'"):
        get_problem("mine")


def test_a_study_naming_a_broken_plugin_fails_in_one_line_before_anything_is_written(plugins, tmp_path, capsys):
    from sqn_ray.study.__main__ import main as study_main

    study = tmp_path / "s.yaml"
    study.write_text("problems: [plug-broken]\nmethods: {gd: {}}\nbudget: {iterations: 2}\n")
    out = tmp_path / "out"
    assert study_main(["run", str(study), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'plug-broken = brokenplug:make' from fakeplug 0.1 cannot be imported" in err and "Traceback" not in err
    assert not (out / ".study.json").exists() and not (out / "iterations.parquet").exists()
