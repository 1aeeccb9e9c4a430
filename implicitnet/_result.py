"""The result of every solve, nonlinear or linear, and how failure is reported."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConvergenceError", "ConvergenceWarning", "Result", "Status"]


class Status(str, enum.Enum):
    """Why a solve stopped. Compares equal to its value: ``res.status == "maxiter"``.

    Attributes
    ----------
    SUCCESS : "success"
        The residual met the tolerance.
    MAXITER : "maxiter"
        The iteration limit was reached first.
    DIVERGED : "diverged"
        The residual became non-finite or grew far above the best one seen.
    STAGNATED : "stagnated"
        The residual stopped decreasing before reaching the tolerance.
    BREAKDOWN : "breakdown"
        The method divided by a vanishing quantity before converging.
    STOPPED : "stopped"
        The callback asked to stop before every system converged.

    See the diagnostics tutorial for what to change in each case.

    The statuses are ordered by :attr:`severity`, which decides the status of a batch
    (the worst of its systems', :meth:`worst`), for nonlinear and linear solves alike:
    ``success < maxiter < stopped < stagnated < breakdown < diverged``. Running out of
    iterations is the mildest failure (more may do), a stop asked by the callback is
    the user's, stagnation is a limit of precision or memory, a breakdown a failure of
    the method itself (change it), and divergence the worst (the iterates are lost).
    """

    SUCCESS = "success"
    MAXITER = "maxiter"
    DIVERGED = "diverged"
    STAGNATED = "stagnated"
    BREAKDOWN = "breakdown"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value

    @property
    def severity(self) -> int:
        """The rank of this status: 0 for success, higher for a worse failure."""
        return _SEVERITY.index(self)

    @classmethod
    def worst(cls, statuses: Iterable[Status]) -> Status:
        """The status of a batch: success when every system converged, else the worst."""
        return max((cls(s) for s in statuses), key=_SEVERITY.index, default=cls.SUCCESS)


#: The statuses from best to worst (see :attr:`Status.severity`).
_SEVERITY = (
    Status.SUCCESS,
    Status.MAXITER,
    Status.STOPPED,
    Status.STAGNATED,
    Status.BREAKDOWN,
    Status.DIVERGED,
)


_MESSAGES = {
    Status.SUCCESS: "The solve converged to the requested tolerance.",
    Status.MAXITER: (
        "The maximum number of iterations was reached. The map may not be contractive "
        "here, or `maxiter` may be too small; try a stronger method (anderson, broyden, "
        "newton_krylov) or a larger `maxiter`."
    ),
    Status.DIVERGED: (
        "The residual grew without bound or became non-finite; the best iterate seen is "
        "returned. Try damping, a smaller step, or a better starting point `x0`."
    ),
    Status.STAGNATED: (
        "The residual stopped decreasing before reaching the tolerance. The tolerance may "
        "be below what this dtype can resolve, or the method may need more memory."
    ),
    Status.BREAKDOWN: (
        "The method broke down (a division by a vanishing quantity) before converging. "
        "Try another method, e.g. GMRES."
    ),
    Status.STOPPED: (
        "The callback asked to stop before every system converged; the best iterate "
        "seen is returned."
    ),
}


def status_message(status: Status) -> str:
    """The user-facing message for `status`."""
    return _MESSAGES[Status(status)]


class ConvergenceWarning(UserWarning):
    """Warned when a solve the user did not check (e.g. a backward solve) fails."""


class ConvergenceError(RuntimeError):
    """Raised by :meth:`Result.raise_for_status`; carries the result as ``.result``."""

    def __init__(self, result: Result):
        self.result = result
        super().__init__(f"{result.status}: {result.message}")


@dataclass
class Result:
    """The outcome of a solve, with SciPy's names.

    Attributes
    ----------
    x : array
        The solution, or the best iterate (lowest residual) when the solve failed.
        Same shape, dtype and device as the starting point.
    success : bool
        Whether every system converged.
    status : Status
        Why the solve stopped (``"success"``, ``"maxiter"``, ``"diverged"``, ...).
    message : str
        A sentence saying what happened and what to try.
    nit : int or array
        Iterations taken; one per system (an integer array) when batched.
    nfev : int or array
        Evaluations of the function (or of the linear operator: see `nmatvec`); one per
        system when batched.
    residual : float or array
        Final residual norm; one per system when batched.
    relative_residual : float or array
        `residual` divided by the scale of the relative test at `x`, so that with
        ``atol=0`` a system converged exactly when ``relative_residual <= rtol``: for a
        fixed point ``||f(x) - x|| / max(||f(x0) - x0||, min(||f(x)||, 100 s0))`` with
        ``s0 = max(||f(x0)||, ||f(x0) - x0||)``; for a root problem
        ``||F(x)|| / ||F(x0)||``; for a linear solve ``||b - A x|| / ||b||``. One per
        system when batched; NaN when a solver does not report it. See the theory page
        on the stopping test.
    history : array
        Residual norm per iteration, entry 0 the initial one: shape ``(nit + 1,)``, or
        ``(iterations, batch)`` when batched.
    converged : bool or array
        Per-system convergence flags when batched; equal to `success` otherwise.
    stats : dict
        Method-specific extras (restarts, line-search steps, ...).
    """

    x: Any
    success: bool
    status: Status
    message: str
    nit: Any
    nfev: Any
    residual: Any
    history: Any = None
    converged: Any = None
    stats: dict = field(default_factory=dict)
    relative_residual: Any = float("nan")

    def __post_init__(self):
        self.status = Status(self.status)
        if self.converged is None:
            self.converged = self.success

    @property
    def nmatvec(self):
        """Products with the linear operator (linear solvers); same as `nfev`."""
        return self.nfev

    def raise_for_status(self) -> Result:
        """Raise :class:`ConvergenceError` unless the solve succeeded; return self."""
        if not self.success:
            raise ConvergenceError(self)
        return self

    def __repr__(self) -> str:
        def short(v):
            s = repr(v)
            return s if len(s) < 60 else s[:57] + "..."

        lines = [
            f"  success: {self.success}",
            f"   status: {self.status.value}",
            f"  message: {self.message}",
            f"      nit: {short(self.nit)}",
            f"     nfev: {short(self.nfev)}",
            f" residual: {short(self.residual)}",
            f" relative: {short(self.relative_residual)}",
            f"        x: {short(self.x)}",
        ]
        return "Result(\n" + "\n".join(lines) + "\n)"
