"""Variational dropout: one mask per solve, reused by every iteration."""

from __future__ import annotations

from dataclasses import dataclass

from .. import backends
from .._tree import static_field
from .._validate import check_real
from .._xp import device as device_of
from .._xp import namespace
from ..backends import host
from ._module import Module

__all__ = ["VariationalDropout", "dropout_mask"]


def dropout_mask(shape, rate: float, seed, *, dtype=None, backend="numpy", device=None):
    """A dropout mask: entries 0 with probability `rate`, else ``1 / (1 - rate)``.

    Parameters
    ----------
    shape : tuple of int
        Shape of the mask; use size-1 axes to share one draw along them (for example
        ``(n, channels, 1, 1)`` drops whole feature maps).
    rate : float
        Drop probability, in ``[0, 1)``.
    seed : int or numpy.random.Generator
        Source of randomness (drawn on the host: the same mask on every backend).
    dtype : dtype or str, optional
        float32 or float64 (default).
    backend : str or backend module, default: "numpy"
    device : optional

    Returns
    -------
    array
        The mask; ``E[mask] = 1`` (inverted dropout: no rescaling at evaluation time).

    Examples
    --------
    >>> from implicitnet import nn
    >>> m = nn.dropout_mask((2, 4), 0.5, seed=0)
    >>> sorted(set(m.ravel().tolist())) in ([0.0, 2.0], [0.0], [2.0])
    True
    """
    rate = check_real(rate, "rate", low=0.0, high=1.0, high_open=True)
    be = backends.get_backend(backend)
    dtype = host.dtype_name(dtype)
    u = be.random_uniform(shape, seed, dtype=dtype, device=device)
    xp = be.namespace()
    keep = xp.asarray(1.0 / (1.0 - rate), dtype=u.dtype, device=device)
    return xp.where(u >= rate, keep, xp.zeros_like(u))


@dataclass(frozen=True)
class VariationalDropout(Module):
    """Dropout with a mask drawn once and reused: the form equilibrium models need.

    A fixed-point solve calls the cell many times; ordinary dropout would draw a new
    mask each time and the iteration would have no fixed point. Draw the mask once per
    forward pass with :meth:`mask`, pass it to the cell as an argument (so that the
    backward pass sees the same map), and apply it with ``dropout(z, mask)``.

    Parameters
    ----------
    rate : float, default: 0.0
        Drop probability in ``[0, 1)`` (static).

    Notes
    -----
    Gal & Ghahramani (2016) for recurrent networks; Bai, Kolter & Koltun (2019) use the
    same scheme in deep equilibrium models.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> drop = nn.VariationalDropout(rate=0.5)
    >>> z = np.ones((2, 3))
    >>> mask = drop.mask(z.shape, seed=0, like=z)
    >>> bool(np.array_equal(drop(z, mask), z * mask))  # the same mask every call
    True
    >>> drop(z, None) is z  # evaluation: no mask, identity
    True
    """

    rate: float = static_field(default=0.0)

    def __post_init__(self):
        check_real(self.rate, "rate", low=0.0, high=1.0, high_open=True)

    def mask(self, shape, seed, *, like=None, dtype=None, backend="numpy", device=None):
        """Draw a mask of `shape` (``None`` when ``rate == 0``).

        With `like` (an array), the mask takes its dtype, backend and device.
        """
        if self.rate == 0.0:
            return None
        if like is not None:
            return dropout_mask(
                shape,
                self.rate,
                seed,
                dtype=like.dtype,
                backend=backends.backend_of(like),
                device=device_of(like),
            )
        return dropout_mask(shape, self.rate, seed, dtype=dtype, backend=backend, device=device)

    def __call__(self, x, mask=None):
        if mask is None:
            return x
        namespace(x, mask)  # same library check
        return x * mask
