"""``implicitnet train --distributed``: the command's run on every MPI rank."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from .distributed import DataParallel, data_parallel_epoch

__all__ = ["run_data_parallel"]


def run_data_parallel(
    command: Callable[[Any], int],
    ns: Any,
    *,
    usage_errors: tuple = (),
    failure: type[Exception] = RuntimeError,
) -> int:
    """Run the train `command` on this rank as one of a data-parallel job.

    Every rank runs the same command on the same configuration; the hook set on
    `ns` (``ns.data_parallel``: the epoch function) splits each batch across the
    ranks. Rank 0 alone prints, draws the progress bar, plots and writes
    checkpoints (atomically); the others are silent. A failure on any rank ends
    the whole job at once (``MPI_Abort``), so no rank is left waiting for a
    collective that will never come.
    """
    try:
        dp = DataParallel()
    except ImportError as exc:  # no mpi4py: the command's one-line runtime failure
        raise failure(str(exc)) from None
    ns.data_parallel = partial(data_parallel_epoch, dp=dp)
    if dp.rank != 0:
        ns.save = None
        ns.overwrite = False
        ns.writes = False  # not even to the checkpoint being resumed
        ns.plot = None
        ns.no_progress = True
        sys.stdout = open(os.devnull, "w")  # for the life of the process
    elif not ns.json:
        print(f"data-parallel over {dp.size} MPI rank(s)", file=sys.stderr, flush=True)
    try:
        rc = command(ns)
    except BaseException as exc:
        if dp.size == 1:
            raise
        code = 2 if isinstance(exc, usage_errors) else 1
        print(
            f"implicitnet {ns.command} (rank {dp.rank} of {dp.size}): error: "
            f"{type(exc).__name__}: {exc}; ending the job",
            file=sys.stderr,
            flush=True,
        )
        dp.comm.Abort(code)
        raise  # pragma: no cover - Abort does not return
    dp.barrier()  # rank 0 may still be writing the last checkpoint
    return rc
