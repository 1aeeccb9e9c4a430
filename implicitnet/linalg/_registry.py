"""Linear solvers by name: ``get_solver("gmres")`` or any object with a ``solve``."""

from __future__ import annotations

from typing import Any

from .._registry import Registry
from ._anderson import Anderson
from ._base import AbstractLinearSolver
from ._bicgstab import BiCGSTAB
from ._broyden import Broyden
from ._gmres import GMRES
from ._neumann import Neumann

__all__ = ["get_solver", "register_solver"]


#: The registered linear solvers, by (case-insensitive) name.
SOLVERS = Registry("name_or_obj", kind="linear solver", case_sensitive=False)


def register_solver(name: str, solver: Any, *, overwrite: bool = False) -> None:
    """Register `solver` (a class or factory called with no arguments) under `name`.

    Then ``get_solver(name)`` and ``ImplicitAdjoint(linear_solver=name)`` select it.
    Names are case-insensitive; registering a taken name raises ``ValueError`` unless
    `overwrite` is true.

    Parameters
    ----------
    name : str
        The name.
    solver : callable
        A linear solver class (an :class:`AbstractLinearSolver` with defaults for every
        field) or a factory returning a configured solver object.
    overwrite : bool, default: False
        Allow replacing an existing registration.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> inet.linalg.register_solver("gmres5", lambda: inet.linalg.GMRES(restart=5),
    ...                             overwrite=True)
    >>> inet.linalg.get_solver("GMRES5").restart
    5
    """
    SOLVERS.register(name, solver, overwrite=overwrite)


register_solver("gmres", GMRES)
register_solver("bicgstab", BiCGSTAB)
register_solver("neumann", Neumann)
register_solver("broyden", Broyden)
register_solver("anderson", Anderson)


def get_solver(name_or_obj: Any, /) -> Any:
    """Return a linear solver object from a registered name or a solver object.

    Parameters
    ----------
    name_or_obj : str or AbstractLinearSolver
        ``"gmres"``, ``"bicgstab"``, ``"neumann"``, ``"broyden"`` or ``"anderson"``
        (the default-configured solver), or an object with a
        ``solve(A, b, /, *, x0=None, batch_axis=None, xp=None)`` method, returned as it
        is. Names are case-insensitive.

    Returns
    -------
    AbstractLinearSolver or object with ``solve``
        The solver.

    Raises
    ------
    ValueError
        If the name is not registered (the message lists the known names).
    TypeError
        If the argument is neither a string nor has a callable ``solve``.

    Examples
    --------
    >>> import implicitnet as inet
    >>> inet.linalg.get_solver("gmres")
    GMRES(rtol=1e-06, atol=0.0, restart=20, maxiter=None, M=None, callback=None)
    """
    if isinstance(name_or_obj, str):
        return SOLVERS.lookup(name_or_obj)()
    if isinstance(name_or_obj, AbstractLinearSolver) or callable(
        getattr(name_or_obj, "solve", None)
    ):
        return name_or_obj
    msg = (
        "`name_or_obj` must be a solver name or an object with a `solve(A, b, ...)` "
        f"method, got {type(name_or_obj).__name__}"
    )
    raise TypeError(msg)
