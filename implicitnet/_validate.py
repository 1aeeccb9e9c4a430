"""Argument checks shared by every public entry point.

One rule, one message: a check raises ``TypeError`` when the argument has the wrong
kind (a string where a number belongs, a float where an integer belongs; ``bool`` is
never taken for a number) and ``ValueError`` when it has the right kind but lies
outside its range. Every message names the argument in backticks, as the rest of the
library does. The checks return the value as a plain Python ``float`` or ``int``, so a
caller may keep what it was given (a NumPy scalar, say) or the converted value.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ._tree import tree_leaves
from ._xp import is_array, to_host

__all__ = [
    "NonFiniteError",
    "check_arg_batch_axes",
    "check_batch_axis",
    "check_callable",
    "check_divides",
    "check_finite",
    "check_int",
    "check_nonnegative",
    "check_positive",
    "check_real",
    "check_tolerances",
    "is_python_numbers",
]


class NonFiniteError(ValueError):
    """An input array holds NaN or infinity where finite values are required.

    A subclass of ``ValueError``, so ``except ValueError`` keeps catching it.
    """


# Python's own numbers first: the check against the abstract base classes (for NumPy
# scalars and the like) costs several times more.


def _is_real(value: Any) -> bool:
    kind = type(value)
    if kind is float or kind is int:
        return True
    return isinstance(value, numbers.Real) and kind is not bool


def _is_int(value: Any) -> bool:
    kind = type(value)
    if kind is int:
        return True
    return isinstance(value, numbers.Integral) and kind is not bool


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    """``[low, high)`` and the like, with an infinite end for a missing bound."""
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    lo = "-inf" if low is None else repr(low)
    hi = "inf" if high is None else repr(high)
    return f"{left}{lo}, {hi}{right}"


def check_real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """`value` as a float, if it is a real number in the interval from `low` to `high`.

    A missing bound is infinite (and infinity itself passes it); NaN never passes.
    Raises ``TypeError`` for a non-number and ``ValueError`` ("`name` must lie in
    [low, high), got value") outside the interval.
    """
    number = _real(value, name)
    above = low is None or (number > low if low_open else number >= low)
    below = high is None or (number < high if high_open else number <= high)
    if not (above and below) or math.isnan(number):
        msg = f"`{name}` must lie in {_interval(low, high, low_open, high_open)}, got {value!r}"
        raise ValueError(msg)
    return number


def _real(value: Any, name: str) -> float:
    """`value` as a float; ``TypeError`` unless it is a real number (not a bool)."""
    if not _is_real(value):
        msg = f"`{name}` must be a real number, got {value!r}"
        raise TypeError(msg)
    return float(value)


def _check_finite_sign(value: Any, name: str, *, strict: bool) -> float:
    number = _real(value, name)
    if not (math.isfinite(number) and (number > 0 if strict else number >= 0)):
        sign = "positive" if strict else "non-negative"
        msg = f"`{name}` must be finite and {sign}, got {value!r}"
        raise ValueError(msg)
    return number


def check_positive(value: Any, name: str) -> float:
    """`value` as a float, if it is a finite real number above zero."""
    return _check_finite_sign(value, name, strict=True)


def check_nonnegative(value: Any, name: str) -> float:
    """`value` as a float, if it is a finite real number, zero or above (a tolerance)."""
    return _check_finite_sign(value, name, strict=False)


def check_int(
    value: Any, name: str, *, minimum: int | None = None, optional: bool = False
) -> int | None:
    """`value` as an int, if it is an integer of at least `minimum`.

    With `optional`, None is accepted (and returned). Raises ``TypeError`` ("`name` must
    be an integer") for anything else, ``ValueError`` ("`name` must be at least
    minimum") below the minimum.
    """
    if value is None and optional:
        return None
    if not _is_int(value):
        msg = f"`{name}` must be an integer, got {value!r}"
        raise TypeError(msg)
    if minimum is not None and value < minimum:
        msg = f"`{name}` must be at least {minimum}, got {value}"
        raise ValueError(msg)
    return int(value)


def check_divides(divisor: int, name: str, total: int, total_name: str) -> None:
    """Raise ``ValueError`` unless the (checked) integer `divisor` divides `total`."""
    if total % divisor:
        msg = f"`{name}` ({divisor}) must divide `{total_name}` ({total})"
        raise ValueError(msg)


def check_tolerances(rtol: Any, atol: Any, maxiter: Any, *, maxiter_optional: bool = False) -> None:
    """The stopping test's arguments: `rtol` and `atol` finite and non-negative, and
    `maxiter` an integer of at least 1 (or None, with `maxiter_optional`)."""
    check_nonnegative(rtol, "rtol")
    check_nonnegative(atol, "atol")
    check_int(maxiter, "maxiter", minimum=1, optional=maxiter_optional)


def check_callable(value: Any, name: str, *, optional: bool = False) -> None:
    """Raise ``TypeError`` unless `value` is callable (or None, with `optional`)."""
    if callable(value) or (optional and value is None):
        return
    kind = "callable or None" if optional else "callable"
    msg = f"`{name}` must be {kind}, got {type(value).__name__}"
    raise TypeError(msg)


def check_batch_axis(batch_axis: Any, ndim: int, name: str) -> int | None:
    """`batch_axis` as a non-negative axis of an array `name` with `ndim` dimensions.

    None (no batch) is returned as it is.
    """
    if batch_axis is None:
        return None
    if not _is_int(batch_axis):
        msg = f"`batch_axis` must be an integer or None, got {batch_axis!r}"
        raise TypeError(msg)
    if not -ndim <= batch_axis < ndim:
        msg = f"`batch_axis` {batch_axis} is out of range for `{name}` with {ndim} dimensions"
        raise ValueError(msg)
    return int(batch_axis) % ndim


def check_finite(x: Any, name: str, *, xp: Any) -> None:
    """Raise :class:`NonFiniteError` if the array `x` holds NaN or infinity."""
    if not to_host(xp.all(xp.isfinite(x))):
        msg = f"`{name}` must be finite (it contains NaN or infinity)"
        raise NonFiniteError(msg)


def is_python_numbers(x: Any) -> bool:
    """Whether `x` is a real Python number or a non-empty nested list/tuple of them."""
    if isinstance(x, list | tuple):
        return bool(x) and all(is_python_numbers(v) for v in x)
    return isinstance(x, int | float) and not isinstance(x, bool)


def _per_argument(arg_batch_axes: Any, count: int) -> tuple:
    """One entry of `arg_batch_axes` per element of `args` (`count` of them)."""
    if arg_batch_axes is None or isinstance(arg_batch_axes, numbers.Integral):
        return (arg_batch_axes,) * count
    if not isinstance(arg_batch_axes, tuple | list):
        msg = f"`arg_batch_axes` must be an int, None or a sequence, got {arg_batch_axes!r}"
        raise TypeError(msg)
    if len(arg_batch_axes) != count:
        msg = (
            f"`arg_batch_axes` has {len(arg_batch_axes)} entries but `args` has {count}; "
            "give one axis (or None) per argument"
        )
        raise ValueError(msg)
    return tuple(arg_batch_axes)


def _argument_axis(k: int, arg: Any, ax: Any, batch: int) -> int:
    """The batch axis `ax` (not None) of ``args[k]``, checked against its array leaves."""
    if not _is_int(ax):
        msg = f"`arg_batch_axes[{k}]` must be an int or None, got {ax!r}"
        raise TypeError(msg)
    leaves = tree_leaves(arg)
    if not (leaves and all(map(is_array, leaves))):
        msg = f"`args[{k}]` has a batch axis in `arg_batch_axes` but holds non-arrays"
        raise TypeError(msg)
    for leaf in leaves:
        _check_leaf_axis(k, leaf, ax, batch)
    # A negative axis names one axis only when every leaf has the same rank.
    normalised = {ax % len(leaf.shape) for leaf in leaves}
    return ax if len(normalised) > 1 else normalised.pop()


def _check_leaf_axis(k: int, leaf: Any, ax: int, batch: int) -> None:
    nd = len(leaf.shape)
    if not -nd <= ax < nd:
        msg = f"`arg_batch_axes[{k}]` = {ax} is out of range for an argument with {nd} dimensions"
        raise ValueError(msg)
    size = leaf.shape[ax]
    if size != batch:
        msg = f"`args[{k}]` has size {size} along its batch axis {ax}, "
        msg += f"but `x0` holds {batch} systems"
        raise ValueError(msg)


def check_arg_batch_axes(arg_batch_axes: Any, args: tuple, batch_axis: Any, x0: Any) -> tuple:
    """`arg_batch_axes` as one normalised axis (or None) per element of `args`.

    Every array leaf of an argument with a batch axis must have `x0`'s number of
    systems along it; an axis is made non-negative where that names one axis for every
    leaf. Needs `batch_axis` (the batch axis of `x0`, already normalised).
    """
    if batch_axis is None:
        msg = "`arg_batch_axes` needs `batch_axis` (which axis of `x0` is the batch)"
        raise ValueError(msg)
    axes = _per_argument(arg_batch_axes, len(args))
    batch = x0.shape[batch_axis]
    return tuple(
        None if ax is None else _argument_axis(k, a, ax, batch)
        for k, (a, ax) in enumerate(zip(args, axes))
    )
