"""Matrix-free linear solvers for the adjoint systems of implicit layers.

Every solver needs only products ``v -> A v`` (a callable, a matrix, or an object with
a ``matvec``), works on any array-API namespace, solves batches of independent systems
with array operations (`batch_axis`), and returns a :class:`implicitnet.Result`. Each
exists as a function (``gmres(A, b, ...)``) and as a configurable solver object
(``GMRES(rtol=..., restart=...).solve(A, b)``) for the backward pass of implicit layers;
:func:`get_solver` turns a name into the default-configured object.
"""

from ._anderson import Anderson as Anderson
from ._anderson import anderson as anderson
from ._base import AbstractLinearSolver as AbstractLinearSolver
from ._bicgstab import BiCGSTAB as BiCGSTAB
from ._bicgstab import bicgstab as bicgstab
from ._broyden import Broyden as Broyden
from ._broyden import broyden as broyden
from ._gmres import GMRES as GMRES
from ._gmres import gmres as gmres
from ._gmres import gmres_rows as gmres_rows
from ._neumann import Neumann as Neumann
from ._neumann import neumann as neumann
from ._registry import get_solver as get_solver
from ._registry import register_solver as register_solver
