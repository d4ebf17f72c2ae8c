"""Fixtures of the data-parallel tests.

``ray_local`` starts ONE private local Ray (2 CPUs, no dashboard, 100 MB object store, token auth off) for the
module that needs it and shuts it down after it. All Ray tests live in ``test_ray_oracle.py``, so the suite
starts Ray once here; module scope (rather than session) leaves Ray down again before other test folders
(tests/study) start their own cluster. If Ray is already initialized it is reused and left alone.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # before Ray is imported anywhere
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():
        yield ray
        return
    # worker processes inherit this environment: let them import sqn_ray from this checkout
    paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    ray.init(address="local", include_dashboard=False, num_cpus=2, object_store_memory=100_000_000,
             log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
