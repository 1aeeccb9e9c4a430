"""The differentiable array-API namespace: what ``Tensor.__array_namespace__`` returns.

It is the backend's namespace with every function that has a differentiable version
replaced by it. The differentiable versions are those the primitive registry exports
(``primitive(export=True)`` and ``export``, see :mod:`._ops`): the main namespace
serves the exported names that the backend's namespace has, and each extension
(``linalg``, ``fft``) the names qualified by it (``"linalg.solve"``) and the main
ones that the standard repeats there (``matmul`` in ``linalg``). Exporting a function
drops the namespaces made so far, so that the next ``__array_namespace__()`` has it.

Every other name of the backend namespace passes through: tensor arguments are
unwrapped and the result is a plain array. Names with no useful derivative
(comparisons, ``argmax``, ``isfinite``, creation functions, ...) pass through silently;
any other function whose derivative is not implemented raises ``NotImplementedError``
naming it when it meets a traced tensor (instead of silently dropping the gradient).
"""

from __future__ import annotations

from typing import Any

from . import _ops
from ._core import (
    _BUILT_FROM_EXPORTS,
    EXTENSIONS,
    AbstractTensor,
    _unwrap_all,
    differentiable_functions,
)

__all__ = ["DifferentiableNamespace", "differentiable_namespace"]

# Functions whose derivative is zero or undefined: tensors are unwrapped, no error.
_NONDIFFERENTIABLE = frozenset(
    (
        "all any argmax argmin argsort bitwise_and bitwise_invert bitwise_left_shift "
        "bitwise_or bitwise_right_shift bitwise_xor can_cast ceil count_nonzero "
        "empty_like equal finfo floor floor_divide full_like greater greater_equal iinfo "
        "isdtype isfinite isinf isnan less less_equal logical_and logical_not logical_or "
        "logical_xor nonzero not_equal ones_like result_type round searchsorted sign "
        "signbit trunc unique_all unique_counts unique_inverse unique_values zeros_like "
        "__array_namespace_info__ arange asarray empty eye from_dlpack full linspace "
        "meshgrid ones zeros matrix_rank"
    ).split()
)


def _is_traced(x) -> bool:
    if isinstance(x, AbstractTensor):
        return x._level > 0
    if type(x) is tuple or type(x) is list:
        return any(_is_traced(a) for a in x)
    return False


def _passthrough(fun, name: str, differentiable_in_principle: bool):
    if not differentiable_in_principle:

        def wrapper(*args, **kwargs):
            args = [_unwrap_all(a) for a in args]
            if kwargs:
                kwargs = {k: _unwrap_all(v) for k, v in kwargs.items()}
            return fun(*args, **kwargs)

    else:

        def wrapper(*args, **kwargs):
            if _is_traced(args) or _is_traced(list(kwargs.values())):
                msg = (
                    f"`{name}` is not differentiable in implicitnet (yet); use the "
                    f"differentiable functions listed in implicitnet.ops, or wrap a raw "
                    f"implementation with `primitive` and `defvjp`"
                )
                raise NotImplementedError(msg)
            args = [_unwrap_all(a) for a in args]
            if kwargs:
                kwargs = {k: _unwrap_all(v) for k, v in kwargs.items()}
            return fun(*args, **kwargs)

    wrapper.__name__ = name.rsplit(".", 1)[-1]
    wrapper.__qualname__ = name
    wrapper.__doc__ = getattr(fun, "__doc__", None)
    return wrapper


class _PassThroughNamespace:
    """Common part: the backend namespace `backend` (or an extension), differentiable.

    The differentiable functions are set as attributes when the namespace is made;
    any other name is looked up on first use (a function exported since, or the
    backend's, wrapped once) and then kept.
    """

    def __init__(self, backend, extension: str, name: str):
        self.backend_namespace = backend
        self.__name__ = name
        self._extension = extension
        self._prefix = extension + "." if extension else ""
        for attr, fn in self._differentiable().items():
            setattr(self, attr, fn)
        for ext in () if extension else EXTENSIONS:
            sub = getattr(backend, ext, None)
            if sub is not None:
                setattr(self, ext, _Extension(sub, ext, f"{name}.{ext}"))

    def _differentiable(self) -> dict:
        """The differentiable functions this namespace serves, by name."""
        candidates = differentiable_functions(self._extension)
        backend = self.backend_namespace
        return {attr: fn for attr, fn in candidates.items() if hasattr(backend, attr)}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name != "__array_namespace_info__":
            raise AttributeError(name)
        attr = self._differentiable().get(name)
        if attr is None:
            attr = getattr(self.backend_namespace, name)
            if callable(attr) and not isinstance(attr, type) and not _is_dtype(attr):
                full = self._prefix + name
                attr = _passthrough(attr, full, name not in _NONDIFFERENTIABLE)
        setattr(self, name, attr)
        return attr

    def __repr__(self) -> str:
        return f"<differentiable namespace {self.__name__}>"


class _Extension(_PassThroughNamespace):
    """An extension of a differentiable namespace: ``xp.linalg``, ``xp.fft``."""


def _is_dtype(obj) -> bool:
    return type(obj).__name__ in ("DType", "dtype")


class DifferentiableNamespace(_PassThroughNamespace):
    """The differentiable array-API namespace of one backend.

    Differentiable functions record on the autodiff tape when they receive traced
    tensors and call the backend directly on raw arrays; every other name passes
    through to the backend (``backend_namespace``). The ``linalg`` and ``fft``
    extensions, where the backend has them, are differentiable namespaces too.
    """

    def __init__(self, backend):
        super().__init__(backend, "", f"implicitnet.autodiff({backend.__name__})")

    def asarray(self, obj, /, *, dtype=None, device=None, copy=None):
        """``asarray`` that keeps a tensor a tensor (casting it if `dtype` differs)."""
        if isinstance(obj, AbstractTensor):
            if dtype is not None and obj.dtype != dtype:
                return _ops.astype(obj, dtype)
            return obj
        return self.backend_namespace.asarray(
            _unwrap_all(obj), dtype=dtype, device=device, copy=copy
        )


# by id of the backend namespace; emptied when a function is exported
_CACHE: dict[int, DifferentiableNamespace] = _BUILT_FROM_EXPORTS


def differentiable_namespace(backend) -> DifferentiableNamespace:
    """The (cached) differentiable namespace of the backend namespace `backend`."""
    ns = _CACHE.get(id(backend))
    if ns is None or ns.backend_namespace is not backend:
        ns = DifferentiableNamespace(backend)
        _CACHE[id(backend)] = ns
    return ns
