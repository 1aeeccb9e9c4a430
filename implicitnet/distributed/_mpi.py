"""Data-parallel training over MPI (mpi4py): shard each batch, all-reduce one buffer."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from .. import backends
from .. import data as _data
from .._optional import require
from .._train import Running, checked_loss, differentiate, train_epoch
from .._tree import tree_flatten, tree_unflatten
from .._xp import device, namespace
from ..autodiff import value_and_grad

__all__ = ["CommStats", "DataParallel", "ReplicaMismatchError", "data_parallel_epoch"]


class ReplicaMismatchError(RuntimeError):
    """Raised when the ranks of a data-parallel run no longer hold identical parameters."""


def _world():
    return _mpi().COMM_WORLD


def _mpi():
    """The ``mpi4py.MPI`` module (an optional dependency, imported on first use)."""
    return require(
        "mpi4py.MPI",
        needed_for="data-parallel training",
        install="pip install 'implicitnet[distributed]' (and an MPI library: mpich or openmpi)",
    )


@dataclass
class CommStats:
    """What a :class:`DataParallel` has communicated so far.

    Attributes
    ----------
    allreduces : int
        Number of all-reduce calls (one per training step).
    bytes : int
        Payload bytes of those calls, as contributed by this rank. An all-reduce
        moves about ``2 (p - 1) / p`` times its payload through each rank's link
        (ring) or ``log2(p)`` times (recursive doubling, for small payloads).
    seconds : float
        Wall time spent inside the all-reduce calls (waiting for slower ranks
        included).
    pack_seconds : float
        Wall time spent flattening to and unflattening from the host buffer
        (device-to-host and back on a GPU).
    """

    allreduces: int = 0
    bytes: int = 0
    seconds: float = 0.0
    pack_seconds: float = 0.0


class DataParallel:
    """Data-parallel training over MPI: every rank holds the model, and a share of
    every batch.

    Each step, every rank computes the loss and gradients of its share of the global
    batch; one all-reduce of a single flattened buffer (the gradients weighted by
    the share's size, the sizes themselves and any figures to average) gives every
    rank the gradients of the whole batch, so every rank takes the same optimizer
    step and the parameters stay identical (:meth:`check_replicas` confirms it).

    Parameters
    ----------
    comm : mpi4py communicator, optional
        The ranks taking part. Default: ``MPI.COMM_WORLD`` (all the processes started
        by ``mpiexec``; a single process started without it is a world of one).

    Attributes
    ----------
    rank, size : int
        This process's rank and the number of ranks.
    stats : CommStats
        Bytes and time of the communication so far.

    Examples
    --------
    The loop of a user's own model (run it with ``mpiexec -n 4 python train.py``)::

        dp = DataParallel()
        model = dp.broadcast(model)                 # rank 0's initial parameters
        loss_grad = dp.value_and_grad(loss_fn)      # loss_fn(model, xb, yb): a mean
        for epoch in range(epochs):
            for xb, yb in data.batches(x, y, 64, seed=0, epoch=epoch):
                loss, grads = loss_grad(model, xb, yb)   # global batch in, split inside
                model, state = opt.update(model, grads, state)
            dp.check_replicas(model)
            if dp.rank == 0:
                nn.save("model.npz", model)         # atomic
    """

    def __init__(self, comm: Any = None):
        self.comm = _world() if comm is None else comm
        self.rank = int(self.comm.Get_rank())
        self.size = int(self.comm.Get_size())
        self.stats = CommStats()

    # -- sharding --------------------------------------------------------------------

    def bounds(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """``(start, stop)`` of `rank`'s share of `n` samples (default: this rank).

        Shares are contiguous and differ in size by at most one; a rank whose share is
        empty (``n < size``) still takes part in the all-reduce, with weight zero.
        """
        r = self.rank if rank is None else rank
        return (r * n) // self.size, ((r + 1) * n) // self.size

    def shard(self, batch: Any, axis: int = 0) -> Any:
        """This rank's share of `batch` along `axis` (an array, or None passed through)."""
        if batch is None:
            return None
        n = batch.shape[axis]
        lo, hi = self.bounds(n)
        index = [slice(None)] * batch.ndim
        index[axis] = slice(lo, hi)
        return batch[tuple(index)]

    # -- collectives -----------------------------------------------------------------

    def allreduce_mean(self, grads: Any, n: int, *values: float) -> tuple[Any, tuple]:
        """The sample-weighted mean over the ranks of `grads` and of `values`.

        Parameters
        ----------
        grads : pytree of arrays
            This rank's gradients, the mean over its `n` samples.
        n : int
            Number of samples this rank's `grads` and `values` average over (may be 0).
        *values : float
            Figures to average alike (the loss, an accuracy, ...).

        Returns
        -------
        (grads, values)
            ``sum_r n_r g_r / sum_r n_r`` with the structure, dtypes and devices of
            `grads`, and a tuple of the averaged `values` (Python floats). Identical
            on every rank.

        Notes
        -----
        One buffer per call: ``[n g_1, ..., n g_L, n, n v_1, ..., n v_k]`` in the
        gradients' dtype, all-reduced by summation.
        """
        sums, total = self._allreduce_weighted(grads, n, values)
        if total == 0:
            msg = "no rank had samples to average over"
            raise ValueError(msg)
        return self._unpack(sums, 1.0 / total), tuple(v / total for v in sums[2])

    def _allreduce_weighted(self, grads, n, values):
        t0 = time.perf_counter()
        leaves, treedef = tree_flatten(grads)
        if not leaves:
            msg = "`grads` has no arrays"
            raise ValueError(msg)
        xp = namespace(*leaves)
        dtype = leaves[0].dtype
        dev = device(leaves[0])
        weight = float(n)
        parts = [xp.reshape(xp.astype(leaf, dtype) * weight, (-1,)) for leaf in leaves]
        extra = xp.asarray([weight, *(weight * float(v) for v in values)], dtype=dtype, device=dev)
        flat = xp.concat([*parts, extra])
        be = backends.backend_of(flat)
        send = be.to_numpy(flat)
        hxp = namespace(send)
        recv = hxp.empty_like(send)
        t1 = time.perf_counter()
        self.comm.Allreduce(send, recv, op=_mpi_sum())
        t2 = time.perf_counter()
        k = len(values)
        total = float(recv[recv.shape[0] - k - 1])
        sums = [float(v) for v in recv[recv.shape[0] - k :]]
        flat = be.from_numpy(recv, device=dev)
        self.stats.allreduces += 1
        self.stats.bytes += int(send.nbytes)
        self.stats.seconds += t2 - t1
        self.stats.pack_seconds += t1 - t0
        return (flat, (leaves, treedef, xp), sums), total

    def _unpack(self, packed, scale):
        t0 = time.perf_counter()
        flat, (leaves, treedef, xp), _ = packed
        out = []
        offset = 0
        for leaf in leaves:
            size = math.prod(leaf.shape)
            piece = flat[offset : offset + size] * scale
            out.append(xp.astype(xp.reshape(piece, leaf.shape), leaf.dtype))
            offset += size
        self.stats.pack_seconds += time.perf_counter() - t0
        return tree_unflatten(treedef, out)

    def broadcast(self, tree: Any, root: int = 0) -> Any:
        """`root`'s copy of `tree` (e.g. initial parameters), on every rank."""
        leaves, treedef = tree_flatten(tree)
        out = []
        for leaf in leaves:
            be = backends.backend_of(leaf)
            host = be.to_numpy(leaf)
            host = namespace(host).asarray(host, copy=True)
            self.comm.Bcast(host, root=root)
            out.append(be.from_numpy(host, device=device(leaf)))
        return tree_unflatten(treedef, out)

    def fingerprint(self, tree: Any) -> str:
        """A digest of the bytes of every leaf of `tree` (equal iff bitwise equal)."""
        h = hashlib.sha256()
        for leaf in tree_flatten(tree)[0]:
            host = backends.backend_of(leaf).to_numpy(leaf)
            h.update(str((tuple(host.shape), str(host.dtype))).encode())
            h.update(memoryview(host).tobytes())
        return h.hexdigest()

    def check_replicas(self, tree: Any) -> None:
        """Confirm that every rank holds a bitwise identical `tree`.

        Raises
        ------
        ReplicaMismatchError
            On every rank, naming the ranks that differ from rank 0.
        """
        digests = self.comm.allgather(self.fingerprint(tree))
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        if bad:
            msg = (
                f"the parameters on rank(s) {bad} differ from rank 0's: the ranks did not "
                "take the same steps (a rank-dependent random draw or data order?)"
            )
            raise ReplicaMismatchError(msg)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        self.comm.Barrier()

    # -- the loop --------------------------------------------------------------------

    def value_and_grad(
        self, fun: Callable, *, batch_argnums: Sequence[int] | None = None, has_aux=False
    ) -> Callable:
        """Data-parallel :func:`implicitnet.value_and_grad` with respect to argument 0.

        Parameters
        ----------
        fun : callable
            ``fun(params, *batch)``: the *mean* loss over the samples of `batch`
            (axis 0 of each array), or ``(loss, aux)`` when `has_aux`.
        batch_argnums : sequence of int, optional
            The positional arguments that hold the batch, split across the ranks.
            Default: every argument after the first.
        has_aux : bool, default: False
            Whether `fun` returns ``(loss, aux)``; `aux` is this rank's own.

        Returns
        -------
        callable
            ``(params, *args) -> (loss, grads)`` (or ``((loss, aux), grads)``): the
            global batch goes in, the loss and gradients of the whole batch come out,
            the same on every rank.
        """
        inner = value_and_grad(fun, has_aux=has_aux)

        def wrapped(params, *args):
            which = range(1, len(args) + 1) if batch_argnums is None else batch_argnums
            local = list(args)
            n = None
            for i in which:
                local[i - 1] = self.shard(args[i - 1])
                if local[i - 1] is not None:
                    n = int(local[i - 1].shape[0])
            if n is None:
                msg = "no batch among the arguments (`batch_argnums`)"
                raise ValueError(msg)
            if n > 0:
                value, grads = inner(params, *local)
                loss = value[0] if has_aux else value
                aux = value[1] if has_aux else None
                loss_f = float(loss)
            else:
                grads, loss_f, aux = _zeros_like(params), 0.0, None
            grads, (loss_mean,) = self.allreduce_mean(grads, n, loss_f)
            return ((loss_mean, aux), grads) if has_aux else (loss_mean, grads)

        return wrapped


def _mpi_sum():
    return _mpi().SUM


def _zeros_like(tree):
    leaves, treedef = tree_flatten(tree)
    return tree_unflatten(treedef, [namespace(leaf).zeros_like(leaf) for leaf in leaves])


def _sharded_step(dp: DataParallel, loss_grad, objective, model, xb, yb, extra, epoch, batch):
    """One global batch split across the ranks of `dp`: ``(grads, record)``.

    The step of :func:`implicitnet._train.fit_epoch` (the signature of its
    ``local_step``): every rank differentiates its share of the batch (the rows of
    `xb`, `yb` and of the batch's random draws `extra`), and one all-reduce of a single
    buffer gives every rank the gradients and the figures of the whole batch.
    """
    xs, ys = dp.shard(xb), dp.shard(yb)
    n = int(xs.shape[0])
    keys = ("loss", *objective.figures, *Running.SOLVE_FIGURES)
    local = Running()
    if n > 0:
        local_extra = tuple(dp.shard(e) for e in extra)
        ((value, aux), grads), local.bwd_failures = differentiate(
            loss_grad, (model, xs, ys, *local_extra), epoch, batch
        )
        loss, res, figures = objective.read(value, aux, ys)
        local.add_solve(n, res, loss=float(loss), **figures)
        counts = (local.unconverged / n, local.bwd_failures / n, float(local.bwd_seen))
        values = (*(local.mean(k) for k in keys), *counts)
    else:
        grads = _zeros_like(model)
        values = (0.0,) * (len(keys) + 3)
    # One all-reduce per step: gradients, sample count and the step's figures.
    packed, total = dp._allreduce_weighted(grads, n, values)
    grads = dp._unpack(packed, 1.0 / total)
    *sums, unconverged, failures, bwd_seen = packed[2]

    def record(stats: Running, model) -> None:
        means = {k: s / total for k, s in zip(keys, sums)}
        means["loss"] = checked_loss(means["loss"], model, epoch, batch)
        stats.add_means(round(total), means, round(unconverged), round(failures), bwd_seen > 0)

    return grads, record


def data_parallel_epoch(
    model,
    optimizer,
    opt_state,
    ds: _data.Dataset,
    config: dict,
    epoch: int,
    rng: Any,
    *,
    progress=None,
    dp: DataParallel,
):
    """One data-parallel pass over the training set: ``(model, opt_state, metrics)``.

    The same contract as ``implicitnet train``'s epoch (its batches, dropout draws and
    metrics), with each global batch split across the ranks of `dp`: every rank draws
    the dropout mask of the whole batch from the shared `rng` and keeps its rows, so
    the run equals a single-process one up to floating-point rounding. The metrics
    are those of the whole batch, identical on every rank, plus ``ranks``,
    ``comm_seconds`` and ``comm_bytes``.
    """
    comm0, bytes0 = dp.stats.seconds, dp.stats.bytes
    dp.check_replicas(model)  # same start on every rank (a resume included)
    model, opt_state, metrics = train_epoch(
        model,
        optimizer,
        opt_state,
        ds,
        config,
        epoch,
        rng,
        progress=progress,
        step=partial(_sharded_step, dp),
    )
    dp.check_replicas(model)
    comm = {"comm_seconds": dp.stats.seconds - comm0, "comm_bytes": dp.stats.bytes - bytes0}
    return model, opt_state, {**metrics, "ranks": dp.size, **comm}
