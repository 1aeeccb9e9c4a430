"""Host-side array files: atomic ``.npz`` writes and checked reads."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile

import numpy as np

METADATA_KEY = "__implicitnet_metadata__"


def _write_npz(fh, arrays: dict) -> None:
    np.savez(fh, **arrays)


def save_arrays(path, arrays: dict, metadata=None) -> None:
    """Write NumPy `arrays` (name -> array) and JSON `metadata` to `path`, atomically.

    The data go to a temporary file in the same directory, which is flushed, fsynced
    and then renamed over `path` (``os.replace``): a reader sees the old file or the
    new one, never a partial write. If anything fails, the temporary file is removed
    and the previous file at `path` is left as it was.
    """
    path = os.fspath(path)
    if METADATA_KEY in arrays:
        msg = f"the array name {METADATA_KEY!r} is reserved"
        raise ValueError(msg)
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    if metadata is not None:
        text = json.dumps(metadata, sort_keys=True)
        payload[METADATA_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            _write_npz(fh, payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable (POSIX); harmless where directories cannot be opened.
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def load_arrays(path) -> tuple[dict, object]:
    """Read a file written by :func:`save_arrays`: ``(arrays, metadata)``.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the file is not a readable ``.npz`` archive (truncated, corrupt, or another
        format); the message names the path.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        msg = f"{path}: no such file"
        raise FileNotFoundError(msg)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            msg = "a single .npy array, not an .npz archive"
            raise ValueError(msg)
        with loaded as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        msg = f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})"
        raise ValueError(msg) from None
    metadata = None
    if METADATA_KEY in arrays:
        raw = arrays.pop(METADATA_KEY)
        try:
            metadata = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            msg = f"{path}: corrupt metadata ({exc})"
            raise ValueError(msg) from None
    return arrays, metadata
