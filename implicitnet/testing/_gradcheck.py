"""``check_grads``: reverse-mode gradients against central finite differences."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from .. import backends
from .._tree import tree_flatten, tree_map, tree_unflatten
from .._xp import device as _device
from .._xp import is_array, is_tensor, namespace
from ..autodiff import Tensor, vjp

__all__ = ["GradCheckResult", "check_grads"]


class GradCheckResult(NamedTuple):
    """Outcome of :func:`check_grads`.

    Attributes
    ----------
    max_rel_error : float
        The worst relative error ``|ad - fd| / max(|ad|, |fd|)`` over all checks.
    where : str
        The check where it occurred (argument, leaf and direction or element).
    checks : list of tuple
        ``(where, reverse_mode, finite_difference)`` for every check made.
    """

    max_rel_error: float
    where: str
    checks: list


def _to64(x):
    xp = namespace(x)
    return x if x.dtype == xp.float64 else xp.astype(x, xp.float64)


def _inner(a_leaves, b_leaves) -> float:
    total = 0.0
    for a, b in zip(a_leaves, b_leaves):
        if a is None or b is None:
            continue
        xp = namespace(a)
        total += float(xp.sum(a * b))
    return total


def _constant(a: Any) -> Any:
    """A raw array as a constant (untraced) Tensor; anything else as it is."""
    return Tensor(a) if is_array(a) and not is_tensor(a) else a


def check_grads(
    fun: Callable,
    args: Any,
    *,
    argnums: int | Sequence[int] | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float | None = None,
    elementwise: int = 12,
    seed: int = 0,
) -> GradCheckResult:
    """Check the reverse-mode derivative of `fun` against central finite differences.

    Every floating input is converted to float64. With a random cotangent ``u`` of the
    output (any array or tree of arrays) and, for each input leaf, a random direction
    ``v``, the dot-product test compares ``<vjp(u), v>`` with the central difference
    ``(<u, f(x + eps v)> - <u, f(x - eps v)>) / (2 eps)``. Leaves with at most
    `elementwise` entries are also checked entry by entry, so a failure names the entry.

    Parameters
    ----------
    fun : callable
        ``fun(*args)`` returning an array or a tree of arrays.
    args : tuple
        The arguments (arrays or trees of arrays); a single array is taken as ``(args,)``.
    argnums : int or sequence of int, optional
        Which arguments to check. Default: all.
    eps : float, default: 1e-6
        Finite-difference step.
    rtol, atol : float
        A check passes when ``|ad - fd| <= atol + rtol * max(|ad|, |fd|)``. Default
        `atol`: ``1e-8 * (1 + |<u, f(x)>|)``, the round-off level of the differences.
    elementwise : int, default: 12
        Largest leaf size checked entry by entry.
    seed : int, default: 0
        Seed of the random cotangent and directions.

    Returns
    -------
    GradCheckResult
        The worst relative error, where it is, and every check.

    Raises
    ------
    AssertionError
        If a check fails; the message gives the worst relative error and where.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet.testing import check_grads
    >>> res = check_grads(lambda x: x * x, (np.array([1.0, 2.0]),))
    >>> res.max_rel_error < 1e-6
    True
    """
    if not isinstance(args, tuple):
        args = (args,)
    nargs = len(args)
    if argnums is None:
        nums = tuple(range(nargs))
    elif isinstance(argnums, int):
        nums = (argnums % nargs,)
    else:
        nums = tuple(a % nargs for a in argnums)

    def convert(tree):
        leaves, td = tree_flatten(tree)
        return tree_unflatten(td, [_to64(x) if _is_float(x) else x for x in leaves])

    full = [convert(a) if i in nums else a for i, a in enumerate(args)]

    def f(*diff, constants=full):
        call = list(constants)
        for i, d in zip(nums, diff):
            call[i] = d
        return fun(*call)

    # in the traced evaluation, the other arguments are constant tensors (as in grad)
    wrapped = [tree_map(_constant, a) for a in full]
    primals = [full[i] for i in nums]
    out, vjp_fn = vjp(lambda *diff: f(*diff, constants=wrapped), *primals)
    out_leaves, out_td = tree_flatten(out)
    counter = [seed]

    def randn(like):
        counter[0] += 1
        be = backends.backend_of(like)
        return be.random_normal(tuple(like.shape), counter[0], dtype="float64")

    u_leaves = [randn(o) if _is_float(o) else None for o in out_leaves]
    u_tree = tree_unflatten(
        out_td, [u if u is not None else o for u, o in zip(u_leaves, out_leaves)]
    )
    cts = vjp_fn(u_tree)
    f0 = abs(_inner(u_leaves, out_leaves))
    atol = 1e-8 * (1.0 + f0) if atol is None else atol

    def directional(k, leaves, td, j, v):
        def at(step):
            moved = list(leaves)
            moved[j] = leaves[j] + step * v
            args_ = list(primals)
            args_[k] = tree_unflatten(td, moved)
            o = tree_flatten(f(*args_))[0]
            return _inner(u_leaves, o)

        return (at(eps) - at(-eps)) / (2.0 * eps)

    checks = []
    worst = (-math.inf, 0.0, "")
    for k, (p, ct) in enumerate(zip(primals, cts)):
        leaves, td = tree_flatten(p)
        ct_leaves = tree_flatten(ct)[0]
        for j, (x, g) in enumerate(zip(leaves, ct_leaves)):
            xp = namespace(x)
            label = f"argument {nums[k]}" + (f", leaf {j}" if len(leaves) > 1 else "")
            g = g._implicitnet_data if is_tensor(g) else g
            v = randn(x)
            probes = [(f"{label}, random direction", v)]
            n = math.prod(x.shape)
            if n <= elementwise:
                flat_eye = xp.eye(n, dtype=xp.float64, device=_device(x))
                for e in range(n):
                    idx = _unravel(e, tuple(x.shape))
                    probes.append((f"{label}, element {idx}", xp.reshape(flat_eye[e, :], x.shape)))
            for where, direction in probes:
                ad = float(xp.sum(g * direction))
                fd = directional(k, leaves, td, j, direction)
                scale = max(abs(ad), abs(fd))
                err = abs(ad - fd)
                rel = err / scale if scale > 0 else 0.0
                excess = err - (atol + rtol * scale)
                checks.append((where, ad, fd))
                if excess > worst[0] or not math.isfinite(err):
                    worst = (excess if math.isfinite(err) else math.inf, rel, where, ad, fd)
    if not checks:
        return GradCheckResult(0.0, "", checks)
    max_rel = max(
        (abs(a - d) / max(abs(a), abs(d)) if max(abs(a), abs(d)) > 0 else 0.0) for _, a, d in checks
    )
    if worst[0] > 0:
        _, rel, where, ad, fd = worst
        msg = (
            f"gradient check failed at {where}: reverse mode {ad!r}, finite differences "
            f"{fd!r} (relative error {rel:.3e}, rtol={rtol}, atol={atol:.2e}); "
            f"worst relative error over all {len(checks)} checks: {max_rel:.3e}"
        )
        raise AssertionError(msg)
    where = max(
        checks,
        key=lambda c: abs(c[1] - c[2]) / max(abs(c[1]), abs(c[2]), 1e-300),
    )[0]
    return GradCheckResult(max_rel, where, checks)


def _is_float(x) -> bool:
    if not is_array(x):
        return False
    return namespace(x).isdtype(x.dtype, "real floating")


def _unravel(i: int, shape: tuple) -> tuple:
    idx = []
    for s in reversed(shape):
        idx.append(i % s)
        i //= s
    return tuple(reversed(idx))
