"""Decoder for the IDX format of (Fashion-)MNIST (``*-idx3-ubyte``, optionally gzipped).

Layout (big-endian): two zero bytes, one dtype code byte, one byte giving the number
of dimensions ``n``, then ``n`` uint32 sizes, then the data in C order.
"""

from __future__ import annotations

import gzip
import os
import struct
from typing import BinaryIO

import numpy as np

# dtype code -> numpy big-endian dtype
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx_header(fh: BinaryIO) -> tuple[np.dtype, tuple[int, ...]]:
    """Read an IDX header from ``fh``; return (dtype, shape) and leave ``fh`` at the data.

    Raises:
        ValueError: on a truncated header, a bad magic number or an unknown dtype code.
    """
    magic = fh.read(4)
    if len(magic) < 4:
        raise ValueError("truncated IDX header (fewer than 4 bytes)")
    if magic[0] != 0 or magic[1] != 0:
        raise ValueError(f"bad IDX magic {magic.hex()}: the first two bytes must be zero")
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        raise ValueError(f"unknown IDX dtype code 0x{code:02x}")
    if ndim == 0:
        raise ValueError("IDX header declares 0 dimensions")
    dims = fh.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError(f"truncated IDX header: {ndim} dimensions declared")
    shape = struct.unpack(f">{ndim}I", dims)
    return IDX_DTYPES[code], tuple(int(s) for s in shape)


def read_idx(source: str | os.PathLike | BinaryIO) -> np.ndarray:
    """Decode an IDX file (path, ``.gz`` path or open binary file) into a numpy array.

    The array has the file's shape and native byte order (uint8 for images/labels).

    Raises:
        ValueError: bad header (see :func:`read_idx_header`), or a data section shorter
            or longer than the header says.
    """
    if hasattr(source, "read"):
        return _read_open(source)  # type: ignore[arg-type]
    path = os.fspath(source)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        try:
            return _read_open(fh)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc


def _read_open(fh: BinaryIO) -> np.ndarray:
    dtype, shape = read_idx_header(fh)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data = fh.read(expected + 1)
    if len(data) != expected:
        raise ValueError(
            f"IDX data size mismatch: header {shape} x {dtype.itemsize} B = {expected} B, "
            f"found {len(data) if len(data) <= expected else 'more than ' + str(expected)} B"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as IDX (gzipped if ``path`` ends in ``.gz``); used to build test data.

    Raises:
        ValueError: if the array's dtype has no IDX code.
    """
    arr = np.asarray(array)
    for code, dt in IDX_DTYPES.items():  # noqa: B007 (code is used after the loop)
        if dt.kind == arr.dtype.kind and dt.itemsize == arr.dtype.itemsize:
            break
    else:
        raise ValueError(f"dtype {arr.dtype} has no IDX code")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + np.ascontiguousarray(arr, dtype=dt).tobytes()
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(payload)
