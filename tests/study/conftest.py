"""Fixtures of the study-platform tests.

``ray_cluster`` (session): one real multi-node Ray topology on this machine, like the cloud one in
cluster.yaml at small scale: a head with no CPUs (it runs the drivers, never trials) and two worker raylets
with one CPU and one *logical* GPU each (Ray schedules and pins GPUs without any hardware). The test process
connects to it once; studies run in-process see Ray initialized and leave it alone, subprocess drivers join it
with ``--address``. Everything with Ray shares it: starting Ray costs seconds and ~1 GiB here.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# before Ray is imported anywhere: this private test cluster needs no token auth
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[2]
STUDIES = ROOT / "studies"


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "num_gpus": 0, "include_dashboard": False, "object_store_memory": 100 * 1024**2})
    workers = [cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=100 * 1024**2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.worker_node_ids = {w.node_id for w in workers}
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def subprocess_env():
    """Environment for a driver subprocess: this checkout importable, no token auth."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["RAY_AUTH_MODE"] = "disabled"
    env.pop("RAY_ADDRESS", None)
    return env


PYTHON = sys.executable
