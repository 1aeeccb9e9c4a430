"""The method registry: names usable as `method` in :func:`fixed_point` and :func:`root`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .._registry import Registry
from ._base import AbstractSolver

__all__ = ["available_methods", "register", "resolve_method"]

#: The methods by name: ``method="anderson"`` etc.
METHODS = Registry("method", kind="method", base=AbstractSolver)

# Tolerance names of SciPy (and other libraries) that implicitnet spells `rtol` / `atol`.
_FOREIGN_TOLERANCES = frozenset(
    {"tol", "xtol", "ftol", "f_tol", "f_rtol", "fatol", "xatol", "x_tol", "x_rtol", "gtol"}
)


def register(name: str, solver: Any, *, overwrite: bool = False) -> None:
    """Register `solver` under `name`, so that ``method=name`` selects it.

    Parameters
    ----------
    name : str
        The method name.
    solver : AbstractSolver subclass, instance, or callable
        A solver class (called with the keyword options of the solve), a configured
        instance (options are applied with :func:`dataclasses.replace`), or a factory
        ``(**options) -> AbstractSolver``.
    overwrite : bool, default: False
        Allow replacing an existing registration.

    Raises
    ------
    ValueError
        If `name` is already registered and `overwrite` is false.
    TypeError
        If `name` is not a string or `solver` is none of the accepted kinds.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> inet.solvers.register("slow_picard", inet.Picard(damping=0.5), overwrite=True)
    >>> res = inet.solvers.fixed_point(np.cos, np.array([1.0]), method="slow_picard", maxiter=500)
    >>> bool(res.success)
    True
    """
    METHODS.register(name, solver, overwrite=overwrite)


def available_methods() -> list[str]:
    """The registered method names, sorted."""
    return METHODS.names()


def resolve_method(method: Any, options: dict[str, Any]) -> AbstractSolver:
    """The solver object for `method` (a name or a solver) configured with `options`.

    Parameters
    ----------
    method : str or AbstractSolver
        A registered name (see :func:`available_methods`) or a solver object.
    options : dict
        Keyword settings of the method (empty for a solver object).

    Returns
    -------
    AbstractSolver
        The configured solver.

    Raises
    ------
    ValueError
        For an unknown name or a setting out of range.
    TypeError
        For a `method` of another type, an unknown option, or `options` given with a
        solver object.
    """
    if isinstance(method, AbstractSolver):
        if options:
            msg = (
                f"options {sorted(options)} were given together with a solver object; "
                "configure the object instead (e.g. Anderson(m=5)) or pass a method name"
            )
            raise TypeError(msg)
        return method
    if not isinstance(method, str):
        msg = (
            "`method` must be a method name or an AbstractSolver instance, "
            f"got {type(method).__name__}"
        )
        raise TypeError(msg)
    entry = METHODS.lookup(method)
    try:
        if isinstance(entry, AbstractSolver):
            solver = dataclasses.replace(entry, **options) if options else entry
        else:
            solver = _call_factory(entry, options)
    except TypeError as exc:
        msg = f"invalid options for method {method!r}: {exc}"
        foreign = sorted(_FOREIGN_TOLERANCES.intersection(options))
        if foreign:
            names = ", ".join(f"`{k}`" for k in foreign)
            msg = (
                f"{names}: implicitnet's tolerances are `rtol` (relative, SciPy's "
                "`f_rtol`) and `atol` (absolute, SciPy's `f_tol`/`fatol`), arguments of "
                f"`fixed_point`/`root` themselves (see the stopping test in their Notes); {msg}"
            )
        raise TypeError(msg) from exc
    if not isinstance(solver, AbstractSolver):
        msg = f"the factory registered as {method!r} returned {type(solver).__name__}"
        raise TypeError(msg)
    return solver


def _call_factory(factory: Callable, options: dict[str, Any]) -> Any:
    if isinstance(factory, type) and dataclasses.is_dataclass(factory):
        fields = {f.name for f in dataclasses.fields(factory) if f.init}
        unknown = sorted(set(options) - fields)
        if unknown:
            msg = f"unknown option(s) {unknown}; valid options: {sorted(fields)}"
            raise TypeError(msg)
    return factory(**options)
