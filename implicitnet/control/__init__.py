"""Control as an implicit layer: differentiable model-predictive control and dynamics.

:func:`mpc` solves a finite-horizon optimal-control problem as the root of the
gradient of its shooting objective and differentiates the plan implicitly with respect
to the initial states, the dynamics parameters and the cost weights.
:class:`Pendulum` and :class:`CartPole` are Gymnasium's classic-control models with
learnable physical parameters.
"""

from ._dynamics import CartPole as CartPole
from ._dynamics import Pendulum as Pendulum
from ._mpc import AbstractCost as AbstractCost
from ._mpc import MPCResult as MPCResult
from ._mpc import QuadraticCost as QuadraticCost
from ._mpc import hessian_vector_product as hessian_vector_product
from ._mpc import mpc as mpc
from ._mpc import shift_plan as shift_plan

__all__ = [
    "AbstractCost",
    "CartPole",
    "MPCResult",
    "Pendulum",
    "QuadraticCost",
    "hessian_vector_product",
    "mpc",
    "shift_plan",
]
