"""What a trace keeps for its backward pass: :func:`tape_summary`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import array_api_compat

from .. import backends
from ._core import _SCALAR_TYPES, _raw, _raw_namespace, _Released
from ._tensor import Tensor
from ._transforms import _Plan

__all__ = ["TapeSummary", "tape_summary"]


@dataclass(frozen=True)
class TapeSummary:
    """What a trace keeps between its forward pass and its backward pass.

    Attributes
    ----------
    operations : int
        Recorded operations that the backward pass runs.
    arrays : int
        Distinct buffers kept by those operations (their VJP rules read them). Views of
        one buffer, such as ``W`` and ``W.T`` on NumPy, count once.
    nbytes : int
        Bytes of those buffers.
    by_primitive : dict
        Per primitive name, ``(operations, nbytes)``: how many operations of it the
        trace holds, and the bytes of the buffers first kept by one of them.
    """

    operations: int
    arrays: int
    nbytes: int
    by_primitive: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"{self.operations} operations keep {self.arrays} arrays, {self.nbytes / 1e6:.3f} MB",
        ]
        for name, (n, b) in sorted(self.by_primitive.items(), key=lambda kv: -kv[1][1]):
            lines.append(f"  {name:24s} {n:6d} ops {b / 1e6:10.3f} MB")
        return "\n".join(lines)


_STORAGE: dict[type, Any] = {}


def _storage_function(raw):
    """The backend's ``storage(x) -> (key, nbytes)``, or a fallback (cached per type)."""
    t = type(raw)
    fn = _STORAGE.get(t)
    if fn is None:
        try:
            fn = getattr(backends.backend_of(raw), "storage", None)
        except TypeError:  # an array library with no backend module
            fn = None
        if fn is None:
            fn = _nominal_storage
        _STORAGE[t] = fn
    return fn


def _nominal_storage(raw) -> tuple[int, int]:
    """``(id, size * itemsize)``: an array with no known buffer counts as its own."""
    xp = _raw_namespace((raw,))
    dtype = raw.dtype
    if xp.isdtype(dtype, "bool"):
        bits = 8
    elif xp.isdtype(dtype, "complex floating"):
        bits = 2 * xp.finfo(dtype).bits
    elif xp.isdtype(dtype, "real floating"):
        bits = xp.finfo(dtype).bits
    else:
        bits = xp.iinfo(dtype).bits
    size = 1
    for s in raw.shape:
        size *= s
    return id(raw), size * bits // 8


def _kept_arrays(step):
    """The backend arrays one compiled step keeps: answer, inputs, array arguments."""
    _rec, ans, saved, kwargs, _targets = step
    for v in (ans, *saved, *kwargs.values()):
        items = v if type(v) is tuple or type(v) is list else (v,)
        for item in items:
            if item is None or type(item) in _SCALAR_TYPES or type(item) is _Released:
                continue
            raw = _raw(item)
            if array_api_compat.is_array_api_obj(raw):
                yield raw


def tape_summary(trace: Any) -> TapeSummary:
    """Count what a trace keeps for its backward pass: operations, arrays and bytes.

    Parameters
    ----------
    trace : callable or Tensor
        A ``vjp_fn`` returned by :func:`vjp`, or a traced :class:`Tensor` (inside a
        transform: what its backward pass would keep now).

    Returns
    -------
    TapeSummary
        The number of recorded operations, the distinct buffers their VJP rules keep
        and the bytes of those buffers.

    Raises
    ------
    TypeError
        If `trace` is neither a ``vjp_fn`` nor a traced tensor.

    Notes
    -----
    Each primitive declares what its VJP rule reads (:func:`defvjp`), and the tape
    keeps only that: ``tanh`` keeps its output, ``matmul`` the other operand of each
    argument that needs a gradient, ``add`` nothing. This function counts those values;
    the inputs of `vjp` themselves are counted only where a rule keeps them. Memory that
    the forward code still holds in its own variables is not part of the trace.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> W = np.full((4, 4), 0.1, dtype=np.float32)
    >>> def unrolled(z):
    ...     for _ in range(3):
    ...         z = inet.ops.tanh(z @ W.T + 1.0)
    ...     return z
    >>> _, vjp_fn = inet.vjp(unrolled, np.zeros((2, 4), dtype=np.float32))
    >>> s = inet.autodiff.tape_summary(vjp_fn)
    >>> s.operations, s.arrays, s.nbytes  # W once, and the output of each tanh
    (9, 4, 160)
    """
    plan = getattr(trace, "_implicitnet_plan", None)
    if plan is None:
        if type(trace) is Tensor and trace._level > 0:
            plan = _Plan([trace._node], trace._level, [trace._implicitnet_data])
        else:
            msg = (
                "`trace` must be a `vjp_fn` returned by `implicitnet.vjp` or a traced "
                f"Tensor, got {type(trace).__name__}"
            )
            raise TypeError(msg)
    seen: set = set()
    nbytes = 0
    by_primitive: dict[str, list[int]] = {}
    steps = [s for s in plan.steps if s is not None]
    for step in steps:
        entry = by_primitive.setdefault(step[0].name, [0, 0])
        entry[0] += 1
        for raw in _kept_arrays(step):
            key, size = _storage_function(raw)(raw)
            if key in seen:
                continue
            seen.add(key)
            nbytes += size
            entry[1] += size
    return TapeSummary(
        operations=len(steps),
        arrays=len(seen),
        nbytes=nbytes,
        by_primitive={k: (v[0], v[1]) for k, v in by_primitive.items()},
    )
