"""cluster.yaml, checked offline with Ray's own cluster-launcher schema and cross-field checks."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sqn_ray.study.cluster import ClusterConfigError, validate_cluster_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_cluster_yaml_is_valid():
    cfg = validate_cluster_config(CLUSTER)
    assert cfg["provider"]["type"] in ("aws", "gcp")
    head = cfg["head_node_type"]
    assert cfg["available_node_types"][head]["resources"] == {"CPU": 0, "GPU": 0}
    gpus = [t for n, t in cfg["available_node_types"].items() if n != head and t["resources"]["GPU"] > 0]
    assert gpus and all(t["max_workers"] >= 1 for t in gpus)
    setup = "\n".join(cfg["worker_setup_commands"])
    assert setup.index("torch==2.13.0") < setup.index("sqn-ray")


def mutate(tmp_path, edit):
    cfg = yaml.safe_load(CLUSTER.read_text())
    edit(cfg)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(max_wrokers=3), "max_wrokers"),                                    # Ray's schema
    (lambda c: c.update(head_node_type="nope"), "Ray rejects"),                            # Ray's cross-check
    (lambda c: c["available_node_types"]["gpu-1x"].update(resources={"CPU": 8, "GPU": 0.5}), "integer"),
    (lambda c: c["available_node_types"]["head"].update(resources={"CPU": 8, "GPU": 0}), "no trials"),
    (lambda c: c["available_node_types"]["gpu-1x"].pop("resources"), "resources"),
    (lambda c: c.update(setup_commands=["pip install -e ~/sqn-ray"]), "torch==2.13.0"),
    (lambda c: [t["resources"].update(GPU=0) for t in c["available_node_types"].values()], "GPUs"),
])
def test_broken_cluster_files_are_rejected(tmp_path, edit, match):
    with pytest.raises(ClusterConfigError, match=match):
        validate_cluster_config(mutate(tmp_path, edit))
