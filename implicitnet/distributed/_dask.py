"""Batched solves on Dask: every chunk along the batch axis solved where it lives."""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from array_api_compat import is_dask_array

from .._optional import require
from .._result import Result, Status, status_message
from .._tree import tree_leaves
from .._validate import check_tolerances
from .._xp import device, namespace, to_host
from ..solvers import fixed_point as _fixed_point
from ..solvers import resolve_method
from ..solvers import root as _root

__all__ = ["STATUSES", "DaskResult", "fixed_point", "root"]

#: The per-system ``status`` array holds integer codes: ``STATUSES[code]`` is the
#: :class:`~implicitnet.Status` of that system.
STATUSES: tuple[Status, ...] = tuple(Status)

_FIELDS = ("x", "converged", "status", "nit", "nfev", "residual")


def _require_dask():
    needs = {"needed_for": "implicitnet.distributed (batched solves on Dask)"}
    needs["install"] = "pip install 'implicitnet[distributed]'"
    return require("dask", **needs), require("dask.array", **needs)


@dataclass(frozen=True)
class DaskResult:
    """The lazy outcome of a batched solve on Dask: one entry per system.

    Every field is a Dask array whose chunks are those of the input along the batch
    axis; nothing has been computed yet. Compute the fields you need together
    (``dask.compute(res.x, res.converged)``), or call :meth:`persist` first: each
    separate computation runs the solves again.

    Attributes
    ----------
    x : dask array
        The solutions (best iterates for systems that failed), shaped like `x0`.
    converged : dask array of bool, shape (batch,)
        Whether each system converged.
    status : dask array of int8, shape (batch,)
        Each system's status as a code: ``STATUSES[code]`` is the
        :class:`~implicitnet.Status` (0 is ``"success"``).
    nit, nfev : dask arrays of int64, shape (batch,)
        Iterations and function evaluations per system.
    residual : dask array, shape (batch,)
        Final residual norm per system, in the dtype of `x0`.
    batch_axis : int
        The axis of `x` that runs over the systems.
    blocks : dask array
        The solves themselves: one task per chunk, whose value is the tuple ``(x,
        converged, status, nit, nfev, residual)`` of that chunk (the fields above
        are views of it). :meth:`compute` and :meth:`summary` read it directly.
    """

    x: Any
    converged: Any
    status: Any
    nit: Any
    nfev: Any
    residual: Any
    batch_axis: int
    blocks: Any = field(default=None, repr=False)

    def _arrays(self) -> tuple:
        return tuple(getattr(self, name) for name in _FIELDS)

    def persist(self, **kwargs: Any) -> DaskResult:
        """Start the solves and keep every field in (cluster) memory.

        Keyword arguments go to :func:`dask.persist` (e.g. ``scheduler="threads"``).
        Later computations and :meth:`summary` then reuse the solved chunks.
        """
        dask, _ = _require_dask()
        blocks, *arrays = dask.persist(self.blocks, *self._arrays(), **kwargs)
        return DaskResult(*arrays, batch_axis=self.batch_axis, blocks=blocks)

    def _solved_chunks(self) -> list:
        """One delayed ``(x, converged, status, nit, nfev, residual)`` per chunk, in order."""
        return list(self.blocks.to_delayed().ravel())

    def compute(self, **kwargs: Any) -> Result:
        """Gather everything into one batched :class:`~implicitnet.Result`.

        One task per chunk: each chunk's solve sends its fields back together. This
        brings every solution to the client; for a large batch, write `x` to storage
        from the workers (``res.x.to_zarr(...)``) and ask for :meth:`summary`. Keyword
        arguments go to :func:`dask.compute`.
        """
        dask, _ = _require_dask()
        parts = dask.compute(*self._solved_chunks(), **kwargs)
        xp = namespace(parts[0][0])
        x = xp.concat([p[0] for p in parts], axis=self.batch_axis)
        converged, codes, nit, nfev, residual = (
            xp.concat([p[k] for p in parts]) for k in range(1, 6)
        )
        statuses = tuple(STATUSES[int(c)] for c in _host_ints(codes))
        overall = Status.worst(list(statuses))
        return Result(
            x=x,
            success=bool(xp.all(converged)),
            status=overall,
            message=status_message(overall),
            nit=nit,
            nfev=nfev,
            residual=residual,
            converged=converged,
            stats={"statuses": statuses},
        )

    def summary(self, **kwargs: Any) -> dict:
        """Batch-wide figures, computed on the workers; only a few numbers come back.

        Returns
        -------
        dict
            ``systems``, ``converged`` (count), ``success`` (all converged),
            ``status`` (the overall status: the worst among unconverged systems),
            ``statuses`` (count per status name, zeros left out), ``nit_max``,
            ``nit_mean``, ``nfev_total`` and ``residual_max``.

        Keyword arguments go to :func:`dask.compute`.
        """
        dask, _ = _require_dask()
        partials = dask.compute(
            *(dask.delayed(_chunk_summary)(c) for c in self._solved_chunks()), **kwargs
        )
        counts = [sum(p[0][k] for p in partials) for k in range(len(STATUSES))]
        n_conv = sum(p[1] for p in partials)
        systems = sum(counts)
        per_status = {STATUSES[k].value: n for k, n in enumerate(counts) if n}
        overall = Status.worst([Status(s) for s in per_status])
        return {
            "systems": systems,
            "converged": n_conv,
            "success": n_conv == systems,
            "status": overall.value,
            "statuses": per_status,
            "nit_max": max(p[2] for p in partials),
            "nit_mean": sum(p[3] for p in partials) / systems,
            "nfev_total": sum(p[4] for p in partials),
            "residual_max": max(p[5] for p in partials),
        }


def _chunk_summary(fields: tuple) -> tuple:
    """The figures of one solved chunk, as Python numbers (computed on its worker)."""
    _, _, codes, nit, nfev, residual = fields
    counts = [0] * len(STATUSES)
    for c in _host_ints(codes):
        counts[c] += 1
    if sum(counts) == 0:
        return counts, 0, 0, 0, 0, 0.0
    xp = namespace(nit)
    return (
        counts,
        counts[0],
        int(xp.max(nit)),
        int(xp.sum(nit)),
        int(xp.sum(nfev)),
        float(xp.max(residual)),
    )


def _host_ints(a) -> list[int]:
    return [int(v) for v in to_host(a)]


def _normalise_axes(arg_batch_axes, n_args: int) -> tuple:
    if arg_batch_axes is None or (
        isinstance(arg_batch_axes, int) and not isinstance(arg_batch_axes, bool)
    ):
        return (arg_batch_axes,) * n_args
    if isinstance(arg_batch_axes, tuple | list):
        axes = tuple(arg_batch_axes)
        if len(axes) != n_args:
            msg = (
                f"`arg_batch_axes` has {len(axes)} entries but `args` has {n_args}; "
                "give one axis (or None) per argument"
            )
            raise ValueError(msg)
        for k, ax in enumerate(axes):
            if ax is not None and (isinstance(ax, bool) or not isinstance(ax, int)):
                msg = f"`arg_batch_axes[{k}]` must be an int or None, got {ax!r}"
                raise TypeError(msg)
        return axes
    msg = f"`arg_batch_axes` must be an int, None or a sequence, got {arg_batch_axes!r}"
    raise TypeError(msg)


def _solve_block(
    x0b,
    *blocks,
    kind: str,
    f: Callable,
    solver: Any,
    shared: tuple,
    batched: tuple,
    arg_axes: tuple,
    batch_axis: int,
    rtol: float,
    atol: float,
    maxiter: int,
) -> tuple:
    """Solve the systems of one chunk with the ordinary solver; a tuple of the fields."""
    xp = namespace(x0b)
    args = list(shared)
    for pos, block in zip(batched, blocks):
        args[pos] = block
    n = x0b.shape[batch_axis]
    if n == 0:  # an empty chunk (Dask allows them): nothing to solve
        dev = device(x0b)
        return (
            x0b,
            xp.zeros((0,), dtype=xp.bool, device=dev),
            xp.zeros((0,), dtype=xp.int8, device=dev),
            xp.zeros((0,), dtype=xp.int64, device=dev),
            xp.zeros((0,), dtype=xp.int64, device=dev),
            xp.zeros((0,), dtype=x0b.dtype, device=dev),
        )
    solve = _fixed_point if kind == "fixed_point" else _root
    res = solve(
        f,
        x0b,
        tuple(args),
        method=solver,
        rtol=rtol,
        atol=atol,
        maxiter=maxiter,
        batch_axis=batch_axis,
        arg_batch_axes=arg_axes if batched else None,
    )
    xr = namespace(res.x)
    codes = xr.asarray(
        [STATUSES.index(s) for s in res.stats["statuses"]], dtype=xr.int8, device=device(res.x)
    )
    return (res.x, res.converged, codes, res.nit, res.nfev, res.residual)


def _solve(
    kind: str,
    f: Callable,
    x0: Any,
    args: Any,
    *,
    batch_axis: int,
    arg_batch_axes: Any,
    method: Any,
    rtol: float,
    atol: float,
    maxiter: int,
    options: dict,
) -> DaskResult:
    dask, da = _require_dask()
    name = "f" if kind == "fixed_point" else "F"
    if not callable(f):
        msg = f"`{name}` must be callable, got {type(f).__name__}"
        raise TypeError(msg)
    if not is_dask_array(x0):
        msg = (
            f"`x0` must be a Dask array chunked along `batch_axis`, got {type(x0).__name__} "
            "(solve an in-memory batch with implicitnet.solvers." + kind + ")"
        )
        raise TypeError(msg)
    if not isinstance(args, tuple | list):
        args = (args,)
    args = tuple(args)
    check_tolerances(rtol, atol, maxiter)
    solver = resolve_method(method, options)  # unknown names fail here, not on a worker
    ndim = x0.ndim
    if isinstance(batch_axis, bool) or not isinstance(batch_axis, int):
        msg = f"`batch_axis` must be an integer, got {batch_axis!r}"
        raise TypeError(msg)
    if not -ndim <= batch_axis < ndim:
        msg = f"`batch_axis` {batch_axis} is out of range for `x0` with {ndim} dimensions"
        raise ValueError(msg)
    batch_axis %= ndim
    batch = x0.shape[batch_axis]
    if math.isnan(batch):
        msg = "`x0` has an unknown number of systems; call `x0.compute_chunk_sizes()` first"
        raise ValueError(msg)
    if batch == 0:
        msg = "`x0` has no systems along `batch_axis` (size 0)"
        raise ValueError(msg)
    meta_xp = namespace(x0._meta)
    if not meta_xp.isdtype(x0.dtype, "real floating"):  # integers: the default float
        x0 = x0.astype(meta_xp.float64)
    # One chunk per group of systems: the other axes of a system are never split.
    batch_chunks = x0.chunks[batch_axis]
    x0 = x0.rechunk({ax: -1 for ax in range(ndim) if ax != batch_axis})

    axes = _normalise_axes(arg_batch_axes, len(args))
    shared: list[Any] = list(args)
    batched: list[int] = []
    arg_axes: list[Any] = []
    pieces: list[Any] = []
    index = tuple(range(ndim))
    next_index = ndim
    for k, (a, ax) in enumerate(zip(args, axes)):
        if ax is None:
            if any(is_dask_array(leaf) for leaf in tree_leaves(a)):
                msg = (
                    f"`args[{k}]` holds a Dask array but is shared by every system; give "
                    "it a batch axis in `arg_batch_axes`, or pass it computed"
                )
                raise TypeError(msg)
            arg_axes.append(None)
            continue
        if not hasattr(a, "shape") or not hasattr(a, "ndim"):
            msg = f"`args[{k}]` has a batch axis in `arg_batch_axes` but is not an array"
            raise TypeError(msg)
        if not -a.ndim <= ax < a.ndim:
            msg = (
                f"`arg_batch_axes[{k}]` = {ax} is out of range for an argument "
                f"with {a.ndim} dimensions"
            )
            raise ValueError(msg)
        ax %= a.ndim
        if a.shape[ax] != batch:
            msg = (
                f"`args[{k}]` has size {a.shape[ax]} along its batch axis {ax}, "
                f"but `x0` holds {batch} systems"
            )
            raise ValueError(msg)
        chunks = tuple(batch_chunks if i == ax else (a.shape[i],) for i in range(a.ndim))
        a = a.rechunk(chunks) if is_dask_array(a) else da.from_array(a, chunks=chunks)
        a_index = []
        for i in range(a.ndim):
            if i == ax:
                a_index.append(index[batch_axis])
            else:
                a_index.append(next_index)
                next_index += 1
        pieces += [a, tuple(a_index)]
        shared[k] = None
        batched.append(k)
        arg_axes.append(ax)

    block_fn = partial(
        _solve_block,
        kind=kind,
        f=f,
        solver=solver,
        shared=tuple(shared),
        batched=tuple(batched),
        arg_axes=tuple(arg_axes),
        batch_axis=batch_axis,
        rtol=float(rtol),
        atol=float(atol),
        maxiter=maxiter,
    )
    token = dask.base.tokenize(
        kind, f, solver, tuple(shared), tuple(arg_axes), batch_axis, rtol, atol, maxiter, x0
    )
    token = dask.base.tokenize(token, *pieces[0::2])
    # The solve: one task per chunk, on the worker holding the chunk; each task returns
    # the tuple of fields, which the layers below split without moving data.
    solved = da.blockwise(
        block_fn,
        index,
        x0,
        index,
        *pieces,
        concatenate=True,
        dtype=x0.dtype,
        meta=x0._meta,
        name=f"implicitnet-{kind}-{token}",
    )
    x = solved.map_blocks(
        operator.getitem, 0, dtype=x0.dtype, meta=x0._meta, name=f"implicitnet-x-{token}"
    )
    fields = {
        "converged": meta_xp.bool,
        "status": meta_xp.int8,
        "nit": meta_xp.int64,
        "nfev": meta_xp.int64,
        "residual": x0.dtype,
    }
    out = {"x": x}
    nblocks = solved.numblocks[batch_axis]
    for pos, (field_name, dtype) in enumerate(fields.items(), start=1):
        out[field_name] = _per_system(
            solved, pos, nblocks, batch_axis, batch_chunks, dtype, meta_xp, field_name, token
        )
    return DaskResult(**out, batch_axis=batch_axis, blocks=solved)


def _per_system(solved, pos, nblocks, batch_axis, batch_chunks, dtype, meta_xp, label, token):
    """A 1-D Dask array of field `pos` of each solved chunk (a task per chunk)."""
    _, da = _require_dask()
    from dask.highlevelgraph import HighLevelGraph  # optional dependency, as above

    name = f"implicitnet-{label}-{token}"
    zeros = (0,) * solved.ndim
    dsk = {}
    for i in range(nblocks):
        key = list(zeros)
        key[batch_axis] = i
        dsk[(name, i)] = (operator.getitem, (solved.name, *key), pos)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[solved])
    meta = meta_xp.empty((0,), dtype=dtype)
    return da.Array(graph, name, chunks=(batch_chunks,), meta=meta)


def _front_end(kind: str, default_method: str, name: str, doc: str) -> Callable[..., DaskResult]:
    """The public solve of `kind` on Dask: one signature, whose first argument is `name`."""

    def solve(
        f: Callable,
        /,
        x0: Any,
        args: Any = (),
        *,
        batch_axis: int = 0,
        arg_batch_axes: Any = None,
        method: Any = default_method,
        rtol: float = 1e-6,
        atol: float = 0.0,
        maxiter: int = 100,
        **options: Any,
    ) -> DaskResult:
        return _solve(
            kind,
            f,
            x0,
            args,
            batch_axis=batch_axis,
            arg_batch_axes=arg_batch_axes,
            method=method,
            rtol=rtol,
            atol=atol,
            maxiter=maxiter,
            options=options,
        )

    solve.__name__ = solve.__qualname__ = kind
    solve.__doc__ = doc
    # The function (positional only) is `f` for a fixed point and `F` for a root, as
    # in the in-memory solves.
    sig = inspect.signature(solve)
    first, *rest = sig.parameters.values()
    solve.__signature__ = sig.replace(parameters=[first.replace(name=name), *rest])
    return solve


fixed_point = _front_end(
    "fixed_point",
    "anderson",
    "f",
    """Solve ``x = f(x, *args)`` for every system of a Dask array, chunk by chunk.

    Each chunk of `x0` along `batch_axis` (with the matching chunks of the batched
    arguments) is solved by :func:`implicitnet.solvers.fixed_point` on the worker that
    holds it: nothing is gathered on the client. Works with any Dask scheduler: the
    threaded one, processes, or a ``dask.distributed`` cluster; chunks may be NumPy
    arrays, or CuPy arrays on GPU workers.

    Parameters
    ----------
    f : callable
        ``f(x, *args)`` on one chunk: `x` holds some of the systems along
        `batch_axis`, the batched `args` the same systems. It must act on each system
        independently, and be picklable for a cluster of processes.
    x0 : dask array
        Starting points. Only its chunks along `batch_axis` matter; other axes are
        joined into one chunk (a system is never split).
    args : tuple, optional
        Extra arguments of `f`: those with a batch axis in `arg_batch_axes` are
        arrays (Dask arrays are rechunked to the chunks of `x0`, others wrapped),
        the others are shared by every chunk and sent with each task (keep them
        small, or scatter them to the workers first).
    batch_axis : int, default: 0
        The axis of `x0` that runs over the systems.
    arg_batch_axes : int, None or sequence of them, optional
        For each element of `args`, its batch axis, or None when shared; a single
        value applies to every element. Default: every argument is shared.
    method : str or AbstractSolver, default: "anderson"
        As for :func:`implicitnet.solvers.fixed_point`.
    rtol, atol : float
        Tolerances of each system's convergence test.
    maxiter : int, default: 100
        Iteration limit of each chunk's solve.
    **options
        Configuration of the named `method`.

    Returns
    -------
    DaskResult
        Lazy per-system ``x``, ``converged``, ``status`` (codes into
        :data:`STATUSES`), ``nit``, ``nfev`` and ``residual``, with
        :meth:`~DaskResult.summary` and :meth:`~DaskResult.compute`.

    Raises
    ------
    TypeError
        If `x0` is not a Dask array, `f` is not callable, or a shared argument holds a
        Dask array.
    ValueError
        If `batch_axis`, `arg_batch_axes`, the tolerances or `method` are invalid.
    ImportError
        If Dask is not installed.

    See Also
    --------
    implicitnet.solvers.fixed_point : The in-memory solve each chunk runs.

    Notes
    -----
    Failure is a value per system, as in the in-memory solve: a system that does not
    converge has ``converged = False`` and its status, and never stops the others. A
    chunk's task is a pure function of its inputs: when a worker dies, Dask runs the
    lost tasks again elsewhere and gets the same values, so no system is lost or
    counted twice. An exception raised by `f` itself fails the computation.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from implicitnet import distributed
    >>> c = da.from_array(np.linspace(0.0, 1.0, 6).reshape(6, 1), chunks=(2, 1))
    >>> res = distributed.fixed_point(lambda x, c: 0.5 * np.cos(x) + c, da.zeros((6, 1),
    ...                               chunks=(2, 1)), (c,), arg_batch_axes=0)
    >>> s = res.summary(scheduler="threads")
    >>> s["systems"], s["success"]
    (6, True)
    """,
)

root = _front_end(
    "root",
    "newton_krylov",
    "F",
    """Solve ``F(x, *args) = 0`` for every system of a Dask array, chunk by chunk.

    As :func:`fixed_point`, with :func:`implicitnet.solvers.root` on each chunk.

    Parameters
    ----------
    F : callable
        ``F(x, *args)`` on one chunk; acts on each system independently.
    x0, args, batch_axis, arg_batch_axes, rtol, atol, maxiter, **options
        As for :func:`fixed_point` (`args` are those of `F`).
    method : str or AbstractSolver, default: "newton_krylov"
        As for :func:`implicitnet.solvers.root`.

    Returns
    -------
    DaskResult
        As for :func:`fixed_point`.

    Raises
    ------
    TypeError, ValueError, ImportError
        As for :func:`fixed_point`.

    See Also
    --------
    implicitnet.solvers.root : The in-memory solve each chunk runs.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from implicitnet import distributed
    >>> a = da.from_array(np.arange(1.0, 7.0).reshape(6, 1), chunks=(3, 1))
    >>> res = distributed.root(lambda x, a: x**2 - a, da.ones((6, 1), chunks=(3, 1)),
    ...                        (a,), arg_batch_axes=0, rtol=1e-12)
    >>> out = res.compute(scheduler="threads")
    >>> bool(out.success), np.allclose(out.x[:, 0] ** 2, np.arange(1.0, 7.0))
    (True, True)
    """,
)
