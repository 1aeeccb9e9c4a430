"""The checkpoint of ``implicitnet train``: one ``.npz`` file per run.

A checkpoint holds the model and the optimizer state as named arrays (see
:func:`implicitnet.nn.save`) and one JSON metadata entry, which is enough to rebuild the
run and continue it exactly as if it had not stopped:

``format``
    :data:`FORMAT`, so that other ``.npz`` files are refused.
``implicitnet``
    The version that wrote it.
``config``
    The training configuration (a JSON dict: model, solver, data, seed, ...).
``epoch``
    The number of epochs done.
``rng``
    The state of the dropout generator after that epoch.
``history``
    One row of metrics per epoch done.
``in_shape``, ``num_classes``
    The shape of one input sample and the number of classes the model was built for.
``vocab``
    The symbols of the text (language models only).

Writing is atomic: the file is written in full to a temporary file of this process
beside it (``.NAME.HOST-PID.partial``), flushed and renamed over the target, so an
interrupted save leaves the previous checkpoint intact; a temporary file left by a
killed process is removed by the next save of the same path. Every error here is a
:class:`CheckpointError` (or ``OSError`` while writing) with a one-line message.
"""

from __future__ import annotations

import math
import os
from typing import Any

from . import nn
from ._version import __version__
from .backends import host

__all__ = [
    "FORMAT",
    "CheckpointError",
    "check_fits",
    "check_writable",
    "jsonable",
    "metadata",
    "read_metadata",
    "restore",
    "write",
]

FORMAT = "implicitnet-train/1"

# The metadata entries every checkpoint has (``vocab`` only those of language models).
_REQUIRED = ("config", "epoch", "rng", "history", "in_shape", "num_classes")


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not fit; the message is one line."""


def jsonable(value: Any) -> Any:
    """`value` with every non-finite float replaced by ``None`` (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def read_metadata(path: str) -> dict:
    """The metadata of the training checkpoint at `path`, checked to be complete.

    Raises
    ------
    CheckpointError
        If `path` does not exist, is a directory, is not a readable ``.npz`` file,
        is not a training checkpoint, or lacks one of the entries listed above.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint")
    try:
        meta = nn.load_metadata(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(str(exc)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an implicitnet training checkpoint")
    for key in _REQUIRED:
        if key not in meta:
            raise CheckpointError(f"{path}: corrupt checkpoint (no {key!r} entry)")
    if not isinstance(meta["config"], dict):
        raise CheckpointError(f"{path}: corrupt checkpoint (its 'config' entry is not a mapping)")
    if not isinstance(meta["epoch"], int) or not isinstance(meta["history"], list):
        raise CheckpointError(f"{path}: corrupt checkpoint (its 'epoch' or 'history' entry)")
    vocab = meta.get("vocab")
    if meta["config"].get("model") == "transformer" and not (
        isinstance(vocab, str) and len(vocab) == meta["num_classes"]
    ):
        raise CheckpointError(f"{path}: corrupt checkpoint (no vocabulary)")
    # Checkpoints from before --classes: the model's class count is the one trained.
    meta["config"].setdefault("classes", meta["num_classes"])
    # From before --warmup and --clip-norm: the run had neither.
    meta["config"].setdefault("warmup", 0)
    meta["config"].setdefault("clip_norm", 0.0)
    return meta


def check_fits(
    meta: dict, path: str, in_shape: tuple, num_classes: int, *, vocab: str | None = None
) -> None:
    """Raise :class:`CheckpointError` unless the data fit the model saved at `path`.

    The data fit when their sample shape and number of classes are those the model was
    built for, and (for text) when their vocabulary is the model's.
    """
    if vocab is not None and meta.get("vocab") != vocab:
        raise CheckpointError(
            f"{path}: the checkpoint was trained on text with another vocabulary "
            f"({meta['num_classes']} symbols; this text has {num_classes})"
        )
    if list(meta["in_shape"]) != list(in_shape) or meta["num_classes"] != num_classes:
        raise CheckpointError(
            f"{path}: the model takes inputs of shape {tuple(meta['in_shape'])} with "
            f"{meta['num_classes']} classes, the data has {tuple(in_shape)} and {num_classes}"
        )


def metadata(
    config: dict,
    *,
    epoch: int,
    rng: Any,
    history: list,
    in_shape: tuple,
    num_classes: int,
    vocab: str | None = None,
) -> dict:
    """The metadata entry of a checkpoint after `epoch` epochs (see the module's notes)."""
    meta = {
        "format": FORMAT,
        "implicitnet": __version__,
        "config": config,
        "epoch": epoch,
        "rng": rng.bit_generator.state,
        "history": jsonable(history),
        "in_shape": list(in_shape),
        "num_classes": num_classes,
    }
    if vocab is not None:
        meta["vocab"] = vocab
    return meta


def write(path: str, model: Any, opt_state: Any, meta: dict) -> None:
    """Save `model`, `opt_state` and `meta` to `path`, atomically (``OSError`` on failure)."""
    nn.save(path, {"model": model, "optimizer": opt_state}, metadata=meta)


def restore(
    path: str, meta: dict, model: Any, opt_state: Any, *, rng: Any = None
) -> tuple[Any, Any]:
    """The model and optimizer state saved at `path`, shaped like `model`, `opt_state`.

    With `rng` (a NumPy ``Generator``), its state becomes the one saved in `meta`, so a
    resumed run draws what an uninterrupted one would have.

    Raises
    ------
    CheckpointError
        If the arrays do not match the model and optimizer built from the checkpoint's
        configuration, or the saved generator state is not one (``corrupt checkpoint: ...``).
    """
    try:
        tree = nn.load(path, like={"model": model, "optimizer": opt_state})
        if rng is not None:
            rng.bit_generator.state = meta["rng"]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"corrupt checkpoint: {exc}") from None
    return tree["model"], tree["optimizer"]


def check_writable(path: str) -> None:
    """Raise ``OSError`` now if a save of `path` could not write its temporary file."""
    host.check_writable(path)
