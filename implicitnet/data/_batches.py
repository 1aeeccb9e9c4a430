"""Seeded shuffling and mini-batching."""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

from .. import backends
from .._xp import device, namespace
from ..backends import host

__all__ = ["batches", "num_batches"]


def num_batches(n: int, batch_size: int, *, drop_last: bool = False) -> int:
    """Number of batches :func:`batches` yields for `n` samples."""
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    x: Any,
    y: Any = None,
    batch_size: int = 128,
    *,
    seed: int | None = None,
    epoch: int = 0,
    drop_last: bool = False,
) -> Iterator:
    """Iterate over mini-batches of `x` (and `y`) along the first axis.

    Parameters
    ----------
    x : array
        Inputs, samples along axis 0.
    y : array, optional
        Targets, with as many samples as `x`.
    batch_size : int, default: 128
        Samples per batch; the last batch may be smaller unless `drop_last`.
    seed : int, optional
        Shuffle with a permutation drawn from ``(seed, epoch)``; ``None`` keeps the order.
    epoch : int, default: 0
        Epoch index: each epoch gets a different permutation, reproducible from the
        seed alone (so a resumed run sees the same batches as an uninterrupted one).
    drop_last : bool, default: False
        Drop the last, incomplete batch.

    Yields
    ------
    array or (array, array)
        ``xb``, or ``(xb, yb)`` when `y` is given, on the arrays' backend and device.

    Raises
    ------
    ValueError
        If `batch_size` is not positive or `x` and `y` differ in length.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import data
    >>> x = np.arange(5.0)
    >>> [xb.tolist() for xb in data.batches(x, batch_size=2)]
    [[0.0, 1.0], [2.0, 3.0], [4.0]]
    >>> a = [xb.tolist() for xb in data.batches(x, batch_size=5, seed=0, epoch=1)]
    >>> b = [xb.tolist() for xb in data.batches(x, batch_size=5, seed=0, epoch=1)]
    >>> a == b and sorted(a[0]) == x.tolist()
    True
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        msg = f"`batch_size` must be an int, got {type(batch_size).__name__}"
        raise TypeError(msg)
    if batch_size < 1:
        msg = f"`batch_size` must be positive, got {batch_size}"
        raise ValueError(msg)
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
        msg = f"`epoch` must be a non-negative int, got {epoch!r}"
        raise ValueError(msg)
    if x.ndim == 0:
        msg = "`x` must have at least one dimension"
        raise ValueError(msg)
    n = x.shape[0]
    if y is not None and y.shape[0] != n:
        msg = f"`y` has {y.shape[0]} samples but `x` has {n}"
        raise ValueError(msg)
    return _iterate(x, y, int(batch_size), seed, int(epoch), drop_last)


def _iterate(x, y, batch_size, seed, epoch, drop_last):
    n = x.shape[0]
    if seed is not None:
        xp = namespace(x)
        be = backends.backend_of(x)
        host_perm = host.permutation(n, seed, epoch)
        # One gather per epoch, then contiguous slices.
        x = xp.take(x, be.from_numpy(host_perm, device=device(x)), axis=0)
        if y is not None:
            y = xp.take(y, be.from_numpy(host_perm, device=device(y)), axis=0)
    for k in range(num_batches(n, batch_size, drop_last=drop_last)):
        sl = slice(k * batch_size, min((k + 1) * batch_size, n))
        if y is None:
            yield x[sl, ...]
        else:
            yield x[sl, ...], y[sl, ...]
