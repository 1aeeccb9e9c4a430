"""The ``(batch, n)`` layout shared by the nonlinear and the linear solvers.

A solve of many independent systems takes an array of any shape whose slices along
`batch_axis` are the systems (or, without a batch axis, one system: the whole array).
Internally every solver works on a 2-D array ``(rows, n)``: one row per system, the
unknowns of a system flattened. :class:`BatchLayout` converts between the two.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["BatchLayout"]


class BatchLayout:
    """Converts between the user's layout and the solvers' ``(rows, n)`` layout.

    Parameters
    ----------
    shape : tuple of int
        The user's shape (that of ``x0`` or ``b``).
    batch_axis : int or None
        The axis of `shape` that carries the systems (non-negative), or None for one
        system.

    Attributes
    ----------
    shape : tuple of int
        As given.
    batch_axis : int or None
        As given.
    batch : int
        Number of systems (1 without a batch axis).
    n : int
        Unknowns per system.
    perm : tuple of int or None
        The permutation that moves the batch axis to the front (None when it is there
        already, or there is none).
    """

    __slots__ = ("_inverse", "_rest", "batch", "batch_axis", "n", "perm", "shape")

    def __init__(self, shape: tuple, batch_axis: int | None):
        self.shape = tuple(shape)
        self.batch_axis = batch_axis
        if batch_axis is None:
            self.batch, self._rest = 1, self.shape
        else:
            self.batch = self.shape[batch_axis]
            self._rest = self.shape[:batch_axis] + self.shape[batch_axis + 1 :]
        self.n = math.prod(self._rest)
        self.perm = None
        self._inverse = None
        if batch_axis not in (None, 0):
            ndim = len(self.shape)
            self.perm = (batch_axis, *(i for i in range(ndim) if i != batch_axis))
            self._inverse = tuple(self.perm.index(i) for i in range(ndim))

    def to_internal(self, x: Any, *, xp: Any) -> Any:
        """User layout (any number of systems along the batch axis) -> ``(rows, n)``."""
        if self.batch_axis is None:
            return xp.reshape(x, (1, self.n))
        if self.perm is not None:
            x = xp.permute_dims(x, self.perm)
        return xp.reshape(x, (x.shape[0], self.n))

    def to_user(self, x: Any, *, xp: Any) -> Any:
        """``(rows, n)`` -> user layout, with ``rows`` systems along the batch axis."""
        if self.batch_axis is None:
            return xp.reshape(x, self.shape)
        x = xp.reshape(x, (x.shape[0], *self._rest))
        if self._inverse is not None:
            x = xp.permute_dims(x, self._inverse)
        return x
