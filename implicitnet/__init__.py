"""implicitnet: implicit layers on the Python array API.

Deep equilibrium models, fixed-point and root-finding layers, trained by implicit
differentiation, written once against the array API so that one piece of code runs on
NumPy, CuPy and any other array-API library.
"""

from . import backends as backends
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

# --- autodiff (issue: reverse-mode autodiff) ---
# --- solvers (issue: fixed-point and root solvers) ---
# --- linalg (issue: matrix-free linear solvers) ---
# --- implicit differentiation (issue: differentiable solves) ---
# --- nn, optim, data (issue: training) ---
