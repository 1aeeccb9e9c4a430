"""Host-side array files: atomic ``.npz`` writes and checked reads."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import zipfile

import numpy as np

METADATA_KEY = "__implicitnet_metadata__"
PARTIAL_SUFFIX = ".partial"


def _host_tag() -> str:
    # Hostname without the characters that a file name or the pattern below would trip on.
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def partial_path(path, pid: int | None = None) -> str:
    """The temporary file that a save of `path` by process `pid` writes first.

    ``DIR/.NAME.HOST-PID.partial`` beside ``DIR/NAME``: a save writes it in full, then
    renames it over `path`. One name per process, so concurrent writers never share a
    temporary file, and a file left by a killed writer can be recognised and removed.
    """
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    pid = os.getpid() if pid is None else pid
    return os.path.join(directory, f".{name}.{_host_tag()}-{pid}{PARTIAL_SUFFIX}")


def _process_alive(pid: int) -> bool:
    if os.name != "posix":  # no harmless liveness probe: assume alive, remove nothing
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_partials(path) -> list[str]:
    """Remove the temporary files of saves of `path` whose process has died.

    A save killed between writing and renaming (SIGKILL, power loss) leaves its
    temporary file behind; the next save of the same path, from any process on this
    host, removes it. Files of live processes and of other hosts are left alone.
    Returns the paths removed.
    """
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    pattern = re.compile(
        rf"\.{re.escape(name)}\.{re.escape(_host_tag())}-(\d+){re.escape(PARTIAL_SUFFIX)}\Z"
    )
    removed = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry)
        if m is None or int(m.group(1)) == os.getpid() or _process_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, entry))
            removed.append(os.path.join(directory, entry))
    return removed


def check_writable(path) -> None:
    """Raise ``OSError`` now if a save of `path` could not write its temporary file.

    Creates and removes the very file a save writes first (see :func:`partial_path`),
    so a read-only directory or file system is found before any work is done.
    """
    tmp = partial_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.close(fd)
    os.unlink(tmp)


def _write_npz(fh, arrays: dict) -> None:
    np.savez(fh, **arrays)


def save_arrays(path, arrays: dict, metadata=None) -> None:
    """Write NumPy `arrays` (name -> array) and JSON `metadata` to `path`, atomically.

    The data go to a temporary file in the same directory (:func:`partial_path`), which
    is flushed, fsynced and then renamed over `path` (``os.replace``): a reader sees the
    old file or the new one, never a partial write. If anything fails, the temporary
    file is removed and the previous file at `path` is left as it was; temporary files
    left by killed saves of `path` are removed first (:func:`remove_stale_partials`).
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
    remove_stale_partials(path)
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as fh:
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
