"""Reverse-mode automatic differentiation as a differentiable array-API namespace.

A :class:`Tensor` wraps a backend array; its ``__array_namespace__()`` is a namespace
whose functions record vector-Jacobian products on a tape. Code written against
``xp = array_namespace(x)`` therefore runs unchanged on raw arrays (full speed, no
tape) and under :func:`grad`, :func:`value_and_grad` and :func:`vjp`.
"""

from ._core import defvjp as defvjp
from ._core import differentiable_functions as differentiable_functions
from ._core import nondifferentiable as nondifferentiable
from ._core import primitive as primitive
from ._core import stop_gradient as stop_gradient
from ._namespace import DifferentiableNamespace as DifferentiableNamespace
from ._namespace import differentiable_namespace as differentiable_namespace
from ._ops import unbroadcast as unbroadcast
from ._summary import TapeSummary as TapeSummary
from ._summary import tape_summary as tape_summary
from ._tensor import Tensor as Tensor
from ._transforms import grad as grad
from ._transforms import value_and_grad as value_and_grad
from ._transforms import vjp as vjp
