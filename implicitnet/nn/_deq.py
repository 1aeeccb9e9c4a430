"""The deep equilibrium layer: ``z* = cell(z*, x)``, solved forward, differentiated implicitly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .._tree import static_field, tree_map
from .._validate import check_tolerances
from .._xp import device, namespace
from ..implicit import ImplicitAdjoint, PhantomAdjoint, fixed_point
from ._layers import Linear
from ._module import Module
from ._reparam import MonotoneLinear, SpectralNorm, WeightNorm

__all__ = ["DEQ", "materialize"]


_REPARAM = (WeightNorm, SpectralNorm, MonotoneLinear)


def _is_reparam(m) -> bool:
    return isinstance(m, _REPARAM)


def _effective(m):
    if isinstance(m, WeightNorm | SpectralNorm):
        return dataclasses.replace(m.inner, weight=m.weight())
    # MonotoneLinear: z -> W z is a bias-free linear layer with the constructed W.
    return Linear(weight=m.weight(), bias=None)


def materialize(tree: Any) -> Any:
    """Replace every reparameterised layer in `tree` by the plain layer it computes.

    :class:`WeightNorm` and :class:`SpectralNorm` become their inner layer with the
    effective weight (``g v / ||v||``, ``W / sigma``), :class:`MonotoneLinear` becomes
    a bias-free :class:`Linear` with ``W = (1 - m) I - A^T A + B - B^T``. The result
    computes the same function, but its weights are computed once, here, instead of at
    every call. Under differentiation the effective weights are traced values, so
    gradients still reach the original parameters.

    Parameters
    ----------
    tree : pytree
        A module (or any tree holding modules).

    Returns
    -------
    pytree
        The same structure with reparameterised layers replaced.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> layer = nn.weight_norm(nn.Linear(weight=np.array([[3.0, 4.0]]), bias=None))
    >>> plain = nn.materialize(layer)
    >>> type(plain).__name__, plain.weight.tolist()
    ('Linear', [[3.0, 4.0]])
    """
    return tree_map(lambda m: _effective(m) if _is_reparam(m) else m, tree, is_leaf=_is_reparam)


def _apply_cell(z, cell, x, *mask):
    return cell(z, x, *mask)


@dataclass(frozen=True)
class DEQ(Module):
    """A deep equilibrium layer: the fixed point ``z* = cell(z*, x)`` of a cell module.

    Calling the layer on an input injection `x` solves for the equilibrium with a
    forward solver and returns ``(z_star, result)``. ``z_star`` is differentiable with
    respect to the cell's parameters and to `x` by implicit differentiation (or by the
    chosen `backward` mode), with memory independent of the number of iterations.

    Parameters
    ----------
    cell : Module
        The map, called as ``cell(z, x)`` (or ``cell(z, x, mask)`` when a dropout
        mask is given). It must act on each sample (axis 0) independently: every
        sample is its own fixed-point system.
    method : str or solver object, default: "anderson"
        Forward solver: a registered name (``"anderson"``, ``"broyden"``,
        ``"picard"``, ``"newton_krylov"``, ...) or an object such as
        ``Anderson(m=5)`` (static).
    backward : {"implicit", "phantom", "unrolled"} or adjoint object, default: "implicit"
        How gradients flow through the solve (see :func:`implicitnet.fixed_point`).
    rtol, atol : float, default: 1e-4, 0.0
        Tolerances of the forward solve, per sample.
    maxiter : int, default: 30
        Iteration limit of the forward solve.
    options : dict, optional
        Options of a named `method` (e.g. ``{"m": 5}`` for Anderson).
    backward_options : dict, optional
        Options of a named `backward`: ``ImplicitAdjoint(**backward_options)`` (its
        `rtol` and `atol` default to the forward ones) or
        ``PhantomAdjoint(**backward_options)``.

    Notes
    -----
    Reparameterised layers in the cell (:class:`WeightNorm`, :class:`SpectralNorm`,
    :class:`MonotoneLinear`) are replaced once per call by the plain layers they
    compute (:func:`materialize`), so their weights are computed once per solve and
    not at every iteration; the effective weights are passed to the solve in `args`,
    where the adjoint sees them. The solve is batched (``batch_axis=0``) with
    ``arg_batch_axes`` declared (the cell shared, the injection and the mask split by
    sample), so samples that have converged leave the active set and the cell is
    evaluated on the others only.

    Non-convergence is not an error: ``result.success`` is False and
    ``result.status`` says why; training goes on with the best iterate.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> @dataclass(frozen=True)
    ... class Cell(nn.Module):
    ...     lin: nn.Linear
    ...     def __call__(self, z, x):
    ...         return nn.tanh(self.lin(z) + x)
    >>> lin = nn.Linear(weight=0.3 * np.eye(4), bias=None)
    >>> deq = nn.DEQ(Cell(lin), rtol=1e-8)
    >>> z, res = deq(np.ones((2, 4)))
    >>> bool(res.success), res.nit.shape
    (True, (2,))
    >>> bool(np.allclose(z, np.tanh(0.3 * z + 1.0)))
    True
    """

    cell: Any
    method: Any = static_field(default="anderson")  # noqa: RUF009 (static config)
    backward: Any = static_field(default="implicit")  # noqa: RUF009 (static config)
    rtol: float = static_field(default=1e-4)
    atol: float = static_field(default=0.0)
    maxiter: int = static_field(default=30)
    options: dict = static_field(default_factory=dict)  # noqa: RUF009 (static config)
    backward_options: dict = static_field(default_factory=dict)  # noqa: RUF009 (static config)

    def __post_init__(self):
        if not callable(self.cell):
            msg = f"`cell` must be callable (a module), got {type(self.cell).__name__}"
            raise TypeError(msg)
        check_tolerances(self.rtol, self.atol, self.maxiter)
        for name in ("options", "backward_options"):
            if not isinstance(getattr(self, name), dict):
                msg = f"`{name}` must be a dict, got {type(getattr(self, name)).__name__}"
                raise TypeError(msg)
        if self.backward_options and not isinstance(self.backward, str):
            msg = "`backward_options` need a named `backward` (not an adjoint object)"
            raise ValueError(msg)
        if self.options and not isinstance(self.method, str):
            msg = "`options` need a named `method` (not a solver object)"
            raise ValueError(msg)

    def adjoint(self):
        """The backward mode as passed to :func:`implicitnet.fixed_point`."""
        if not (isinstance(self.backward, str) and self.backward_options):
            return self.backward
        if self.backward == "implicit":
            kw = {"rtol": self.rtol, "atol": self.atol, **self.backward_options}
            return ImplicitAdjoint(**kw)
        if self.backward == "phantom":
            return PhantomAdjoint(**self.backward_options)
        msg = f"`backward_options` are not accepted by `backward={self.backward!r}`"
        raise ValueError(msg)

    def __call__(self, x, *, z0=None, mask=None, callback=None):
        """Solve for the equilibrium of the cell with input injection `x`.

        Parameters
        ----------
        x : array or Tensor
            Input injection, samples along axis 0.
        z0 : array, optional
            Starting point (a warm start, e.g. the previous equilibrium of the same
            samples). Default: zeros shaped like `x`; give it when the state and the
            injection differ in shape. Not differentiated.
        mask : array, optional
            A dropout mask (see :class:`VariationalDropout`), samples along axis 0,
            passed to the cell as its third argument; the same mask serves every
            iteration and the backward pass.
        callback : callable, optional
            Passed to the forward solve.

        Returns
        -------
        z_star : array or Tensor
            The equilibrium, shaped like `z0` (differentiable when `x` or the cell's
            parameters are traced).
        result : Result
            The forward solve's result: per-sample ``nit``, ``nfev``, ``residual``,
            ``converged``, and ``success``; after a backward pass through ``z_star``,
            ``result.stats["backward"]`` holds the adjoint solve's ``nit``,
            ``nmatvec``, ``residual`` and ``success``.
        """
        xp = namespace(x)
        if x.ndim < 1:
            msg = f"`x` must have a leading batch axis, got shape {tuple(x.shape)}"
            raise ValueError(msg)
        if z0 is None:
            z0 = xp.zeros(x.shape, dtype=x.dtype, device=device(x))
        elif z0.shape[0] != x.shape[0]:
            msg = f"`z0` holds {z0.shape[0]} samples but `x` holds {x.shape[0]}"
            raise ValueError(msg)
        cell = materialize(self.cell)
        args = (cell, x) if mask is None else (cell, x, mask)
        axes = (None, 0) if mask is None else (None, 0, 0)
        res = fixed_point(
            _apply_cell,
            z0,
            args,
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            maxiter=self.maxiter,
            backward=self.adjoint(),
            batch_axis=0,
            arg_batch_axes=axes,
            callback=callback,
            **self.options,
        )
        return res.x, res
