"""Scaling files (studies/scaling.yaml) are validated before anything runs; the CLI command parses them."""
import argparse
from pathlib import Path

import pytest

from sqn_ray.scaling import ScalingSpecError, add_scaling_command, load_scaling_spec, parse_scaling_spec

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_scaling_file_and_its_smoke_version():
    full = load_scaling_spec(ROOT / "studies" / "scaling.yaml")
    assert full.problems == ("mnist-mlp", "mnist-cnn") and full.workers["problems"] == ["mnist-mlp"]
    assert full.throughput["memory"] == full.workers["memory"] == 16 and full.dtype == "float32"
    smoke = load_scaling_spec(ROOT / "studies" / "scaling.yaml", smoke=True)
    assert smoke.problems == ("synthetic-mlp",) and smoke.smoke and smoke.workers["problems"] is None
    assert smoke.workers["counts"] == [1, 2] and smoke.throughput["batch_sizes"] == [64, 512]


def test_defaults_fill_in_and_problem_is_an_alias():
    spec = parse_scaling_spec({"problem": "synthetic-mlp", "workers": {"counts": [1, 4]}})
    assert spec.problems == ("synthetic-mlp",) and spec.throughput is None
    assert spec.workers["memory"] == 16 and spec.workers["sg_batch_size"] == 128 and spec.workers["counts"] == [1, 4]


@pytest.mark.parametrize("data, match", [
    ({"problems": ["cifar"], "workers": {}}, r"problems\[0\]: unknown value 'cifar'; allowed: mnist-mlp"),
    ({"workers": {"count": [1]}}, r"workers.count: unknown key; allowed: problems, counts"),
    ({"workers": {"counts": [0, 2]}}, r"workers.counts\[0\]: expected a positive integer, got 0"),
    ({"throughput": {"operations": ["hessian"]}}, r"throughput.operations: expected a list from loss, gradient"),
    ({"problems": "synthetic-mlp"}, "nothing to measure"),
    ({"dtype": "float16", "workers": {}}, r"dtype: unknown value 'float16'"),
    ({"problems": ["mnist-mlp"], "workers": {"problems": ["mnist-cnn"]}},
     r"workers.problems: expected a non-empty subset"),
    ({"problem": "mnist-mlp", "problems": ["mnist-mlp"], "workers": {}}, "not both"),
    ({"worker": {}}, r"worker: unknown key"),
])
def test_bad_files_fail_with_the_field_named(data, match):
    with pytest.raises(ScalingSpecError, match=match):
        parse_scaling_spec(data, source="s.yaml")


def test_cli_validate(capsys):
    parser = argparse.ArgumentParser(prog="sqn-ray")
    add_scaling_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["scaling", str(ROOT / "studies" / "scaling.yaml"), "--validate"])
    assert args.handler(args) == 0
    assert "OK: 'scaling' on mnist-mlp, mnist-cnn" in capsys.readouterr().out
    args = parser.parse_args(["scaling", str(ROOT / "nope.yaml"), "--validate"])
    with pytest.raises(ValueError, match="cannot read"):
        args.handler(args)


def test_scaling_files_are_read_as_study_files_are(tmp_path):
    """One YAML reader: 1e-3 is a float (PyYAML alone reads a string), duplicate keys are refused."""
    path = tmp_path / "s.yaml"
    path.write_text("problem: synthetic-mlp\nworkers: {counts: [1, 2], sg_lr: 1e-3}\n")
    assert load_scaling_spec(path).workers["sg_lr"] == 0.001
    path.write_text("problem: synthetic-mlp\nworkers: {counts: [1]}\nworkers: {counts: [2]}\n")
    with pytest.raises(ScalingSpecError, match=f"{path}: not valid YAML: duplicate key 'workers'"):
        load_scaling_spec(path)
