"""Differentiable array functions: the primitives of implicitnet's autodiff.

Each function accepts raw backend arrays (and then calls the backend directly) or
autodiff tensors (and then records its vector-Jacobian product). The names and
signatures are the array API's; ``linalg`` holds ``solve`` and ``vector_norm``.
"""

from types import SimpleNamespace as _SimpleNamespace

from .autodiff import _ops
from .autodiff._ops import abs as abs
from .autodiff._ops import add as add
from .autodiff._ops import astype as astype
from .autodiff._ops import broadcast_to as broadcast_to
from .autodiff._ops import clip as clip
from .autodiff._ops import concat as concat
from .autodiff._ops import cos as cos
from .autodiff._ops import divide as divide
from .autodiff._ops import exp as exp
from .autodiff._ops import expand_dims as expand_dims
from .autodiff._ops import expm1 as expm1
from .autodiff._ops import flip as flip
from .autodiff._ops import getitem as getitem
from .autodiff._ops import log as log
from .autodiff._ops import log1p as log1p
from .autodiff._ops import logaddexp as logaddexp
from .autodiff._ops import matmul as matmul
from .autodiff._ops import matrix_transpose as matrix_transpose
from .autodiff._ops import max as max
from .autodiff._ops import maximum as maximum
from .autodiff._ops import mean as mean
from .autodiff._ops import min as min
from .autodiff._ops import minimum as minimum
from .autodiff._ops import multiply as multiply
from .autodiff._ops import negative as negative
from .autodiff._ops import permute_dims as permute_dims
from .autodiff._ops import pow as pow
from .autodiff._ops import prod as prod
from .autodiff._ops import reshape as reshape
from .autodiff._ops import sin as sin
from .autodiff._ops import sqrt as sqrt
from .autodiff._ops import square as square
from .autodiff._ops import squeeze as squeeze
from .autodiff._ops import stack as stack
from .autodiff._ops import subtract as subtract
from .autodiff._ops import sum as sum
from .autodiff._ops import take as take
from .autodiff._ops import tanh as tanh
from .autodiff._ops import tensordot as tensordot
from .autodiff._ops import unbroadcast as unbroadcast
from .autodiff._ops import vecdot as vecdot
from .autodiff._ops import where as where

#: ``ops.linalg.solve``, ``ops.linalg.vector_norm`` (and the linear-algebra functions
#: of the main namespace), as in the array API's ``linalg`` extension.
linalg = _SimpleNamespace(
    solve=_ops.solve,
    vector_norm=_ops.vector_norm,
    matmul=_ops.matmul,
    matrix_transpose=_ops.matrix_transpose,
    tensordot=_ops.tensordot,
    vecdot=_ops.vecdot,
)
