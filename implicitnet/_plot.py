"""The curves of a training run (``implicitnet train --plot``), as a PNG.

Each model kind draws four panels from the history of epoch rows; what differs is the
list of panels. matplotlib is an optional dependency (``pip install 'implicitnet[plot]'``),
imported only when a figure is drawn.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["check_available", "write_classifier_plot", "write_language_model_plot"]


@dataclass(frozen=True)
class _Panel:
    """One axes: `curves` are ``(label, ys)`` against `xs`; ``label=None`` needs no legend."""

    title: str
    xs: Sequence
    curves: Sequence[tuple[str | None, Sequence]]
    log: bool = False
    xlabel: str = "epoch"
    marker: str | None = "o"


def check_available() -> None:
    """Raise ``ImportError`` with the install command if matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401 - optional dependency, checked before training
    except ImportError:
        msg = "--plot needs matplotlib, which is not installed: pip install 'implicitnet[plot]'"
        raise ImportError(msg) from None


def _iterations(history: list, epochs: list, title: str) -> _Panel:
    # Forward iterations, and backward ones when the adjoint reported any.
    curves = [("forward", [h["fwd_iter"] for h in history])]
    bwd = [h["bwd_iter"] for h in history]
    if any(b is not None for b in bwd):
        curves.append(("backward", [math.nan if b is None else b for b in bwd]))
    return _Panel(title, epochs, curves)


def _write(path: str, panels: Sequence[_Panel], title: str) -> None:
    from matplotlib.figure import Figure  # optional dependency: only when plotting

    fig = Figure(figsize=(10, 7), layout="constrained")
    for ax, panel in zip(fig.subplots(2, 2).flat, panels):
        for label, ys in panel.curves:
            ax.plot(panel.xs, ys, marker=panel.marker, label=label)
        if panel.log:
            ax.set_yscale("log")
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        if any(label is not None for label, _ in panel.curves):
            ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"directory {directory} does not exist", path)
    fig.savefig(path, format="png", dpi=100)


def _curve(history: list, key: str, label: str | None = None, scale: float = 1.0) -> tuple:
    return label, [scale * h[key] for h in history]


def write_classifier_plot(path: str, history: list, title: str) -> None:
    """Loss, accuracy, solver iterations and forward residual per epoch (``OSError``)."""
    epochs = [h["epoch"] for h in history]
    loss = [_curve(history, "loss", "train loss"), _curve(history, "test_loss", "test loss")]
    accuracy = [_curve(history, f"{s}_acc", s, 100.0) for s in ("train", "test")]
    panels = (
        _Panel("loss", epochs, loss, log=True),
        _Panel("accuracy (%)", epochs, accuracy),
        _iterations(history, epochs, "mean solver iterations per sample"),
        _Panel("mean forward residual", epochs, [_curve(history, "fwd_residual")], log=True),
    )
    _write(path, panels, title)


def write_language_model_plot(path: str, history: list, title: str) -> None:
    """Bits per character, iterations per batch and per epoch, relative residual."""
    epochs = [h["epoch"] for h in history]
    per_batch = [b for h in history for b in h.get("fwd_iter_batches", [])]
    splits = (("train", "train"), ("valid", "validation"), ("test", "test"))
    bpc = [_curve(history, f"{s}_bpc", label) for s, label in splits]
    batches = range(1, len(per_batch) + 1)
    residual = [_curve(history, "fwd_rel_residual")]
    _write(
        path,
        (
            _Panel("bits per character", epochs, bpc),
            _Panel(
                "forward iterations per batch",
                batches,
                [(None, per_batch)],
                xlabel="batch",
                marker=None,
            ),
            _iterations(history, epochs, "mean solver iterations"),
            _Panel("mean relative forward residual", epochs, residual, log=True),
        ),
        title,
    )
