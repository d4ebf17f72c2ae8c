"""Parquet output that readers never see half-written: write a temporary file beside it, then rename."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; on success it is renamed to ``path`` (atomic on POSIX), on
    any error removed. Readers see the old file or the complete new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_temp_file(path: Path) -> Path:
    """A new, empty file beside ``path`` with the permissions any new file gets (0666 less the umask: a
    team sharing a results disk can read it). ``tempfile.mkstemp`` would make it 0600, and the rename
    would carry that mode to the published file."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; ``fsync`` also forces it to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_table_atomic(table, path: str | os.PathLike, *, compression: str = "zstd", **options) -> Path:
    """Write a pyarrow Table so that readers see either the old file or the new one, never half of one.
    ``options``: further ``pyarrow.parquet.write_table`` arguments."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=compression, **options)
    return Path(path)


def write_parquet_atomic(frame: pd.DataFrame, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``frame`` to ``path`` atomically; ``metadata`` values are stored JSON-encoded in the schema."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata:
        extra = {k.encode(): json.dumps(v, default=str).encode() for k, v in metadata.items()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    return write_table_atomic(table, path)


def read_parquet_metadata(path: str | os.PathLike, prefix: str | None = None) -> dict:
    """The schema metadata of a Parquet file (pandas' own entry left out; only keys starting with ``prefix``
    when given): JSON values decoded, any other value (a YAML text, a git revision) returned as a string."""
    import pyarrow.parquet as pq

    out = {}
    for k, v in (pq.read_schema(path).metadata or {}).items():
        key = k.decode()
        if key == "pandas" or (prefix is not None and not key.startswith(prefix)):
            continue
        text = v.decode("utf-8", errors="replace")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out
