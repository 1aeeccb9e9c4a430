"""Host-side numeric comparison used by :func:`implicitnet.testing.assert_close`."""

from __future__ import annotations

import numpy as np


def allclose_report(a, d, *, rtol: float, atol: float) -> str | None:
    """``None`` if NumPy arrays `a` and `d` are close, else a description of the worst miss."""
    a = np.asarray(a)
    d = np.asarray(d)
    a = a.astype(np.float64) if a.dtype.kind == "f" else a
    d = d.astype(np.float64) if d.dtype.kind == "f" else d
    if not np.array_equal(np.isfinite(a), np.isfinite(d)):
        return f"non-finite values differ:\nactual={a}\ndesired={d}"
    err = np.abs(a - d)
    tol = atol + rtol * np.abs(d)
    bad = ~(err <= tol) & np.isfinite(d)
    if not np.any(bad):
        return None
    idx = np.unravel_index(np.argmax(np.where(bad, err - tol, -np.inf)), a.shape)
    rel = err / np.maximum(np.abs(d), np.finfo(np.float64).tiny)
    return (
        f"not close (rtol={rtol}, atol={atol}): {int(np.sum(bad))} of {a.size} elements "
        f"differ; worst at {tuple(int(i) for i in idx)}: actual={a[idx]!r}, "
        f"desired={d[idx]!r}; max abs err {err.max():.3e}, max rel err {rel.max():.3e}"
    )
