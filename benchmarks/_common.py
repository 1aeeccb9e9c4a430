"""Helpers shared by the benchmark scripts (not a benchmark itself).

The scripts run as ``python benchmarks/NAME.py``, which puts this folder first on
``sys.path``: they import this module as ``_common``.
"""

from __future__ import annotations

import gc
import tracemalloc


def traced_peak(fn) -> int:
    """Peak bytes that ``fn()`` allocates above what was allocated before (``tracemalloc``).

    ``tracemalloc`` sees Python objects and NumPy's buffers (not a GPU's memory).
    """
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    del out
    return peak


def torchdeq_layer(b_solver: str, *, f_max_iter: int, b_max_iter: int, tol: float):
    """torchdeq's DEQ as the comparisons run it: Anderson forward, implicit backward.

    Both solves stop on the relative residual `tol`; the backward one uses `b_solver`.
    """
    from torchdeq import get_deq  # optional: the callers check that it is importable

    return get_deq(
        core="sliced",
        ift=True,
        f_solver="anderson",
        b_solver=b_solver,
        f_max_iter=f_max_iter,
        b_max_iter=b_max_iter,
        f_tol=tol,
        b_tol=tol,
        f_stop_mode="rel",
        b_stop_mode="rel",
    )
