"""Fixed-point and root solvers: one entry point each, any method.

``fixed_point(f, x0, args)`` solves ``x = f(x, *args)`` and ``root(F, x0, args)`` solves
``F(x, *args) = 0``; `method` is a registered name or any :class:`AbstractSolver`.
They are the same functions as :func:`implicitnet.fixed_point` and
:func:`implicitnet.root` (differentiable through `backward`; ``backward=None`` is the
raw solve). They live one layer up, with the adjoints, and are imported here on first
use, so that this package never imports autodiff.
"""

from typing import Any

from . import _scipy
from ._anderson import Anderson as Anderson
from ._api import solve as solve
from ._base import AbstractIterativeSolver as AbstractIterativeSolver
from ._base import AbstractSolver as AbstractSolver
from ._base import Problem as Problem
from ._base import Residual as Residual
from ._base import Step as Step
from ._broyden import Broyden as Broyden
from ._newton_krylov import NewtonKrylov as NewtonKrylov
from ._picard import Picard as Picard
from ._registry import available_methods as available_methods
from ._registry import register as register
from ._registry import resolve_method as resolve_method
from ._scipy import SCIPY_METHODS as SCIPY_METHODS
from ._scipy import SciPyRoot as SciPyRoot

register("picard", Picard)
register("anderson", Anderson)
register("broyden", Broyden)
register("newton_krylov", NewtonKrylov)
_scipy.register_all(register)


def __getattr__(name: str) -> Any:
    # `fixed_point` and `root` are implicitnet.implicit's (the same objects); a
    # module-level import would make this lower layer import autodiff.
    if name in ("fixed_point", "root"):
        # Deferred to first use: at module level it would close a cycle (implicit -> solvers).
        from .. import implicit

        return getattr(implicit, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*globals(), "fixed_point", "root"])
