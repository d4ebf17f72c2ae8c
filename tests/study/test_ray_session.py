"""sqn_ray.ray_session: the wait for a new raylet (without starting Ray: a fake GCS client stands in)."""
from __future__ import annotations

import pytest

ray_services = pytest.importorskip("ray._private.services")
import ray._raylet  # noqa: E402

from sqn_ray import ray_session  # noqa: E402

NODE = "ab" * 28


class _NodeId:
    def __init__(self, hexid):
        self._hex = hexid

    def hex(self):
        return self._hex


class _Info:
    def __init__(self, state):
        self.state = state


def _fake_gcs(tables: list[dict], calls: list[str]):
    """A GcsClient whose node table is the next of ``tables`` at each call (the last one repeats)."""

    class FakeGcsClient:
        def __init__(self, address):
            calls.append(f"connect {address}")

        def get_all_node_info(self, timeout=None):
            calls.append("poll")
            table = tables.pop(0) if len(tables) > 1 else tables[0]
            return {_NodeId(k): _Info(v) for k, v in table.items()}

    return FakeGcsClient


@pytest.fixture
def ray_get_node(monkeypatch):
    """Ray's own get_node replaced by a recorder (restored by monkeypatch)."""
    calls = []

    def get_node(gcs_address, node_id):
        calls.append(f"ray get_node {node_id}")
        return {"node_id": node_id}

    monkeypatch.setattr(ray_services, "get_node", get_node)
    return calls


def test_waits_for_the_raylet_to_be_alive_then_asks_ray_once(monkeypatch, ray_get_node):
    calls = ray_get_node
    # not registered, then another node only, then ours registered but not alive (1: DEAD), then alive (0)
    tables = [{}, {"cd" * 28: 0}, {NODE: 1}, {NODE: 0}]
    monkeypatch.setattr(ray._raylet, "GcsClient", _fake_gcs(tables, calls))
    with ray_session._prompt_node_registration(poll=0.0):
        assert ray_services.get_node("127.0.0.1:6379", NODE) == {"node_id": NODE}
    assert calls == ["connect 127.0.0.1:6379", "poll", "poll", "poll", "poll", f"ray get_node {NODE}"]
    # outside the context Ray's function is back
    calls.clear()
    ray_services.get_node("127.0.0.1:6379", NODE)
    assert calls == [f"ray get_node {NODE}"]


def test_a_failing_poll_leaves_the_wait_to_ray(monkeypatch, ray_get_node):
    class Unreachable:
        def __init__(self, address):
            raise ConnectionError("no GCS")

    monkeypatch.setattr(ray._raylet, "GcsClient", Unreachable)
    with ray_session._prompt_node_registration(poll=0.0):
        assert ray_services.get_node("127.0.0.1:6379", NODE) == {"node_id": NODE}
    assert ray_get_node == [f"ray get_node {NODE}"]


def test_gives_up_after_its_patience(monkeypatch, ray_get_node):
    calls = ray_get_node
    monkeypatch.setattr(ray._raylet, "GcsClient", _fake_gcs([{}], calls))
    with ray_session._prompt_node_registration(poll=0.001, patience=0.05):
        ray_services.get_node("127.0.0.1:6379", NODE)
    assert calls[-1] == f"ray get_node {NODE}" and calls.count("poll") >= 2
