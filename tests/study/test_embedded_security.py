"""An embedded study's Ray is reachable from this machine only, with token auth on by default."""
from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")  # comes with ray

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# long enough (a few seconds of trials) for every Ray process, trial workers included, to be up while we look
STUDY = """\
name: listening
problems: [toy-small]
methods: {gd: {lr: 0.1}}
seeds: 2
budget: {iterations: 3000}
report_interval: 0.2
"""


def _listening(root: psutil.Process) -> dict[tuple[int, str], set]:
    """(pid, process name) -> the local addresses it listens on (TCP) or is bound to (UDP), whole tree."""
    found: dict[tuple[int, str], set] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            name = proc.name()
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN or (conn.type == 2 and not conn.raddr):  # 2: SOCK_DGRAM
                    found.setdefault((proc.pid, name), set()).add((conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def test_every_listening_socket_of_an_embedded_study_is_loopback_bound(tmp_path, subprocess_env):
    study = tmp_path / "listening.yaml"
    study.write_text(STUDY)
    env = dict(subprocess_env)
    env.pop("RAY_AUTH_MODE", None)  # the default a user gets
    env["HOME"] = str(tmp_path)  # this test's own token file
    proc = subprocess.Popen([sys.executable, "-m", "sqn_ray.study", "run", str(study), "--out", str(tmp_path / "out"),
                             "--quiet"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[tuple[int, str], set] = {}
    root = psutil.Process(proc.pid)
    deadline = time.monotonic() + 150
    while proc.poll() is None and time.monotonic() < deadline:
        for key, addrs in _listening(root).items():
            seen.setdefault(key, set()).update(addrs)
        time.sleep(0.1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    names = {name for _, name in seen}
    # the whole cluster was looked at: its servers and the trial workers
    assert "gcs_server" in names and "raylet" in names, names
    assert any(n.startswith("ray::") for n in names), names
    exposed = {key: sorted(a for a in addrs if not _is_loopback(a[0])) for key, addrs in seen.items()}
    exposed = {k: v for k, v in exposed.items() if v}
    assert not exposed, f"bound beyond loopback: {exposed}"
    # token auth was on: Ray ran in token mode with the token this run created, readable by its owner only
    token = tmp_path / ".ray" / "auth_token"
    assert token.exists() and token.stat().st_mode & 0o777 == 0o600
    assert "Token authentication is disabled" not in err
