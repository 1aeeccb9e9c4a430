"""Linear solvers by name: ``get_solver("gmres")`` or any object with a ``solve``."""

from __future__ import annotations

from typing import Any

from ._anderson import Anderson
from ._base import AbstractLinearSolver
from ._bicgstab import BiCGSTAB
from ._broyden import Broyden
from ._gmres import GMRES
from ._neumann import Neumann

__all__ = ["get_solver"]


#: The registered solvers, by lower-case name.
SOLVERS: dict[str, type] = {
    "gmres": GMRES,
    "bicgstab": BiCGSTAB,
    "neumann": Neumann,
    "broyden": Broyden,
    "anderson": Anderson,
}


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
        key = name_or_obj.lower()
        if key not in SOLVERS:
            known = ", ".join(repr(k) for k in SOLVERS)
            msg = f"unknown linear solver `name_or_obj` {name_or_obj!r}; known: {known}"
            raise ValueError(msg)
        return SOLVERS[key]()
    if isinstance(name_or_obj, AbstractLinearSolver) or callable(
        getattr(name_or_obj, "solve", None)
    ):
        return name_or_obj
    msg = (
        "`name_or_obj` must be a solver name or an object with a `solve(A, b, ...)` "
        f"method, got {type(name_or_obj).__name__}"
    )
    raise TypeError(msg)
