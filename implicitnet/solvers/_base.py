"""The solver protocol: abstract classes, the `Step` a solver returns, and `Problem`.

Every nonlinear solver works on a 2-D layout ``(batch, n)``: ``batch`` independent
systems of ``n`` unknowns (``batch == 1`` without `batch_axis`, the whole of `x0`
flattened into one system). :class:`Problem` converts between the user's layout and
this one and turns the user's ``f(x, *args)`` into a *residual* function on it:

* fixed-point problem ``x = f(x, *args)``: residual ``g(x) = f(x, *args) - x``;
* root problem ``F(x, *args) = 0``: residual ``g(x) = F(x, *args)``.

An iterative solver sees only the residual function, so every method solves both kinds.
The methods' conventions follow SciPy's mixing methods: the model Jacobian of ``g`` is
``-I / beta``, so a plain step is ``x + beta * g(x)`` (Picard's iteration on a
fixed-point problem).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

from .._batch import BatchLayout
from .._result import Result
from .._tree import tree_map
from .._xp import device, row_norms
from ._iterate import iterate

__all__ = ["AbstractIterativeSolver", "AbstractSolver", "Problem", "Residual", "Step"]


class Step(NamedTuple):
    """What one solver step returns.

    Attributes
    ----------
    x : array
        The next iterate, shape ``(batch, n)``.
    fx : array
        The residual ``g(x)`` at the next iterate, shape ``(batch, n)`` (evaluated by
        the step, so the driver never evaluates ``g`` itself).
    state : pytree
        The solver's state for the next step.
    fx_norm : array or None, optional
        The Euclidean norm of each row of `fx`, shape ``(batch,)``, when the step
        computed it anyway (the driver then reuses it instead of computing it again).
    trial : bool, optional
        True when `x` is a line-search trial point that the next step may still reject
        (and replace by a shorter step from the last accepted iterate). The driver then
        does not apply the divergence test (residual above ``divergence_factor`` times
        the best) to it: a rejected trial is no iterate. Every other test (convergence,
        non-finite values, stagnation, the best iterate) applies as usual.
    """

    x: Any
    fx: Any
    state: Any
    fx_norm: Any = None
    trial: bool = False


class AbstractSolver(abc.ABC):
    """Anything that can be passed as `method` to :func:`fixed_point` and :func:`root`.

    Almost every solver is an :class:`AbstractIterativeSolver` (it describes one step;
    the shared driver runs the loop). Subclass this class directly only for a solver
    that runs its own loop, such as the SciPy adapters.
    """

    @abc.abstractmethod
    def run(
        self,
        problem: Problem,
        *,
        rtol: float,
        atol: float,
        maxiter: int,
        callback: Callable | None,
        xp: Any,
    ) -> Result:
        """Solve `problem` and return a :class:`~implicitnet.Result`."""


@dataclass(frozen=True, kw_only=True)
class AbstractIterativeSolver(AbstractSolver):
    """A solver described by one step; the shared driver does the rest.

    Subclasses are frozen, keyword-only dataclasses holding the method's configuration
    and implement :meth:`init` and :meth:`step`. The driver owns the loop, the
    tolerances, the residual history, non-finite and divergence checks, the best
    iterate, the batch's active set and the :class:`~implicitnet.Result`.

    The protocol, on arrays of shape ``(batch, n)``:

    ``state = init(g, x, gx, *, xp)``
        `g` is the residual function, `x` the starting point and ``gx = g(x)``.
        ``g.kind`` says which problem `g` comes from: ``"fixed_point"`` (``g(x) =
        f(x) - x``) or ``"root"`` (``g(x) = F(x)``).
    ``Step(x_next, g(x_next), state) = step(g, x, gx, state, *, xp)``
        One iteration. The step may call `g` as often as it needs (every call counts
        one function evaluation per system) and must return the residual at the iterate
        it returns (and may return its row norms as ``Step.fx_norm``).

    Every array in `state` must carry the batch as its leading axis (the driver
    compacts or freezes converged systems by indexing that axis); other leaves (Python
    numbers) are shared by the whole batch. Solvers must be array-API code (no
    boolean-mask indexing, no conversion to Python numbers) so that they also run on
    autodiff tensors, and must keep systems independent: row ``i`` of the output
    depends only on row ``i`` of the inputs. The only in-place updates allowed are
    :func:`implicitnet._xp.set_index` on buffers the solver allocated itself in
    :meth:`init` and never returns as ``x`` or ``fx`` (it falls back to an out-of-place
    update on autodiff tensors); the arrays `x`, `gx` and those the step returns are
    never modified.

    Parameters
    ----------
    stagnation_window : int, default: 50
        A system whose best residual has not decreased for this many iterations stops
        with status ``"stagnated"``.
    divergence_factor : float, default: 1e4
        A system whose residual exceeds this factor times its best residual stops with
        status ``"diverged"`` (as does one whose residual is not finite); its best
        iterate is returned. Line-search trial points (``Step.trial``) are exempt.

    A method whose good defaults differ between fixed-point and root problems declares
    these two fields with a default of None and overrides :meth:`stopping_rules`.
    """

    stagnation_window: int | None = 50
    divergence_factor: float | None = 1e4

    def __post_init__(self):
        window = self.stagnation_window
        if window is not None:
            if isinstance(window, bool) or not isinstance(window, int):
                msg = f"`stagnation_window` must be an integer, got {window!r}"
                raise TypeError(msg)
            if window < 1:
                msg = f"`stagnation_window` must be positive, got {window}"
                raise ValueError(msg)
        factor = self.divergence_factor
        if factor is not None:
            if isinstance(factor, bool) or not isinstance(factor, int | float):
                msg = f"`divergence_factor` must be a real number, got {factor!r}"
                raise TypeError(msg)
            if not factor > 1.0:
                msg = f"`divergence_factor` must be greater than 1, got {factor}"
                raise ValueError(msg)

    #: ``(stagnation_window, divergence_factor)`` by problem kind, where the fields are
    #: None; a method with other defaults overrides this table.
    DEFAULT_STOPPING: ClassVar[dict[str, tuple[int, float]]] = {
        "fixed_point": (50, 1e4),
        "root": (50, 1e4),
    }

    def stopping_rules(self, kind: str) -> tuple[int, float]:
        """``(stagnation_window, divergence_factor)`` for a problem of this `kind`.

        The driver's stagnation and divergence tests use these numbers; `kind` is
        ``"fixed_point"`` or ``"root"``. The fields as given, else the entries of
        :attr:`DEFAULT_STOPPING` for `kind` (50 and ``1e4`` unless a method says otherwise).
        """
        window, factor = self.DEFAULT_STOPPING[kind]
        if self.stagnation_window is not None:
            window = self.stagnation_window
        if self.divergence_factor is not None:
            factor = self.divergence_factor
        return window, float(factor)

    @abc.abstractmethod
    def init(self, g: Callable, x: Any, gx: Any, *, xp: Any) -> Any:
        """The initial state, given the starting point `x` and its residual `gx`."""

    @abc.abstractmethod
    def step(self, g: Callable, x: Any, gx: Any, state: Any, *, xp: Any) -> Step:
        """One iteration from `x` (with residual `gx`) to the next iterate."""

    def run(self, problem, *, rtol, atol, maxiter, callback, xp):
        """Run the shared driver (:func:`implicitnet.solvers._iterate.iterate`)."""
        return iterate(
            self, problem, rtol=rtol, atol=atol, maxiter=maxiter, callback=callback, xp=xp
        )


def point_value(g: Callable, x: Any, gx: Any, *, xp: Any) -> Any:
    """``x + g(x)``, i.e. ``f(x)`` for a fixed-point problem.

    When `g` is a :class:`Residual` and `gx` its latest output, the value of ``f`` it
    was computed from is returned as is (no new array); otherwise ``x + gx`` is formed.
    """
    if isinstance(g, Residual):
        return g.point(x, gx)
    return x + gx


#: The cosine between ``F(x0)`` and ``J F(x0)`` above which the automatic `beta` of a
#: root problem takes the linearised-optimal step (see :func:`initial_beta`).
UPHILL_COSINE = 0.1


def initial_beta(beta: float | None, g: Callable, x: Any, gx: Any, *, xp: Any) -> Any:
    """The step length ``beta`` of a plain step ``x + beta g(x)`` (Anderson, Broyden).

    A given `beta` is used as it is. ``None`` means 1 for a fixed-point problem (the
    plain step is Picard's). For a root problem it is chosen per system from the
    starting point, at the cost of one evaluation of ``F``: SciPy's scaling
    ``0.5 max(||x0||, 1) / ||F(x0)||`` (a first step about half the size of `x0`,
    whatever the scale of ``F``), unless one directional difference
    ``J F0 ~ (F(x0 + h F0) - F0) / h`` shows that this step goes clearly uphill: the
    cosine between ``F0`` and ``J F0`` is above :data:`UPHILL_COSINE` (the model
    Jacobian ``-I / beta`` has the wrong sign). Then ``beta = -(F0 . J F0) /
    ||J F0||^2``, the step that minimises the linearised residual along ``F0``. When
    the two are nearly orthogonal that step would be tiny (its length is the cosine
    times ``||F0|| / ||J F0||``) and would make the inverse-Jacobian guess of Broyden
    and Anderson just as small, so SciPy's scaling is kept. Returns a Python float, or
    an array with one value per row (1 where ``F(x0)`` is zero or not finite).
    """
    if beta is not None:
        return float(beta)
    # A bare callable (a solver driven by hand) is a fixed-point residual unless it
    # says otherwise, as a Residual does.
    if getattr(g, "kind", "fixed_point") == "fixed_point":
        return 1.0
    one = xp.ones_like(gx[:, 0])
    xn = row_norms(x, xp=xp)
    gn = row_norms(gx, xp=xp)
    usable = xp.logical_and(gn > 0, xp.isfinite(gn))
    gn_safe = xp.where(usable, gn, one)
    scipy_beta = xp.where(usable, 0.5 * xp.maximum(xn, one) / gn_safe, one)
    # One forward difference along F0, of norm sqrt(eps) max(||x0||, 1).
    h = float(xp.finfo(x.dtype).eps) ** 0.5 * xp.maximum(xn, one) / gn_safe
    jf = (g(x + h[:, None] * gx) - gx) / h[:, None]
    curvature = xp.vecdot(gx, jf)  # F0 . J F0
    jf2 = xp.vecdot(jf, jf)
    uphill = xp.logical_and(usable, xp.logical_and(curvature > 0, jf2 > 0))
    cosine = curvature / (gn_safe * xp.sqrt(xp.where(uphill, jf2, one)))
    uphill = xp.logical_and(uphill, cosine > UPHILL_COSINE)
    best = -curvature / xp.where(uphill, jf2, one)
    return xp.where(xp.logical_and(uphill, xp.isfinite(best)), best, scipy_beta)


class Residual:
    """The residual function ``g`` a solver step receives, on ``(rows, n)`` arrays.

    ``g(x) = f(x) - x`` for a fixed-point problem, ``g(x) = F(x)`` for a root problem.

    Parameters
    ----------
    value : callable
        ``value(x)``: ``f(x)`` (fixed point) or ``F(x)`` (root) on ``(rows, n)`` arrays.
    kind : {"fixed_point", "root"}
        Which problem `value` belongs to.
    calls : int, default: 0
        Calls counted before this one (a residual that replaces another carries its
        count on).

    Attributes
    ----------
    kind : {"fixed_point", "root"}
        As given.
    calls : int
        Evaluations so far.
    last : tuple
        For a fixed-point problem, ``(g(x), f(x))`` of the latest evaluation (``(None,
        None)`` before the first): :meth:`point` reuses ``f(x)`` instead of forming
        ``x + g(x)`` again.
    """

    __slots__ = ("_value", "calls", "kind", "last")

    def __init__(self, value: Callable, kind: Literal["fixed_point", "root"], *, calls: int = 0):
        self._value = value
        self.kind = kind
        self.calls = calls
        self.last = (None, None)

    def __call__(self, x: Any) -> Any:
        self.calls += 1
        out = self._value(x)
        if self.kind != "fixed_point":
            return out
        gx = out - x
        self.last = (gx, out)
        return gx

    def point(self, x: Any, gx: Any) -> Any:
        """``f(x) = x + g(x)``: the stored value when `gx` is the latest output."""
        last_gx, last_f = self.last
        return last_f if last_gx is gx else x + gx


class Problem:
    """A nonlinear system in the solvers' ``(batch, n)`` layout.

    Built by :func:`fixed_point` and :func:`root` after validating their arguments;
    solvers receive one through :meth:`AbstractSolver.run`.

    Attributes
    ----------
    kind : {"fixed_point", "root"}
        Which problem: ``x = f(x, *args)`` or ``f(x, *args) = 0``.
    f : callable
        The user's function.
    args : tuple
        Extra arguments of `f`.
    x0 : array
        The starting point in the internal layout, shape ``(batch, n)``.
    batch, n : int
        Number of systems and unknowns per system.
    batch_axis : int or None
        The user's batch axis (non-negative), or None for one system.
    arg_batch_axes : tuple or None
        Per element of `args`, the axis that carries the batch (or None); None when
        not declared, in which case `f` is always evaluated on the whole batch.
    layout : BatchLayout
        The conversion between the user's layout and ``(batch, n)`` (shared with the
        linear solvers).
    """

    def __init__(
        self,
        kind: Literal["fixed_point", "root"],
        f: Callable,
        x0: Any,
        args: tuple,
        *,
        batch_axis: int | None,
        arg_batch_axes: Sequence[int | None] | None,
        xp: Any,
    ):
        self.kind = kind
        self.f = f
        self.args = args
        self.shape = tuple(x0.shape)
        self.dtype = x0.dtype
        self.device = device(x0)
        self.batch_axis = batch_axis
        self.arg_batch_axes = None if arg_batch_axes is None else tuple(arg_batch_axes)
        self._xp = xp
        self.layout = BatchLayout(self.shape, batch_axis)
        self.batch = self.layout.batch
        self.n = self.layout.n
        self.x0 = self.to_internal(x0)
        self._checked = False

    @property
    def can_compact(self) -> bool:
        """Whether `f` may be evaluated on a subset of the systems."""
        return self.batch_axis is None or self.arg_batch_axes is not None

    # -- layout ---------------------------------------------------------------------
    def to_internal(self, x: Any) -> Any:
        """User layout (any number of systems along the batch axis) -> ``(rows, n)``."""
        return self.layout.to_internal(x, xp=self._xp)

    def to_user(self, x: Any) -> Any:
        """``(rows, n)`` -> user layout, with ``rows`` systems along the batch axis."""
        return self.layout.to_user(x, xp=self._xp)

    # -- evaluation -------------------------------------------------------------------
    def sliced_args(self, index: Any) -> tuple:
        """`args` with every declared batch axis restricted to the systems `index`."""
        if index is None or self.arg_batch_axes is None:
            return self.args
        xp = self._xp
        return tuple(
            a if ax is None else tree_map(lambda leaf, ax=ax: xp.take(leaf, index, axis=ax), a)
            for a, ax in zip(self.args, self.arg_batch_axes)
        )

    def residual_function(self, index: Any = None, *, calls: int = 0) -> Residual:
        """The :class:`Residual` on ``(rows, n)`` arrays for the systems `index` (all if None).

        `index` is an integer index array (device) of the active systems; it may be
        given only when :attr:`can_compact`. `calls` starts its count of evaluations.
        """
        args = self.sliced_args(index)

        def value(x):
            out = self.f(self.to_user(x), *args)
            if not self._checked:
                self._check_output(out, x)
            return self.to_internal(out)

        return Residual(value, self.kind, calls=calls)

    def _check_output(self, out: Any, x: Any) -> None:
        name = "f" if self.kind == "fixed_point" else "F"
        shape = getattr(out, "shape", None)
        if shape is None:
            msg = f"`{name}` must return an array, got {type(out).__name__}"
            raise TypeError(msg)
        expected = tuple(self.to_user(x).shape)
        if tuple(shape) != expected:
            msg = (
                f"`{name}` must return an array shaped like `x0` {expected}, "
                f"got shape {tuple(shape)}"
            )
            raise ValueError(msg)
        if out.dtype != self.dtype:
            msg = (
                f"`{name}` returned dtype {out.dtype} for `x0` of dtype {self.dtype}; "
                f"make `{name}` preserve the dtype (e.g. cast its parameters)"
            )
            raise TypeError(msg)
        self._checked = True
