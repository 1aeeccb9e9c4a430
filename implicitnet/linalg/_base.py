"""What every matrix-free linear solver shares: the abstract class, input checks, the
operator wrapper, the batch layout and the construction of the `Result`.

Internally every solver works on a 2-D layout ``(B, n)``: ``B`` independent systems of
``n`` unknowns each (``B == 1`` without `batch_axis`, the whole of `b` flattened into
one system). :class:`_Problem` converts between the user's layout and this one, and
wraps the operator ``A`` (and the preconditioner ``M``) so that they act on it.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from .. import backends
from .._batch import BatchLayout
from .._result import Result, Status, status_message
from .._validate import (
    check_batch_axis,
    check_callable,
    check_finite,
    check_tolerances,
    is_python_numbers,
)
from .._xp import as_float_array, device, is_array, namespace, vector_norm
from ._forms import with_shared_parameters

__all__ = ["AbstractBatchedLinearSolver", "AbstractLinearSolver"]


class AbstractLinearSolver(abc.ABC):
    """A solver for ``A x = b`` that needs only products ``v -> A v``.

    Concrete solvers are frozen, keyword-only dataclasses holding the configuration
    (tolerances, iteration limits, ...); the problem is passed to :meth:`solve`. Any
    object with a :meth:`solve` of this signature may be used where a linear solver is
    expected (for instance as the backward solver of an implicit layer).
    """

    @abc.abstractmethod
    def solve(self, A, b, /, *, x0=None, batch_axis=None, xp=None) -> Result:
        """Solve ``A x = b``.

        Parameters
        ----------
        A : callable, array or object with ``matvec``
            The linear operator: a callable ``v -> A v`` on arrays shaped like `b`, a
            2-D array (the matrix; or a 3-D array ``(batch, n, n)``, one matrix per
            system, when `b` is ``(batch, n)`` with ``batch_axis=0``), or an object
            with a ``matvec`` method.
        b : array, or a Python number or (nested) list of numbers
            Right-hand side (a 0-D `b` is one equation in one unknown). Numbers and
            lists become an array of the namespace of `A` (NumPy's when `A` is not an
            array), as in SciPy.
        x0 : array, optional
            Initial guess, shaped like `b`. Default: zeros.
        batch_axis : int, optional
            Solve every slice of `b` along this axis as its own system.
        xp : array namespace, optional
            Namespace of `b`. Default: inferred.

        Returns
        -------
        Result
            The solution and how the solve went.
        """


class AbstractBatchedLinearSolver(AbstractLinearSolver):
    """A built-in linear solver: checks, layout and `Result` done here, the method in
    :meth:`run`.

    Subclasses are frozen, keyword-only dataclasses with the fields `rtol`, `atol`,
    `maxiter` (None for the solver's default) and `callback`, and `M` (a right
    preconditioner) if they take one. :meth:`solve` validates the problem, brings it to
    the internal ``(B, n)`` layout and builds the :class:`Result` of what :meth:`run`
    returns. A subclass's docstring documents its own settings: `rtol`, `atol` and
    `callback` are added to its ``Parameters`` section from one shared block
    (:func:`implicitnet.linalg._forms.with_shared_parameters`).
    """

    #: The right preconditioner; a solver that takes one declares `M` as a field.
    M: ClassVar[Any] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__doc__:
            cls.__doc__ = with_shared_parameters(cls.__doc__)

    def __post_init__(self):
        check_tolerances(self.rtol, self.atol, self.maxiter, maxiter_optional=True)
        check_callable(self.callback, "callback", optional=True)

    def solve(self, A, b, /, *, x0=None, batch_axis=None, xp=None) -> Result:
        """Solve ``A x = b``; see :class:`AbstractLinearSolver` for the arguments."""
        xp = resolve_namespace(b, x0, xp, A)
        problem = prepare(A, b, x0, self.M, batch_axis, xp=xp)
        tol = tolerance(problem, self.rtol, self.atol, xp=xp)
        return make_result(problem, self.run(problem, tol, xp=xp), xp=xp)

    @abc.abstractmethod
    def run(self, problem: _Problem, tol: Any, *, xp: Any) -> _Outcome:
        """Solve `problem` (internal layout) to the per-system thresholds `tol` ``(B,)``."""


class _Problem(NamedTuple):
    """A linear system in the internal ``(B, n)`` layout."""

    b: Any  # (B, n)
    x0: Any  # (B, n) or None (zeros)
    matvec: Any  # (B, n) -> (B, n)
    precond: Any  # (B, n) -> (B, n), or None
    layout: BatchLayout  # the user's b <-> (B, n), shared with the nonlinear solvers
    batched: bool
    bnorm: Any  # (B,) Euclidean norms of the right-hand sides

    def to_user(self, x, *, xp):
        """Map an internal ``(B, n)`` array back to the layout of the user's `b`."""
        return self.layout.to_user(x, xp=xp)


def _operator(A, name: str, *, b_shape, perm, batched: bool, B: int, n: int, dtype, xp):
    """Wrap `A` (callable, matrix, batch of matrices, or ``.matvec``) as ``(B, n)`` map."""
    if is_array(A):
        M = as_float_array(A, xp=xp)
        if M.dtype != dtype:
            M = xp.astype(M, dtype)
        if M.ndim == 2:
            if tuple(M.shape) != (n, n):
                msg = (
                    f"`{name}` as a matrix must have shape {(n, n)} to act on systems of "
                    f"{n} unknowns, got {tuple(M.shape)}"
                )
                raise ValueError(msg)

            def matvec(v):
                # (M @ v^T)^T: a product with M itself (faster in BLAS than v @ M^T).
                return xp.matrix_transpose(M @ xp.matrix_transpose(v))

            return matvec
        if M.ndim == 3 and batched:
            if tuple(M.shape) != (B, n, n):
                msg = (
                    f"`{name}` as a batch of matrices must have shape {(B, n, n)}, got "
                    f"{tuple(M.shape)}"
                )
                raise ValueError(msg)

            def matvec(v):
                return (M @ v[..., None])[..., 0]

            return matvec
        msg = (
            f"`{name}` as an array must be a 2-D matrix (or a 3-D batch of matrices with "
            f"`batch_axis`), got {M.ndim} dimensions"
        )
        raise ValueError(msg)
    if callable(A):
        fun = A
    elif callable(getattr(A, "matvec", None)):
        fun = A.matvec
    else:
        msg = (
            f"`{name}` must be a callable, a matrix or an object with a `matvec` method, "
            f"got {type(A).__name__}"
        )
        raise TypeError(msg)
    moved = b_shape if perm is None else tuple(b_shape[i] for i in perm)
    inverse = None if perm is None else tuple(perm.index(i) for i in range(len(perm)))
    checked = False

    def matvec(v):
        nonlocal checked
        u = xp.reshape(v, moved)
        if inverse is not None:
            u = xp.permute_dims(u, inverse)
        out = fun(u)
        if not checked:
            if tuple(getattr(out, "shape", ())) != tuple(b_shape):
                msg = (
                    f"`{name}` must return an array shaped like `b` {tuple(b_shape)}, got "
                    f"{getattr(out, 'shape', type(out).__name__)}"
                )
                raise ValueError(msg)
            checked = True
        if out.dtype != dtype:
            out = xp.astype(out, dtype)
        if perm is not None:
            out = xp.permute_dims(out, perm)
        return xp.reshape(out, (B, n))

    return matvec


def prepare(A, b, x0, M, batch_axis, *, xp) -> _Problem:
    """Validate the inputs of a linear solve and bring them to the ``(B, n)`` layout."""
    b = as_float_array(b, xp=xp, name="b")
    dtype = b.dtype
    check_finite(b, "b", xp=xp)
    shape = tuple(b.shape)
    if batch_axis is None:
        batched, perm, B = False, None, 1
    else:
        axis = check_batch_axis(batch_axis, b.ndim, "b")
        if b.ndim < 2:
            msg = "`b` needs at least two dimensions (batch and unknowns) with `batch_axis`"
            raise ValueError(msg)
        batched = True
        perm = None if axis == 0 else (axis, *(i for i in range(b.ndim) if i != axis))
        B = shape[axis]
    size = math.prod(shape)
    n = size // B if B else 0
    if n == 0:
        msg = f"`b` must have at least one unknown per system, got shape {shape}"
        raise ValueError(msg)
    layout = BatchLayout(shape, axis if batched else None)
    b2 = layout.to_internal(b, xp=xp)
    x2 = None
    if x0 is not None:
        x0 = as_float_array(x0, xp=xp, dtype=dtype)
        if tuple(x0.shape) != shape:
            msg = f"`x0` must have the shape of `b` {shape}, got {tuple(x0.shape)}"
            raise ValueError(msg)
        check_finite(x0, "x0", xp=xp)
        x2 = layout.to_internal(x0, xp=xp)
    for name, op in (("A", A), ("M", M)):
        if is_array(op):
            try:
                namespace(b, op)
            except TypeError:
                msg = f"`{name}` is an array of another array library than `b`"
                raise TypeError(msg) from None
    kw = {"b_shape": shape, "perm": perm, "batched": batched, "B": B, "n": n, "dtype": dtype}
    matvec = _operator(A, "A", xp=xp, **kw)
    precond = None if M is None else _operator(M, "M", xp=xp, **kw)
    bnorm = vector_norm(b2, axis=-1, xp=xp)
    return _Problem(b2, x2, matvec, precond, layout, batched, bnorm)


def resolve_namespace(b, x0, xp, A=None):
    """The namespace of a linear solve (from `b`, `x0` and an array `A`).

    As in :func:`implicitnet.solvers.fixed_point`, `b` (and `x0`) may be Python numbers
    or (nested) lists of them: the namespace is then that of the array operator `A`, or
    NumPy's.
    """
    if xp is not None:
        return xp
    arrays = [v for v in (b, x0) if v is not None and not is_python_numbers(v)]
    if not arrays:
        if is_array(A):
            return namespace(A)
        return backends.get_backend("numpy").namespace()
    try:
        return namespace(*arrays)
    except TypeError as exc:
        which = "`b`" if arrays[0] is b else "`x0`"
        msg = f"{which} must be an array or a (nested) list of numbers (or pass `xp`): {exc}"
        raise TypeError(msg) from exc


def tolerance(problem: _Problem, rtol: float, atol: float, *, xp):
    """Per-system stopping threshold ``atol + rtol * norm(b)``, shape ``(B,)``."""
    return atol + rtol * problem.bnorm


@dataclass
class _Outcome:
    """Per-system bookkeeping a solver hands to :func:`make_result` (internal layout)."""

    x: Any  # (B, n)
    residual: Any  # (B,)
    converged: Any  # (B,) bool
    nit: Any  # (B,) int
    nfev: Any  # (B,) int
    history: list  # of (B,) arrays
    code: Any = None  # (B,) int status codes (see _CODES) for unconverged systems
    stats: dict | None = None


#: Integer codes for per-system statuses, kept in arrays while iterating.
CODE_OK, CODE_MAXITER, CODE_BREAKDOWN, CODE_STAGNATED, CODE_DIVERGED = 0, 1, 2, 3, 4
_CODES = {
    CODE_OK: Status.SUCCESS,
    CODE_MAXITER: Status.MAXITER,
    CODE_BREAKDOWN: Status.BREAKDOWN,
    CODE_STAGNATED: Status.STAGNATED,
    CODE_DIVERGED: Status.DIVERGED,
}
#: The severity of each code (indexed by code), and the status of each severity.
_RANKS = [_CODES[c].severity for c in sorted(_CODES)]
_BY_RANK = {s.severity: s for s in _CODES.values()}


def make_result(problem: _Problem, out: _Outcome, *, xp) -> Result:
    """Build the :class:`Result` of a linear solve in the user's layout."""
    converged = out.converged
    code = out.code
    if code is None:
        code = xp.where(converged, CODE_OK, CODE_MAXITER)
    else:
        code = xp.where(converged, CODE_OK, xp.where(code == CODE_OK, CODE_MAXITER, code))
    # The overall status is the worst one, in the order of `Status.severity`.
    rank = xp.asarray(_RANKS, dtype=code.dtype, device=device(code))
    status = _BY_RANK[int(xp.max(xp.take(rank, code)))]
    success = status == Status.SUCCESS
    history = xp.stack(out.history, axis=0)
    x = problem.to_user(out.x, xp=xp)
    stats = dict(out.stats or {})
    # ||b - A x|| / ||b||, the quantity the test compares with `rtol` (0 for b = 0).
    has_b = problem.bnorm > 0
    relative = xp.where(
        has_b, out.residual / xp.where(has_b, problem.bnorm, xp.ones_like(problem.bnorm)), 0.0
    )
    if problem.batched:
        stats["status"] = code
        return Result(
            x=x,
            success=success,
            status=status,
            message=status_message(status),
            nit=out.nit,
            nfev=out.nfev,
            residual=out.residual,
            history=history,
            converged=converged,
            stats=stats,
            relative_residual=relative,
        )
    return Result(
        x=x,
        success=success,
        status=status,
        message=status_message(status),
        nit=int(out.nit[0]),
        nfev=int(out.nfev[0]),
        residual=float(out.residual[0]),
        history=history[:, 0],
        converged=success,
        stats=stats,
        relative_residual=float(relative[0]),
    )


def int_zeros(B: int, *, like, xp):
    """An integer counter per system, on the device of `like`."""
    return xp.zeros((B,), dtype=xp.int64, device=device(like))


def initial_residual(p: _Problem, *, xp):
    """The starting point, its residual and the products with ``A`` this cost.

    A zero right-hand side has the solution zero whatever the guess, so those systems
    start (and stay) at zero.
    """
    b = p.b
    nfev = int_zeros(b.shape[0], like=b, xp=xp)
    zero_rhs = p.bnorm == 0
    zeros = xp.zeros_like(b)
    if p.x0 is None or bool(xp.all(zero_rhs)):
        return zeros, b, nfev
    x = xp.where(zero_rhs[:, None], zeros, p.x0)
    return x, b - p.matvec(x), nfev + 1
