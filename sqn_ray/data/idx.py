"""The idx file format of MNIST (LeCun, Cortes & Burges), read strictly.

An idx file is a 4-byte magic number ``0x00 0x00 T D`` (T the element type, D the number of dimensions),
then D big-endian uint32 sizes, then the elements in row-major order, big-endian:

=====  ===========  ======
T      element      bytes
=====  ===========  ======
0x08   uint8        1
0x09   int8         1
0x0B   int16        2
0x0C   int32        4
0x0D   float32      4
0x0E   float64      8
=====  ===========  ======

:func:`parse_idx` rejects anything that is not exactly that: a bad magic, an unknown type, a truncated body
(a partial download) and trailing bytes are all :class:`IdxFormatError`. A gzip-compressed file (as the
original distribution and Fashion-MNIST ship them) is recognised by its own magic and decompressed first.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["IdxFormatError", "parse_idx", "read_idx", "encode_idx", "IDX_TYPES"]

#: idx element type code -> big-endian numpy dtype
IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ValueError):
    """The bytes are not a complete, well-formed idx file."""


def parse_idx(data: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """The array stored in the idx bytes ``data`` (native byte order; a fresh, writable array)."""
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:  # truncated or corrupt gzip stream
            raise IdxFormatError(f"{name}: corrupt gzip stream ({e})") from None
    if len(data) < 4:
        raise IdxFormatError(f"{name}: {len(data)} bytes, too short for an idx header")
    if data[0] != 0 or data[1] != 0:
        raise IdxFormatError(f"{name}: bad magic number {data[:4].hex()} (an idx file starts with 0000)")
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        raise IdxFormatError(f"{name}: unknown element type 0x{code:02x}; known: "
                             f"{', '.join(f'0x{c:02x}' for c in IDX_TYPES)}")
    if ndim == 0:
        raise IdxFormatError(f"{name}: zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{name}: truncated header ({len(data)} bytes, {header} needed for {ndim} dims)")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing bytes"
        raise IdxFormatError(f"{name}: {what}: {len(data)} bytes, but a {dtype.name} array of shape {shape} "
                             f"needs exactly {expected}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """:func:`parse_idx` of a file (plain or gzip-compressed)."""
    path = Path(path)
    return parse_idx(path.read_bytes(), name=str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """The idx bytes of ``array`` (the inverse of :func:`parse_idx`; used to build test fixtures)."""
    array = np.asarray(array)
    for code, dtype in IDX_TYPES.items():  # noqa: B007 - the code found is used after the loop
        if dtype.newbyteorder("=") == array.dtype.newbyteorder("="):
            break
    else:
        raise ValueError(f"no idx element type for dtype {array.dtype}; allowed: "
                         f"{', '.join(str(d.newbyteorder('=')) for d in IDX_TYPES.values())}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"an idx array has 1 to 255 dimensions, got {array.ndim}")
    head = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return head + np.ascontiguousarray(array, dtype=dtype).tobytes()
