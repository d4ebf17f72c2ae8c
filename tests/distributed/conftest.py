"""Fixtures of the data-parallel tests.

``ray_local`` starts ONE private local Ray (2 CPUs, no dashboard, 100 MB object store; loopback only and token
auth on, as every embedded Ray of the platform: :func:`sqn_ray.ray_session.connect`) for the
module that needs it and shuts it down after it. All Ray tests live in ``test_ray_oracle.py``, so the suite
starts Ray once here; module scope (rather than session) leaves Ray down again before other test folders
(tests/study) start their own cluster. If Ray is already initialized it is reused and left alone.
"""
from __future__ import annotations


import pytest



@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():
        yield ray
        return
    from sqn_ray import ray_session

    ray_session.connect(num_cpus=2, object_store_memory=100_000_000)  # workers import sqn_ray from this checkout
    try:
        yield ray
    finally:
        ray_session.shutdown()
