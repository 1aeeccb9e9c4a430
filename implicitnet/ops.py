"""Differentiable array functions: the primitives of implicitnet's autodiff.

Each function accepts raw backend arrays (and then calls the backend directly) or
autodiff tensors (and then records its vector-Jacobian product). The names and
signatures are the array API's; ``linalg`` holds ``solve`` and ``vector_norm`` (and the
linear-algebra functions of the main namespace, as in the array API's ``linalg``
extension).

The functions are those of the primitive registry
(:func:`implicitnet.autodiff.differentiable_functions`): a primitive declared with
``primitive(export=True)`` is here under its name, also when it is declared after this
module was imported.
"""

import types as _types

from .autodiff import differentiable_functions as _functions


def _lookup(extension: str, name: str):
    fn = _functions(extension).get(name)
    if fn is None:
        where = "implicitnet.ops" + (f".{extension}" if extension else "")
        msg = f"module {where!r} has no attribute {name!r}"
        raise AttributeError(msg)
    return fn


def __getattr__(name: str):
    return _lookup("", name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_functions()})


def _extension(name: str) -> _types.ModuleType:
    """The differentiable functions of the array API's extension `name`, as a module."""
    module = _types.ModuleType(f"{__name__}.{name}", f"``{name}`` of :mod:`implicitnet.ops`.")
    module.__dict__.update(_functions(name))
    module.__getattr__ = lambda attr: _lookup(name, attr)
    module.__dir__ = lambda: sorted({*_functions(name), *vars(module)})
    return module


# add, subtract, ..., getitem, unbroadcast: module attributes, as fast as an import
globals().update(_functions())

#: ``ops.linalg.solve``, ``ops.linalg.vector_norm`` (and the linear-algebra functions
#: of the main namespace), as in the array API's ``linalg`` extension.
linalg = _extension("linalg")
