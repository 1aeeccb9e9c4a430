"""Save and load pytrees (models, optimizer states) as named arrays in ``.npz`` files."""

from __future__ import annotations

import os
from typing import Any

from .. import backends
from .._tree import TreeDef, tree_flatten, tree_unflatten
from .._xp import is_tensor
from ..backends import host

__all__ = ["load", "load_metadata", "named_leaves", "save"]


def _names(td: TreeDef, prefix: str, out: list) -> None:
    k = td.kind
    if k == "leaf":
        out.append(prefix or "_")
        return
    if k == "none":
        return
    if k in ("tuple", "list"):
        keys = [str(i) for i in range(len(td.children))]
    elif k == "namedtuple":
        keys = list(td.meta._fields)
    elif k == "dict":
        keys = [str(key) for key in td.meta[1]]
    elif k == "dataclass":
        keys = list(td.meta[1])
    else:  # pragma: no cover - internal invariant
        raise AssertionError(k)
    for key, child in zip(keys, td.children):
        _names(child, f"{prefix}.{key}" if prefix else key, out)


def named_leaves(tree: Any) -> dict:
    """The leaves of `tree` by path name (``"layers.0.weight"``), in flatten order.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> model = nn.Sequential((nn.Linear.create(2, 3, seed=0), nn.ReLU()))
    >>> list(nn.named_leaves({"model": model, "step": np.array(0)}))
    ['model.layers.0.weight', 'model.layers.0.bias', 'step']
    """
    leaves, td = tree_flatten(tree)
    names: list[str] = []
    _names(td, "", names)
    out = {}
    for name, leaf in zip(names, leaves):
        if name in out:
            msg = f"two leaves of the tree have the same path name {name!r}"
            raise ValueError(msg)
        out[name] = leaf
    return out


def _host(x):
    while is_tensor(x):
        x = x._implicitnet_data
    return backends.backend_of(x).to_numpy(x)


def save(path: str | os.PathLike, tree: Any, *, metadata: Any = None) -> None:
    """Write the arrays of `tree` to `path` (``.npz``), atomically.

    Parameters
    ----------
    path : str or path-like
        Destination file. It is written in full to a temporary file in the same
        directory (``.NAME.HOST-PID.partial``), flushed to disk, then renamed over
        `path`: an interrupted save leaves the previous file intact, and a temporary
        file left by a killed process is removed by the next save of `path`.
    tree : pytree of arrays
        A model, an optimizer state, or a dict of them. Array names are the leaves'
        path names (see :func:`named_leaves`).
    metadata : JSON-serialisable, optional
        Stored with the arrays (for example the training configuration); read back
        with :func:`load_metadata`.

    Raises
    ------
    TypeError
        If a leaf is not an array or `metadata` is not JSON-serialisable.

    Examples
    --------
    >>> import os, tempfile
    >>> from implicitnet import nn
    >>> model = nn.Linear.create(2, 1, seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> nn.save(path, model, metadata={"epoch": 3})
    >>> bool((nn.load(path, like=model).weight == model.weight).all()), nn.load_metadata(path)
    (True, {'epoch': 3})
    """
    arrays = {}
    for name, leaf in named_leaves(tree).items():
        try:
            arrays[name] = _host(leaf)
        except TypeError:
            msg = f"`tree` leaf {name!r} is not an array: {type(leaf).__name__}"
            raise TypeError(msg) from None
    host.save_arrays(path, arrays, metadata)


def _read(path):
    return host.load_arrays(path)


def load_metadata(path: str | os.PathLike) -> Any:
    """The metadata saved with :func:`save` (``None`` if there was none)."""
    return _read(path)[1]


def load(path: str | os.PathLike, like: Any = None, *, backend=None, device=None) -> Any:
    """Read arrays written by :func:`save`.

    Parameters
    ----------
    path : str or path-like
        The file.
    like : pytree, optional
        A tree of the same structure (for example a freshly initialised model): the
        result has its structure, and every array its shape and dtype. Without it, a
        ``dict`` of name -> array is returned.
    backend : str or backend module, optional
        Array library of the result. Default: that of `like`'s arrays, else NumPy.
    device : optional
        Device of the result.

    Returns
    -------
    pytree or dict

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the file is corrupt or does not match `like` (missing or extra arrays,
        another shape or dtype); the message names the file and the array.
    """
    arrays, _ = _read(path)
    path = os.fspath(path)
    if like is None:
        be = backends.get_backend(backend or "numpy")
        return {k: be.from_numpy(v, device=device) for k, v in arrays.items()}
    template = named_leaves(like)
    missing = [k for k in template if k not in arrays]
    extra = [k for k in arrays if k not in template]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing arrays {missing}")
        if extra:
            parts.append(f"unexpected arrays {extra}")
        msg = f"{path}: does not match the expected structure: {'; '.join(parts)}"
        raise ValueError(msg)
    leaves = []
    for name, ref in template.items():
        a = arrays[name]
        if tuple(a.shape) != tuple(ref.shape):
            msg = f"{path}: array {name!r} has shape {tuple(a.shape)}, expected {tuple(ref.shape)}"
            raise ValueError(msg)
        host_ref = _host(ref)
        if a.dtype != host_ref.dtype:
            msg = f"{path}: array {name!r} has dtype {a.dtype}, expected {host_ref.dtype}"
            raise ValueError(msg)
        if backend is not None:
            be = backends.get_backend(backend)
        else:
            r = ref
            while is_tensor(r):
                r = r._implicitnet_data
            be = backends.backend_of(r)
        leaves.append(be.from_numpy(a, device=device))
    return tree_unflatten(tree_flatten(like)[1], leaves)
