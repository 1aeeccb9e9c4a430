"""Fixed-point and root solvers: one entry point each, any method.

``fixed_point(f, x0, args)`` solves ``x = f(x, *args)`` and ``root(F, x0, args)`` solves
``F(x, *args) = 0``; `method` is a registered name or any :class:`AbstractSolver`.
These are the raw (non-differentiable) solves; :func:`implicitnet.fixed_point` adds
implicit differentiation on top.
"""

from . import _scipy
from ._anderson import Anderson as Anderson
from ._api import fixed_point as fixed_point
from ._api import root as root
from ._base import AbstractIterativeSolver as AbstractIterativeSolver
from ._base import AbstractSolver as AbstractSolver
from ._base import Problem as Problem
from ._base import Step as Step
from ._broyden import Broyden as Broyden
from ._newton_krylov import NewtonKrylov as NewtonKrylov
from ._picard import Picard as Picard
from ._registry import available_methods as available_methods
from ._registry import register as register
from ._scipy import SCIPY_METHODS as SCIPY_METHODS
from ._scipy import SciPyRoot as SciPyRoot

register("picard", Picard)
register("anderson", Anderson)
register("broyden", Broyden)
register("newton_krylov", NewtonKrylov)
_scipy.register_all(register)
