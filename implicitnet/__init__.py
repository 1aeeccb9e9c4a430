"""implicitnet: implicit layers on the Python array API.

Deep equilibrium models, fixed-point and root-finding layers, trained by implicit
differentiation, written once against the array API so that one piece of code runs on
NumPy, CuPy and any other array-API library.
"""

from . import autodiff as autodiff
from . import backends as backends
from . import control as control
from . import data as data
from . import distributed as distributed
from . import linalg as linalg
from . import nn as nn
from . import ops as ops
from . import optim as optim
from . import solvers as solvers
from ._adjoint import available_adjoints as available_adjoints
from ._adjoint import register_adjoint as register_adjoint
from ._result import ConvergenceError as ConvergenceError
from ._result import ConvergenceWarning as ConvergenceWarning
from ._result import Result as Result
from ._result import Status as Status
from ._tree import tree_flatten as tree_flatten
from ._tree import tree_leaves as tree_leaves
from ._tree import tree_map as tree_map
from ._tree import tree_unflatten as tree_unflatten
from ._version import __version__ as __version__
from ._xp import namespace as namespace
from .autodiff import Tensor as Tensor
from .autodiff import defvjp as defvjp
from .autodiff import grad as grad
from .autodiff import nondifferentiable as nondifferentiable
from .autodiff import primitive as primitive
from .autodiff import stop_gradient as stop_gradient
from .autodiff import unbroadcast as unbroadcast
from .autodiff import value_and_grad as value_and_grad
from .autodiff import vjp as vjp
from .implicit import AbstractAdjoint as AbstractAdjoint
from .implicit import AbstractLinearAdjoint as AbstractLinearAdjoint
from .implicit import ImplicitAdjoint as ImplicitAdjoint
from .implicit import PhantomAdjoint as PhantomAdjoint
from .implicit import UnrolledAdjoint as UnrolledAdjoint
from .implicit import fixed_point as fixed_point
from .implicit import root as root
from .nn import jacobian_regularization as jacobian_regularization
from .solvers import AbstractIterativeSolver as AbstractIterativeSolver
from .solvers import AbstractSolver as AbstractSolver
from .solvers import Anderson as Anderson
from .solvers import Broyden as Broyden
from .solvers import NewtonKrylov as NewtonKrylov
from .solvers import Picard as Picard
