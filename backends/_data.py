"""Host-side data helpers: the embedded digits, IDX files, seeded permutations.

Everything here returns NumPy arrays; :mod:`implicitnet.data` moves them to a backend.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np

from . import _common

# IDX type codes (LeCun's MNIST format): code -> big-endian dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def digits(dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's embedded digits: images ``(1797, 8, 8)`` in [0, 1] and int64 labels.

    The data ship inside scikit-learn (no download).
    """
    from sklearn.datasets import load_digits  # deferred: scikit-learn is slow to import

    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float64) / 16.0).astype(_common.dtype_name(dtype))
    return images, np.asarray(bunch.target, dtype=np.int64)


def split_indices(n: int, test_fraction: float, seed) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(n)``: sorted ``(train, test)`` index arrays."""
    n_test = round(test_fraction * n)
    perm = _common.generator(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def permutation(n: int, seed, epoch: int) -> np.ndarray:
    """Permutation of ``range(n)``, reproducible from ``(seed, epoch)``."""
    if isinstance(seed, np.random.Generator):
        return seed.permutation(n)
    _common.generator(seed)  # validates the seed
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def astype(a: np.ndarray, dtype, scale: float = 1.0) -> np.ndarray:
    """`a` as float32/float64 (a dtype or its name), divided by `scale`."""
    out = a.astype(np.float64) / scale if scale != 1.0 else a.astype(np.float64)
    return out.astype(_common.dtype_name(dtype))


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a native-endian NumPy array.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the file is not a well-formed IDX file; the message names the path and says
        what is wrong (bad magic number, unknown type code, truncated data, ...).
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            msg = f"{path}: corrupt gzip data ({exc})"
            raise ValueError(msg) from None
    if len(raw) < 4:
        msg = f"{path}: not an IDX file: {len(raw)} bytes, shorter than the 4-byte header"
        raise ValueError(msg)
    if raw[0] != 0 or raw[1] != 0:
        msg = (
            f"{path}: not an IDX file: magic number 0x{raw[:4].hex()} does not start "
            f"with two zero bytes"
        )
        raise ValueError(msg)
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        msg = f"{path}: unknown IDX type code 0x{code:02X} (known: {known})"
        raise ValueError(msg)
    if ndim == 0:
        msg = f"{path}: IDX header declares 0 dimensions"
        raise ValueError(msg)
    header = 4 + 4 * ndim
    if len(raw) < header:
        msg = (
            f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, "
            f"the file has {len(raw)}"
        )
        raise ValueError(msg)
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dt = _IDX_DTYPES[code]
    count = math.prod(dims)
    expected = header + count * dt.itemsize
    if len(raw) < expected:
        msg = (
            f"{path}: truncated IDX data: shape {dims} of {dt.name} needs {expected} "
            f"bytes, the file has {len(raw)}"
        )
        raise ValueError(msg)
    if len(raw) > expected:
        msg = (
            f"{path}: corrupt IDX file: {len(raw) - expected} bytes after the data of shape {dims}"
        )
        raise ValueError(msg)
    arr = np.frombuffer(raw, dtype=dt, count=count, offset=header).reshape(dims)
    return arr.astype(dt.newbyteorder("="))
