"""sqn_ray.ray_session: the wait for a new raylet (without starting Ray: a fake GCS client stands in)."""
from __future__ import annotations

import os

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


# ---------------------------------------------------------------------------- an embedded instance's safety
@pytest.fixture
def fake_ray_init(monkeypatch, tmp_path):
    """``ray.init`` replaced by a recorder of what it would have been given (and of Ray's address switch);
    HOME in a temporary folder, so the token file is the test's own."""
    import ray
    from ray._private import ray_constants

    seen = {}

    def init(**kwargs):
        seen.update(kwargs, enable_ray_cluster=ray_constants.ENABLE_RAY_CLUSTER,
                    auth_mode=os.environ.get("RAY_AUTH_MODE"))

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray._private.worker, "_global_node", None, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray._raylet.AuthenticationTokenLoader.instance().reset_cache()
    yield seen
    ray._raylet.AuthenticationTokenLoader.instance().reset_cache()
    ray._raylet.Config.initialize("")


def test_an_embedded_instance_binds_loopback_with_token_auth_on(monkeypatch, fake_ray_init, tmp_path):
    from ray._private import ray_constants

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert ray_session.connect() == "embedded"
    seen = fake_ray_init
    assert seen["address"] == "local" and seen["_node_ip_address"] == "127.0.0.1"
    # Ray keeps a loopback node address only with its "cluster" switch off, and only while it starts
    assert seen["enable_ray_cluster"] is False and ray_constants.ENABLE_RAY_CLUSTER is True
    assert seen["auth_mode"] == "token"
    token = tmp_path / ".ray" / "auth_token"
    assert len(token.read_text()) >= 32
    assert token.stat().st_mode & 0o777 == 0o600 and token.parent.stat().st_mode & 0o777 == 0o700


def test_an_existing_token_is_kept(monkeypatch, fake_ray_init, tmp_path):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("a" * 64)
    ray_session.connect()
    assert token.read_text() == "a" * 64


def test_auth_is_off_only_when_the_user_says_so_and_then_ray_warns(monkeypatch, fake_ray_init, tmp_path, caplog):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with caplog.at_level("WARNING"):
        ray_session.connect()
    assert fake_ray_init["auth_mode"] == "disabled"
    assert "Token authentication is disabled" in caplog.text and "arbitrary code" in caplog.text
    assert not (tmp_path / ".ray" / "auth_token").exists()


def test_joining_a_cluster_keeps_its_address_and_auth(monkeypatch, fake_ray_init):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert ray_session.connect("10.0.0.5:6379") == "cluster"
    seen = fake_ray_init
    assert seen["address"] == "10.0.0.5:6379" and "_node_ip_address" not in seen
    assert seen["auth_mode"] is None and seen["enable_ray_cluster"] is True


@pytest.mark.parametrize("address", ["127.0.0.1:6379", "localhost:6379", "[::1]:6379", "ray://127.0.0.1:10001"])
def test_a_cluster_on_loopback_is_joined_at_its_loopback_address(monkeypatch, fake_ray_init, address):
    """Ray rewrites a loopback address to the machine's routable one, where a loopback-bound cluster is not."""
    from ray._private import ray_constants

    assert ray_session.connect(address) == "cluster"
    assert fake_ray_init["address"] == address and fake_ray_init["enable_ray_cluster"] is False
    assert ray_constants.ENABLE_RAY_CLUSTER is True
