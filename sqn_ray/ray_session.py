"""One way to connect to Ray and to stop it, for every command that uses it (studies, scaling).

:func:`connect` joins a cluster (``address`` or RAY_ADDRESS) or starts a private embedded instance;
:func:`shutdown` stops what :func:`connect` started. Importing this module does not import Ray Tune.

An embedded instance is private to this machine and to this user: every server of it (GCS, raylet, object
manager, workers, runtime-env agent) listens on the loopback interface only, and Ray's token authentication is
on (the token lives in ``~/.ray/auth_token``, created readable by its owner only when missing). A user who
really wants it off sets ``RAY_AUTH_MODE=disabled`` and gets Ray's own warning. Joining a cluster changes
neither: the cluster's address and auth settings are the cluster's.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import time
from pathlib import Path

__all__ = ["connect", "shutdown", "add_connect_arguments", "embedded_auth", "loopback_only", "LOOPBACK"]

_log = logging.getLogger(__name__)
_ROOT = str(Path(__file__).resolve().parents[1])
LOOPBACK = "127.0.0.1"
AUTH_MODE_VAR = "RAY_AUTH_MODE"


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
        # a cluster on this machine's loopback (`ray start --node-ip-address 127.0.0.1`, a test cluster): Ray
        # would rewrite the address to the routable one, where nothing listens
        with loopback_only() if _is_loopback(address) else contextlib.nullcontext():
            ray.init(address=address, **quiet)
        return "cluster"
    embedded_auth()
    os.environ.update(worker_env or {})
    # address="local": always a new instance, even if `ray start` left a cluster running on this machine.
    # No preload_python_modules: workers that import torch before registering are not idle when Tune asks
    # for its actors, so Ray starts more workers, all importing torch at once (one actor ran whole studies).
    with loopback_only(), _prompt_node_registration():
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, include_dashboard=False,
                 object_store_memory=object_store_memory, _node_ip_address=LOOPBACK, **quiet)
    # The log monitor streams worker output to the driver, which log_to_driver=False turns off; it would still
    # poll the log folder ~1.5 % of a core, taken from the work (workers keep writing their own log files).
    try:
        ray._private.worker._global_node.kill_log_monitor(check_alive=False)  # noqa: SLF001 - pinned ray 2.60
    except Exception:  # noqa: BLE001 - an optimisation only
        _log.debug("could not stop Ray's log monitor", exc_info=True)
    return "embedded"


def _is_loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def embedded_auth() -> str:
    """Token auth for an embedded instance unless the user turned it off; returns the mode.

    The mode is set explicitly (``RAY_AUTH_MODE=token`` for this process and the instance it starts), so Ray
    neither repeats its "enabled by default" warning at every study nor ever falls back to no auth. A missing
    token is created here, readable by its owner only (Ray would write it with the default umask, 0644: any
    local user could read it and join). An explicit ``RAY_AUTH_MODE=disabled`` is honoured with Ray's own
    warning, which Ray itself stays silent about when the mode is set explicitly."""
    mode = os.environ.get(AUTH_MODE_VAR)
    if mode is not None and mode.lower() == "disabled":
        try:
            from ray._private.authentication.authentication_token_setup import (  # pinned ray 2.60
                _warn_token_auth_disabled,
            )

            _warn_token_auth_disabled()
        except ImportError:
            _log.warning("%s=disabled: token authentication is off for this Ray instance", AUTH_MODE_VAR)
        return "disabled"
    os.environ[AUTH_MODE_VAR] = "token"
    try:
        from ray._private.authentication.authentication_token_generator import (  # pinned ray 2.60
            generate_new_authentication_token,
        )
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")  # Ray caches its config at import: let it see the mode set above
        loader = AuthenticationTokenLoader.instance()
        if not loader.has_token(ignore_auth_mode=True):
            _write_private_token(Path.home() / ".ray" / "auth_token", generate_new_authentication_token())
            loader.reset_cache()
    except ImportError:  # another Ray: its ray.init creates the token itself
        _log.debug("Ray's token helpers not found; Ray creates the token", exc_info=True)
    return "token"


def _write_private_token(path: Path, token: str) -> None:
    """Create ``path`` holding ``token``, mode 0600 in a 0700 folder (never replacing an existing token)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)


@contextlib.contextmanager
def loopback_only():
    """Make ``ray.init`` keep its node on the loopback address.

    ``ray.init(_node_ip_address="127.0.0.1")`` alone is not enough on Linux: Ray turns a loopback address into
    the machine's routable one (``services.resolve_ip_for_localhost``) unless "Ray clusters" are disabled, as
    they are on macOS and Windows; with the node's address left at 127.0.0.1, the GCS, raylet and workers bind
    their servers to loopback instead of to every interface. The switch is Ray's own constant, turned off only
    while this instance starts (a later ``ray.init(address=...)`` to a real cluster in this process must
    resolve its own address as usual)."""
    try:
        from ray._private import ray_constants  # pinned ray 2.60
    except ImportError:
        yield
        return
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


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
