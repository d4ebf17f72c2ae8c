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

ROOT = Path(__file__).resolve().parents[2]
STUDIES = ROOT / "studies"


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    from sqn_ray import ray_session

    # The nodes' own site folder (``cluster.site``, on their PYTHONPATH, empty at first): what a test installs
    # there is installed on every node of the cluster, as cluster.yaml's setup commands install a plugin, and
    # not in the test process
    site = tmp_path_factory.mktemp("cluster-site")
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), before) if p)
    # as safe as an embedded study's Ray: loopback only, token auth on (drivers started by the tests inherit
    # RAY_AUTH_MODE=token and read the token from ~/.ray/auth_token)
    ray_session.embedded_auth()
    try:
        with ray_session.loopback_only():
            node = {"node_ip_address": ray_session.LOOPBACK, "object_store_memory": 100 * 1024**2}
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0,
                                                                    "include_dashboard": False, **node})
            workers = [cluster.add_node(num_cpus=1, num_gpus=1, **node) for _ in range(2)]
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False)
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before
    cluster.worker_node_ids = {w.node_id for w in workers}
    cluster.site = site
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def subprocess_env():
    """Environment for a driver subprocess: this checkout importable, Ray's auth settings as a user has them."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RAY_ADDRESS", None)
    return env


PYTHON = sys.executable
