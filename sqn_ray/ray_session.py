"""One way to connect to Ray and to stop it, for every command that uses it (studies, scaling).

:func:`connect` joins a cluster (``address`` or RAY_ADDRESS) or starts a private embedded instance;
:func:`shutdown` stops what :func:`connect` started. Importing this module does not import Ray Tune.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

__all__ = ["connect", "shutdown", "add_connect_arguments"]

_log = logging.getLogger(__name__)
_ROOT = str(Path(__file__).resolve().parents[1])


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            object_store_memory: int = 128 * 1024**2, worker_env: dict[str, str] | None = None) -> str | None:
    """Connect to Ray. Returns ``"cluster"`` (joined ``address`` / RAY_ADDRESS), ``"embedded"`` (a new local
    instance, stopped by :func:`shutdown`), or None if Ray was already initialized (left alone).

    ``worker_env``: variables an embedded instance's workers inherit (they are set in this process first).
    """
    import ray

    if ray.is_initialized():
        return None
    # Workers must import sqn_ray from this checkout, installed or not.
    if _ROOT not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
        return "cluster"
    # A private, throwaway instance: token auth (on by default since Ray 2.59) only gets in the way here.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.update(worker_env or {})
    # address="local": always a new instance, even if `ray start` left a cluster running on this machine.
    # No preload_python_modules: workers that import torch before registering are not idle when Tune asks
    # for its actors, so Ray starts more workers, all importing torch at once (one actor ran whole studies).
    with _prompt_node_registration():
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, include_dashboard=False,
                 object_store_memory=object_store_memory, **quiet)
    # The log monitor streams worker output to the driver, which log_to_driver=False turns off; it would still
    # poll the log folder ~1.5 % of a core, taken from the work (workers keep writing their own log files).
    try:
        ray._private.worker._global_node.kill_log_monitor(check_alive=False)  # noqa: SLF001 - pinned ray 2.60
    except Exception:  # noqa: BLE001 - an optimisation only
        _log.debug("could not stop Ray's log monitor", exc_info=True)
    return "embedded"


@contextlib.contextmanager
def _prompt_node_registration(poll: float = 0.02, patience: float = 30.0):
    """Let ``ray.init`` see its new raylet as soon as the raylet registers.

    ``ray.init`` waits for the raylet through ``services.get_node``, whose C++ side polls the GCS once a second;
    the raylet registers ~1-1.5 s after its start, so ``ray.init`` took 2.2 s or 3.2 s here, depending on
    which side of a poll the registration fell. Polling the GCS's node table every ``poll`` seconds first makes
    the one call Ray then makes succeed at once. On any error (or after ``patience`` seconds) Ray's own wait
    takes over unchanged."""
    try:
        from ray._private import services  # pinned ray 2.60
        from ray._raylet import GcsClient
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        alive = GcsNodeInfo.ALIVE
        original = services.get_node
    except (ImportError, AttributeError):
        yield
        return

    def get_node(gcs_address, node_id):
        try:
            client = GcsClient(address=gcs_address)
            deadline = time.monotonic() + patience
            while time.monotonic() < deadline:
                nodes = client.get_all_node_info(timeout=5)
                if any(nid.hex() == node_id and info.state == alive for nid, info in nodes.items()):
                    break
                time.sleep(poll)
        except Exception:  # noqa: BLE001 - an optimisation only: Ray's own wait follows
            _log.debug("could not poll the GCS for the new raylet", exc_info=True)
        return original(gcs_address, node_id)

    services.get_node = get_node
    try:
        yield
    finally:
        services.get_node = original


def shutdown() -> None:
    """``ray.shutdown()``, without its one-second stall on an embedded instance: Ray stops its processes one
    by one, GCS before the autoscaler monitor, whose SIGTERM handler then tries to report to the dead GCS and
    is killed only when its 1 s grace period runs out. The monitor holds no state worth a graceful exit here,
    so it is killed first."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # noqa: SLF001 - pinned ray 2.60
    if node is not None and node.is_head():
        try:
            node.kill_monitor(check_alive=False)
        except Exception:  # noqa: BLE001 - the normal shutdown below still stops it
            _log.debug("could not stop Ray's monitor early", exc_info=True)
    ray.shutdown()


def add_connect_arguments(parser) -> None:
    """The command-line options of :func:`connect`: ``--address``, ``--num-cpus``, ``--num-gpus``."""
    parser.add_argument("--address", metavar="ADDR", help="join an existing Ray cluster (e.g. 'auto', 'HOST:6379')")
    parser.add_argument("--num-cpus", type=int, metavar="N", help="CPUs of the embedded Ray (default: all)")
    parser.add_argument("--num-gpus", type=int, metavar="N", help="GPUs of the embedded Ray (default: detected)")
