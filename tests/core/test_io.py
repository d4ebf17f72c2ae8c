"""sqn_ray.io: atomic writes (readers see the old file or the whole new one) and Parquet metadata."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from sqn_ray.io import atomic_path, read_parquet_metadata, write_bytes_atomic, write_parquet_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "data.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the n")
        assert target.read_bytes() == b"old"  # nothing visible before the rename
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_writes_replace_whole_files_and_create_folders(tmp_path):
    target = tmp_path / "a" / "b" / "data.bin"
    assert write_bytes_atomic(target, b"first", fsync=True) == target
    write_bytes_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["data.bin"]


def test_parquet_metadata_round_trip(tmp_path):
    path = write_parquet_atomic(pd.DataFrame({"x": [1.0, 2.0]}), tmp_path / "f.parquet",
                                metadata={"sqn_ray.spec": {"m": 5}, "sqn_ray.note": "plain text"})
    assert pd.read_parquet(path)["x"].tolist() == [1.0, 2.0]
    assert read_parquet_metadata(path) == {"sqn_ray.spec": {"m": 5}, "sqn_ray.note": "plain text"}
    assert read_parquet_metadata(path, prefix="sqn_ray.spec") == {"sqn_ray.spec": {"m": 5}}


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_get_the_usual_permissions(tmp_path, umask):
    """0666 less the umask, as any new file (a team on a shared results disk reads them), not mkstemp's 0600."""
    old = os.umask(umask)
    try:
        path = write_bytes_atomic(tmp_path / "data.bin", b"x")
        table = write_parquet_atomic(pd.DataFrame({"x": [1.0]}), tmp_path / "f.parquet")
    finally:
        os.umask(old)
    for p in (path, table):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask
