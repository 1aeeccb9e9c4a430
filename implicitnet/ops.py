"""Differentiable array functions: the primitives of implicitnet's autodiff.

Each function accepts raw backend arrays (and then calls the backend directly) or
autodiff tensors (and then records its vector-Jacobian product). The names and
signatures are the array API's; ``linalg`` holds ``solve`` and ``vector_norm`` (and the
linear-algebra functions of the main namespace, as in the array API's ``linalg``
extension).

The functions are those that the primitive registry exports
(:func:`implicitnet.autodiff.differentiable_functions`): a primitive of implicitnet
declared with ``primitive(export=True)`` is here under its name, with no other edit.
"""

from types import SimpleNamespace as _SimpleNamespace
from typing import TYPE_CHECKING as _TYPE_CHECKING

from .autodiff import differentiable_functions as _functions

# add, subtract, ..., getitem, unbroadcast: module attributes, as if imported one by one
globals().update(_functions())

#: ``ops.linalg.solve``, ``ops.linalg.vector_norm`` (and the linear-algebra functions
#: of the main namespace), as in the array API's ``linalg`` extension.
linalg = _SimpleNamespace(**_functions("linalg"))

if _TYPE_CHECKING:  # for static checkers, which cannot see the names set above
    from typing import Any

    def __getattr__(name: str) -> Any: ...
