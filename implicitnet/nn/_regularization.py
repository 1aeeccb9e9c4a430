"""Jacobian regularisation of an equilibrium layer: a differentiable Hutchinson estimate."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import backends as _backends
from .._adjoint import _constant
from .._tree import tree_flatten, tree_unflatten
from .._xp import is_tensor, namespace, untraced, vector_norm
from ..autodiff import vjp

__all__ = ["jacobian_regularization"]


def jacobian_regularization(
    f: Callable,
    z: Any,
    args: Any = (),
    *,
    n_probes: int = 1,
    seed: Any = 0,
    method: str = "fd",
    eps: float | None = None,
):
    """Hutchinson estimate of ``||∂f/∂z||_F^2 / z.size`` at `z`, differentiable.

    Draws `n_probes` standard normal probes ``v`` (shaped like `z`) and averages
    ``||J v||^2`` (``method="fd"``) or ``||v^T J||^2`` (``method="vjp"``); both are
    unbiased estimates of ``||J||_F^2`` because ``E[v v^T] = I``. Divided by the number
    of elements of `z`, as in Bai, Koltun & Kolter (2021), so its scale does not depend
    on batch size or width. Add it to the loss (times a small weight) to keep the
    equilibrium well conditioned.

    Parameters
    ----------
    f : callable
        The map ``f(z, *args)``.
    z : array or Tensor
        The point, usually the equilibrium ``z*``.
    args : tuple
        Arguments of `f`; gradients flow to them when they are tensors.
    n_probes : int, default: 1
        Number of Hutchinson probes.
    seed : int or numpy.random.Generator, default: 0
        Source of the probes (drawn on the host, so every backend sees the same ones).
    method : {"fd", "vjp"}, default: "fd"
        ``"fd"``: Jacobian-vector products by forward differences
        ``(f(z + eps v) - f(z)) / eps``: first-order, only forward evaluations of `f`.
        ``"vjp"``: exact vector-Jacobian products; differentiating the estimate then
        needs second derivatives of `f` (supported by implicitnet's autodiff).
    eps : float, optional
        Finite-difference step for ``"fd"``. Default: ``sqrt(machine epsilon)`` times
        ``max(1, rms(z))``.
    Returns
    -------
    array or Tensor
        A 0-d estimate, differentiable with respect to `z` and `args`.

    References
    ----------
    S. Bai, V. Koltun and J. Z. Kolter, "Stabilizing equilibrium models by Jacobian
    regularization", ICML (2021). M. F. Hutchinson, "A stochastic estimator of the
    trace of the influence matrix for Laplacian smoothing splines" (1989).

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> W = 0.5 * np.eye(3)
    >>> est = inet.jacobian_regularization(lambda z, W: z @ W.T, np.ones((2, 3)), (W,),
    ...                                    n_probes=200)
    >>> bool(abs(float(est) - 0.25) < 0.05)
    True
    """

    if method not in ("fd", "vjp"):
        msg = f"`method` must be 'fd' or 'vjp', got {method!r}"
        raise ValueError(msg)
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        msg = f"`n_probes` must be a positive integer, got {n_probes!r}"
        raise ValueError(msg)
    if not isinstance(args, tuple | list):
        args = (args,)
    backend = _backends.backend_of(z)
    raw_z = untraced(z)
    size = 1
    for s in raw_z.shape:
        size *= s
    probes = backend.random_normal(
        (n_probes, *raw_z.shape), seed, dtype=raw_z.dtype, device=getattr(raw_z, "device", None)
    )
    # Raw arrays enter as constant tensors (strict libraries refuse `raw op tensor`).
    z = _constant(z)
    leaves, treedef = tree_flatten(tuple(args))
    args = tree_unflatten(treedef, [_constant(a) for a in leaves])
    xp = namespace(z)
    total = None
    if method == "fd":
        if eps is None:
            rms = float(vector_norm(raw_z, xp=namespace(raw_z))) / math.sqrt(max(size, 1))
            finfo = namespace(raw_z).finfo(raw_z.dtype)
            eps = math.sqrt(float(finfo.eps)) * max(1.0, rms)
        fz = f(z, *args)
        for k in range(n_probes):
            jv = (f(z + eps * probes[k, ...], *args) - fz) / eps
            term = xp.sum(jv * jv)
            total = term if total is None else total + term
    else:
        _, vjp_fn = vjp(lambda zz: f(zz, *args), z)
        for k in range(n_probes):
            vj = vjp_fn(probes[k, ...])[0]
            term = xp.sum(vj * vj)
            total = term if total is None else total + term
    out = total / (n_probes * size)
    return out if is_tensor(out) and out.traced else untraced(out)
