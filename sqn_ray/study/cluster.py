"""Cluster helpers: offline validation of a Ray cluster-launcher file (``cluster.yaml``).

:func:`validate_cluster_config` runs Ray's own checks, the ones ``ray up`` starts with (``prepare_config``:
defaults of the provider merged in, setup commands merged, docker config checked; ``validate_config``: the
JSON schema, which rejects misspelled keys, plus the head/worker cross-field checks), without any cloud
credentials. It then checks what this project needs from a cluster:

* every node type declares explicit integer ``resources`` (``ray up`` would otherwise ask the cloud);
* the head runs no trials: its ``CPU`` and ``GPU`` are 0 and its ``ray start`` says ``--num-cpus=0``;
* at least one worker type has GPUs;
* the setup installs ``torch==2.13.0`` before the project (an unpinned torch pulls another build).

These use ``ray.autoscaler._private.util`` (a private module): the project pins ray 2.60.*.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

__all__ = ["validate_cluster_config", "ClusterConfigError"]


class ClusterConfigError(ValueError):
    """A cluster-launcher file is invalid; the message names the file and the field."""


def validate_cluster_config(path: str | Path) -> dict:
    """Validate ``path`` offline; returns the prepared config (defaults filled in) or raises ClusterConfigError."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ClusterConfigError(f"{path}: cannot read: {e}") from None
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{path}: expected a mapping at the top level")
    try:
        config = prepare_config(copy.deepcopy(raw))  # keeps unknown keys: the schema below rejects them
        validate_config(config)
    except Exception as e:  # jsonschema.ValidationError, ValueError, KeyError from Ray's checks
        raise ClusterConfigError(f"{path}: Ray rejects it: {type(e).__name__}: {str(e).splitlines()[0]}") from None

    types = config["available_node_types"]
    for name, node in raw.get("available_node_types", {}).items():
        res = node.get("resources")
        if not isinstance(res, dict) or "CPU" not in res or "GPU" not in res:
            raise ClusterConfigError(f"{path}: available_node_types.{name}.resources: declare CPU and GPU "
                                     f"explicitly, got {res!r}")
        for k, v in res.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ClusterConfigError(f"{path}: available_node_types.{name}.resources.{k}: a non-negative "
                                         f"integer, got {v!r}")
    head = config["head_node_type"]
    if types[head]["resources"].get("CPU") != 0 or types[head]["resources"].get("GPU") != 0:
        raise ClusterConfigError(f"{path}: available_node_types.{head}.resources: the head runs no trials: "
                                 f"CPU: 0 and GPU: 0, got {types[head]['resources']}")
    starts = " ".join(config.get("head_start_ray_commands", []))
    if "--num-cpus=0" not in starts.replace("--num-cpus 0", "--num-cpus=0"):
        raise ClusterConfigError(f"{path}: head_start_ray_commands: start the head with --num-cpus=0 "
                                 "(it runs the driver, not trials)")
    if not any(t["resources"].get("GPU", 0) > 0 for n, t in types.items() if n != head):
        raise ClusterConfigError(f"{path}: available_node_types: no worker type has GPUs")
    setup = config.get("setup_commands", []) + config.get("worker_setup_commands", [])
    text = "\n".join(setup)
    torch_at = text.find("torch==2.13.0")
    project_at = max(text.find("sqn-ray"), text.find("sqn_ray"))
    if torch_at < 0 or project_at < 0 or torch_at > project_at:
        raise ClusterConfigError(f"{path}: setup_commands: install torch==2.13.0 first, then this project")
    return config
