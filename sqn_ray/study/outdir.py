"""A study's output folder: one driver at a time, checked before Ray starts, recoverable from damage.

``DIR`` holds the contract files (``iterations.parquet``, ``trials.parquet``), the platform's own state
(``.study.json``: which study, ``.parts/``: one Parquet file per finished trial and ``.parts/live/`` the
segments of rows written while trials ran, the source of truth; see :mod:`sqn_ray.study.results`) and
Tune's experiment state (``.tune/``, a cache that can be rebuilt from the parts).

* :func:`open_output_folder` makes ``DIR`` and takes its lock (``DIR/.lock``, an ``flock`` the kernel
  releases when the driver dies, even by kill -9), refusing a second driver with who holds it; a folder
  that cannot be written (a file in its place, no permission, a read-only or full file system) is refused
  in one line, before Ray starts.
* :func:`read_state` / :func:`write_state`: ``.study.json``.
* :func:`tune_trial_statuses`: the trial statuses in Tune's newest experiment state, or why that state
  cannot be used (unreadable, garbage): the runner then rebuilds Tune's side from the parts.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..io import write_bytes_atomic

__all__ = ["StudyError", "OutputFolder", "open_output_folder", "read_state", "write_state",
           "tune_trial_statuses", "STATE_FILE", "LOCK_FILE"]

STATE_FILE = ".study.json"
LOCK_FILE = ".lock"
_STATE_KEYS = ("name", "fingerprint")


class StudyError(RuntimeError):
    """The study cannot run as asked (output folder in use, not writable, holding another study, ...): one
    line, said before Ray starts."""


@dataclass
class OutputFolder:
    path: Path
    _lock_fd: int | None = None

    def close(self) -> None:
        """Release the lock (the kernel does it too when the process ends)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _why(e: OSError) -> str:
    reasons = {errno.EROFS: "the file system is read-only", errno.ENOSPC: "no space left on the device",
               errno.EDQUOT: "the disk quota is exhausted", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.ENOTDIR: "a part of the path is a file"}
    return reasons.get(e.errno, e.strerror or str(e))


def open_output_folder(path: Path) -> OutputFolder:
    """Create ``path`` if needed, check that it can be written, and lock it for this driver."""
    if path.exists() and not path.is_dir():
        raise StudyError(f"--out {path} is a file, not a folder; choose a folder")
    made_folder = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StudyError(f"cannot create the output folder {path}: {_why(e)}") from None
    lock = path / LOCK_FILE
    made_lock = not lock.exists()

    def refuse(message: str) -> StudyError:
        """The error, once what this call created is gone again (a refused folder is left as it was)."""
        with contextlib.suppress(OSError):
            if made_lock:
                lock.unlink()
            if made_folder:
                path.rmdir()
        return StudyError(message)

    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise refuse(f"cannot write in the output folder {path}: {_why(e)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _holder(fd)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StudyError(f"{path} is in use by another study driver ({holder}); wait for it to end "
                                    f"or stop it, or choose another --out") from None
        raise StudyError(f"cannot lock the output folder {path}: {_why(e)}") from None
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        # a write of a few KB proves there is room for more than the lock (a full disk still takes 0 bytes)
        write_bytes_atomic(path / ".space-check", b"\0" * 65536)
        (path / ".space-check").unlink()
    except OSError as e:
        os.close(fd)
        raise refuse(f"cannot write in the output folder {path}: {_why(e)}") from None
    return OutputFolder(path, fd)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its lock file gives no details"


def read_state(path: Path) -> dict | None:
    """The study that ``path`` holds (``.study.json``), None if none; a damaged file is an error naming it."""
    file = path / STATE_FILE
    try:
        state = json.loads(file.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StudyError(f"{file} is damaged ({type(e).__name__}); it names the study this folder "
                                "holds: remove the folder, or restore the file") from None
    if not isinstance(state, dict) or any(not isinstance(state.get(k), str) for k in _STATE_KEYS):
        raise StudyError(f"{file} is damaged (not a study record); it names the study this folder "
                                "holds: remove the folder, or restore the file")
    return state


def write_state(path: Path, study) -> None:
    write_bytes_atomic(path / STATE_FILE, json.dumps({
        "name": study.name, "fingerprint": study.fingerprint, "smoke": study.smoke, "source": study.source,
        "started": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1).encode())


def tune_trial_statuses(experiment: Path) -> tuple[dict[str, str] | None, str]:
    """{trial id: status} from Tune's newest ``experiment_state-*.json`` in ``experiment`` (pinned Ray
    2.60 layout), or (None, why it cannot be used)."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return None, "Tune's experiment state is missing"
    if not (experiment / "tuner.pkl").is_file():
        return None, "Tune's tuner.pkl is missing"
    try:
        data = json.loads(states[-1].read_bytes())
        out = {}
        for entry in data["trial_data"]:
            trial = json.loads(entry[0])
            out[str(trial["trial_id"])] = str(trial["status"])
        return out, ""
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        return None, f"Tune's experiment state {states[-1].name} is damaged ({type(e).__name__})"
