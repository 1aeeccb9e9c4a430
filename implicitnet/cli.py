"""The ``implicitnet`` command line.

``main(argv)`` returns an exit code: 0 success, 1 runtime failure, 2 usage error.
Metrics go to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from typing import Any

from . import __version__
from . import backends as _backends

__all__ = ["main", "main_entry"]


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit(2) itself
        raise _UsageError(f"{self.prog}: error: {message}")


_DEVICE_HELP = (
    "device of --backend torch: cpu, cuda, cuda:1, ... (default: PyTorch's default "
    "device); CuPy uses the current CUDA device"
)


def _cmd_info(ns) -> int:
    found = {}
    for name in _backends.BACKEND_NAMES:
        mod = _backends._load(name)
        if mod.available():
            found[name] = {"available": True, "devices": mod.devices()}
        else:
            found[name] = {"available": False, "reason": mod.unavailable_reason()}
    info = {
        "implicitnet": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backends": found,
    }
    if ns.json:
        print(json.dumps(info))
        return 0
    print(f"implicitnet {__version__} (Python {info['python']}, {info['platform']})")
    print("backends:")
    for name, b in found.items():
        if b["available"]:
            print(f"  {name:<18} yes   devices: {', '.join(b['devices'])}")
        else:
            print(f"  {name:<18} no    ({b['reason']})")
    return 0


# ----------------------------------------------------------------------------------
# train / evaluate
# ----------------------------------------------------------------------------------

_SOLVERS = ("anderson", "broyden", "picard", "newton_krylov")
_BACKWARDS = ("implicit", "phantom", "unrolled")
_MODELS = ("mlp", "conv", "transformer")
# Options that define the model, the data order or the optimizer: a resumed run takes
# them from the checkpoint, and refuses different values on the command line.
_FIXED_ON_RESUME = (
    "model",
    "width",
    "dropout",
    "batch_size",
    "lr",
    "schedule",
    "seed",
    "dtype",
    "limit",
    "classes",
    "heads",
    "seq_len",
    "jac_reg",
)


class _Failure(Exception):
    """A runtime failure reported as one line on stderr (exit code 1)."""


class _Usage(Exception):
    """A usage error found after parsing (exit code 2)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _add_train_parser(sub) -> None:
    from ._train import COMMON_DEFAULTS, DEFAULTS
    from ._train_seq import SEQ_DEFAULTS as seq

    mlp, conv = DEFAULTS["mlp"], DEFAULTS["conv"]
    p = sub.add_parser(
        "train",
        help="train a deep equilibrium classifier (default: MLP DEQ on the digits)",
        description=(
            "Train a deep equilibrium classifier on the handwritten digits embedded in "
            "scikit-learn (or on MNIST-format IDX files with --data). Prints one line "
            "per epoch (loss, train and test accuracy, mean forward iterations and "
            "residual, mean backward iterations, seconds) and a final summary; a "
            "progress bar goes to stderr."
        ),
    )
    g = p.add_argument_group("model and solver")
    g.add_argument(
        "--model",
        choices=_MODELS,
        default=None,
        help="architecture (default: mlp); transformer: a weight-tied transformer DEQ "
        "language model on characters (pydoc_data.topics, or the text file --data)",
    )
    g.add_argument(
        "--solver",
        choices=_SOLVERS,
        default=None,
        help=f"forward solver (default: {COMMON_DEFAULTS['solver']})",
    )
    g.add_argument(
        "--backward",
        choices=_BACKWARDS,
        default=None,
        help=f"how gradients flow through the solve (default: {COMMON_DEFAULTS['backward']})",
    )
    g.add_argument(
        "--rtol",
        type=_positive_float,
        default=None,
        help=f"forward (and adjoint) relative tolerance (default: {COMMON_DEFAULTS['rtol']})",
    )
    g.add_argument(
        "--maxiter",
        type=_positive_int,
        default=None,
        help=f"forward iteration limit (default: {COMMON_DEFAULTS['maxiter']})",
    )
    g.add_argument(
        "--width",
        type=_positive_int,
        default=None,
        help=f"state size: features (mlp, default {mlp['width']}), channels "
        f"(conv, default {conv['width']}) or model width (transformer, default {seq['width']})",
    )
    g.add_argument(
        "--dropout",
        type=_rate,
        default=None,
        help=f"variational dropout rate (default: mlp {mlp['dropout']}, conv {conv['dropout']})",
    )
    g.add_argument(
        "--heads",
        type=_positive_int,
        default=None,
        help=f"attention heads of the transformer (default: {seq['heads']})",
    )
    g.add_argument(
        "--seq-len",
        type=_positive_int,
        default=None,
        help=f"characters per training window of the transformer (default: {seq['seq_len']})",
    )
    g.add_argument(
        "--jac-reg",
        type=_nonnegative_float,
        default=None,
        metavar="WEIGHT",
        help="weight of the Jacobian regularisation ||df/dz||_F^2 added to the "
        f"transformer's loss (Bai, Koltun & Kolter, 2021; default: {seq['jac_reg']:g}; "
        "0: none)",
    )
    t = p.add_argument_group("training")
    t.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help=f"total number of epochs (default: mlp {mlp['epochs']}, conv {conv['epochs']}, "
        f"transformer {seq['epochs']}); "
        "with --resume, train up to this total (a cosine schedule is then re-planned over it)",
    )
    t.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help=f"samples per batch (default: {mlp['batch_size']}; transformer "
        f"{seq['batch_size']} windows)",
    )
    t.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help=f"peak learning rate (default: {mlp['lr']}; transformer {seq['lr']})",
    )
    t.add_argument(
        "--schedule",
        choices=("cosine", "constant"),
        default=None,
        help="learning-rate schedule of Adam (default: cosine decay over all epochs)",
    )
    t.add_argument("--seed", type=_seed, default=None, help="random seed (default: 0)")
    t.add_argument(
        "--backend",
        choices=_backends.BACKEND_NAMES,
        default=None,
        help="array library (default: numpy)",
    )
    t.add_argument("--device", default=None, help=_DEVICE_HELP)
    t.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default=None,
        help=f"default: {COMMON_DEFAULTS['dtype']}; transformer {seq['dtype']}",
    )
    io = p.add_argument_group("data, checkpoints and output")
    io.add_argument(
        "--data",
        metavar="PATH",
        default=None,
        help="directory of MNIST-format IDX files (train-images-idx3-ubyte, ...) "
        "instead of the embedded digits; with --model transformer, a UTF-8 text file "
        "instead of pydoc_data.topics",
    )
    io.add_argument(
        "--classes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="number of classes of the --data set (default: 10); a label outside "
        "0..N-1 is an error",
    )
    io.add_argument(
        "--save",
        metavar="PATH",
        default=None,
        help="checkpoint (.npz) written atomically after every epoch: parameters, "
        "optimizer state, configuration, epoch and random state; an existing file is "
        "refused unless it is the --resume checkpoint or --overwrite is given",
    )
    io.add_argument(
        "--resume",
        metavar="PATH",
        default=None,
        help="continue the run saved in this checkpoint (exactly as if uninterrupted), "
        "saving to the same file after every epoch unless --save names another",
    )
    io.add_argument(
        "--overwrite",
        action="store_true",
        help="let --save replace an existing file (which is otherwise refused)",
    )
    io.add_argument(
        "--plot", metavar="PATH", default=None, help="write a PNG of the curves (needs matplotlib)"
    )
    io.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    io.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    t.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel over MPI: run as `mpiexec -n N implicitnet train --distributed "
        "...`; each batch is split across the N ranks, gradients are all-reduced, rank 0 "
        "prints and saves (needs mpi4py: pip install 'implicitnet[distributed]')",
    )
    adv = p.add_argument_group("advanced (testing and quick runs)")
    adv.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="use only the first N training and N test samples",
    )
    adv.add_argument(
        "--stop-after",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop after N epochs of this invocation, as an interruption would "
        "(the schedule still spans --epochs); resume with --resume",
    )
    p.set_defaults(func=_cmd_train)


def _add_evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy and solver statistics of a saved model",
        description="Evaluate a checkpoint written by `implicitnet train --save` on its "
        "test set: accuracy, loss, forward iterations and residuals.",
    )
    p.add_argument("path", metavar="PATH", help="checkpoint written by `implicitnet train`")
    p.add_argument(
        "--data", metavar="DIR", default=None, help="IDX directory (default: as trained)"
    )
    p.add_argument("--backend", choices=_backends.BACKEND_NAMES, default=None)
    p.add_argument("--device", default=None, help=_DEVICE_HELP)
    p.add_argument("--solver", choices=_SOLVERS, default=None, help="default: as trained")
    p.add_argument("--rtol", type=_positive_float, default=None, help="default: as trained")
    p.add_argument("--maxiter", type=_positive_int, default=None, help="default: as trained")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_evaluate)


def _fmt_opt(value) -> str:
    return "null" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _config_from(ns, checkpoint_config: dict | None) -> dict:
    from ._train import COMMON_DEFAULTS, DEFAULTS

    given = {
        k: getattr(ns, k)
        for k in (
            "model",
            "width",
            "dropout",
            "solver",
            "backward",
            "rtol",
            "maxiter",
            "epochs",
            "batch_size",
            "lr",
            "schedule",
            "seed",
            "dtype",
            "backend",
            "data",
            "classes",
            "limit",
            "heads",
            "seq_len",
            "jac_reg",
        )
        if getattr(ns, k, None) is not None
    }
    if checkpoint_config is None:
        from ._train_seq import SEQ_DEFAULTS

        model = given.setdefault("model", "mlp")
        return {**COMMON_DEFAULTS, **DEFAULTS.get(model, SEQ_DEFAULTS), **given}
    config = dict(checkpoint_config)
    for key in _FIXED_ON_RESUME:
        if key in given and given[key] != config.get(key):
            flag = "--" + key.replace("_", "-")
            msg = (
                f"{flag} {_fmt_opt(given[key])} differs from the checkpoint's "
                f"{_fmt_opt(config.get(key))}; a resumed run keeps it"
            )
            raise _Usage(msg)
    config.update({k: v for k, v in given.items() if k not in _FIXED_ON_RESUME})
    return config


def _read_checkpoint(path: str) -> tuple[dict, Any]:
    """``(metadata, arrays)`` of a training checkpoint; one-line errors."""
    from . import nn
    from ._train import CHECKPOINT_FORMAT

    if not os.path.exists(path):
        raise _Failure(f"{path}: no such file")
    if os.path.isdir(path):
        raise _Failure(f"{path}: is a directory, not a checkpoint")
    try:
        meta = nn.load_metadata(path)
    except (OSError, ValueError) as exc:
        raise _Failure(str(exc)) from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise _Failure(f"{path}: not an implicitnet training checkpoint")
    for key in ("config", "epoch", "rng", "history", "in_shape", "num_classes"):
        if key not in meta:
            raise _Failure(f"{path}: corrupt checkpoint (no {key!r} entry)")
    if not isinstance(meta["config"], dict):
        raise _Failure(f"{path}: corrupt checkpoint (its 'config' entry is not a mapping)")
    return meta, None


def _backend_module(name: str, device: str | None = None):
    try:
        be = _backends.get_backend(name)
    except ValueError as exc:
        raise _Failure(str(exc)) from None
    if device is not None:
        if be.name != "torch":
            msg = f"--device applies to --backend torch (got --backend {name})"
            raise _Usage(msg)
        try:
            be.set_default_device(device)
        except (RuntimeError, ValueError) as exc:
            raise _Failure(f"--device {device}: {exc}") from None
    return be


def _load_data(config: dict, be):
    from ._train import load_data

    try:
        return load_data(config, backend=be)
    except (OSError, ValueError) as exc:
        raise _Failure(str(exc)) from None


def _load_corpus(config: dict, be):
    from ._train_seq import load_corpus

    try:
        return load_corpus(config, backend=be)
    except (OSError, ValueError) as exc:
        raise _Failure(str(exc)) from None


def _seq_windows(corpus, config: dict, split: str = "train") -> int:
    from ._train_seq import count_windows

    try:
        return count_windows(corpus, config, split)
    except ValueError as exc:
        raise _Failure(f"--seq-len {config['seq_len']}: {exc}") from None


def _train_epoch_lm(*args, **kwargs):
    from ._train_seq import train_epoch_lm

    return train_epoch_lm(*args, **kwargs)


def _evaluate_lm_splits(model, corpus, config: dict) -> dict:
    from ._train_seq import evaluate_lm

    valid = evaluate_lm(model, corpus.valid, config)
    test = evaluate_lm(model, corpus.test, config)
    return {
        "valid_bpc": valid["bpc"],
        "test_bpc": test["bpc"],
        "test_fwd_iter": test["fwd_iter"],
        "test_fwd_rel_residual": test["fwd_rel_residual"],
        "eval_seconds": valid["seconds"] + test["seconds"],
    }


def _seq_epoch_line(row: dict, epochs: int, rtol: float) -> str:
    width = len(str(epochs))
    head = (
        f"epoch {row['epoch']:>{width}}/{epochs}  train {row['train_bpc']:.3f}  "
        f"valid {row['valid_bpc']:.3f}  test {row['test_bpc']:.3f} bpc  "
    )
    seconds = row["seconds"] + row["eval_seconds"]
    return head + _solver_columns(row, rtol, seconds, "windows")


def _write_seq_plot(path: str, history: list, title: str) -> None:
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 7), layout="constrained")
    axes = fig.subplots(2, 2)
    ax = axes[0, 0]
    for key, label in (("train_bpc", "train"), ("valid_bpc", "validation"), ("test_bpc", "test")):
        ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
    ax.set_title("bits per character")
    ax.set_xlabel("epoch")
    ax.legend()
    ax = axes[0, 1]
    per_batch = [b for h in history for b in h.get("fwd_iter_batches", [])]
    ax.plot(range(1, len(per_batch) + 1), per_batch)
    ax.set_title("forward iterations per batch")
    ax.set_xlabel("batch")
    ax = axes[1, 0]
    ax.plot(epochs, [h["fwd_iter"] for h in history], marker="o", label="forward")
    bwd = [h["bwd_iter"] for h in history]
    if any(b is not None for b in bwd):
        ax.plot(epochs, [math.nan if b is None else b for b in bwd], marker="o", label="backward")
    ax.set_title("mean solver iterations")
    ax.set_xlabel("epoch")
    ax.legend()
    ax = axes[1, 1]
    ax.plot(epochs, [h["fwd_rel_residual"] for h in history], marker="o")
    ax.set_yscale("log")
    ax.set_title("mean relative forward residual")
    ax.set_xlabel("epoch")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise _Failure(f"--plot {path}: directory {directory} does not exist")
    try:
        fig.savefig(path, format="png", dpi=100)
    except OSError as exc:
        raise _Failure(f"--plot {path}: {exc.strerror or exc}") from None


class _Progress:
    """A tqdm bar over the samples of one epoch, on stderr (silent when disabled)."""

    def __init__(self, total: int, desc: str, disable):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, desc=desc, unit="sample", leave=False, file=sys.stderr, disable=disable
        )

    def __call__(self, n: int, figures: dict) -> None:
        self.bar.update(n)
        if figures:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in figures.items()}, refresh=False)

    def close(self) -> None:
        self.bar.close()


def _solver_columns(row: dict, rtol: float, seconds: float, units: str) -> str:
    # The forward residual is shown relative to the state's norm, beside the rtol it
    # is tested against (the absolute figure is in the --json output).
    bwd = "-" if row["bwd_iter"] is None else f"{row['bwd_iter']:.1f}"
    line = (
        f"fwd {row['fwd_iter']:4.1f} it (rel res {row['fwd_rel_residual']:.1e}, "
        f"rtol {rtol:.1e})  bwd {bwd:>4} it  {seconds:.1f} s"
    )
    notes = []
    if row.get("unconverged"):
        notes.append(f"{row['unconverged']} unconverged {units}")
    if row.get("bwd_failures"):
        notes.append(f"{row['bwd_failures']} adjoint solves unconverged")
    return line + (f"  [{'; '.join(notes)}]" if notes else "")


def _epoch_line(row: dict, epochs: int, rtol: float) -> str:
    width = len(str(epochs))
    head = (
        f"epoch {row['epoch']:>{width}}/{epochs}  loss {row['loss']:.4f}  "
        f"train {100 * row['train_acc']:5.1f}%  test {100 * row['test_acc']:5.1f}%  "
    )
    return head + _solver_columns(row, rtol, row["seconds"], "samples")


def _check_plot_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise _Failure(
            "--plot needs matplotlib, which is not installed: pip install 'implicitnet[plot]'"
        ) from None


def _write_plot(path: str, history: list, title: str) -> None:
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 7), layout="constrained")
    axes = fig.subplots(2, 2)
    ax = axes[0, 0]
    ax.plot(epochs, [h["loss"] for h in history], marker="o", label="train loss")
    ax.plot(epochs, [h["test_loss"] for h in history], marker="o", label="test loss")
    ax.set_yscale("log")
    ax.set_title("loss")
    ax.legend()
    ax = axes[0, 1]
    ax.plot(epochs, [100 * h["train_acc"] for h in history], marker="o", label="train")
    ax.plot(epochs, [100 * h["test_acc"] for h in history], marker="o", label="test")
    ax.set_title("accuracy (%)")
    ax.legend()
    ax = axes[1, 0]
    ax.plot(epochs, [h["fwd_iter"] for h in history], marker="o", label="forward")
    bwd = [h["bwd_iter"] for h in history]
    if any(b is not None for b in bwd):
        ax.plot(epochs, [math.nan if b is None else b for b in bwd], marker="o", label="backward")
    ax.set_title("mean solver iterations per sample")
    ax.legend()
    ax = axes[1, 1]
    ax.plot(epochs, [h["fwd_residual"] for h in history], marker="o")
    ax.set_yscale("log")
    ax.set_title("mean forward residual")
    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise _Failure(f"--plot {path}: directory {directory} does not exist")
    try:
        fig.savefig(path, format="png", dpi=100)
    except OSError as exc:
        raise _Failure(f"--plot {path}: {exc.strerror or exc}") from None


def _check_writable(path: str, flag: str) -> None:
    """Fail now, not after an epoch, if `path` cannot be written as a checkpoint or plot."""
    from .backends import _io

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise _Failure(f"{flag} {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise _Failure(f"{flag} {path}: is a directory")
    try:
        _io.check_writable(path)
    except OSError as exc:
        hint = "; give --save PATH to save elsewhere" if flag == "--resume" else ""
        raise _Failure(
            f"{flag} {path}: cannot write in {directory} ({exc.strerror or exc}){hint}"
        ) from None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _check_save_target(ns) -> None:
    """Refuse to replace an existing file with --save, unless asked to (exit code 2)."""
    path = ns.save
    if not os.path.lexists(path) or os.path.isdir(path) or ns.overwrite:
        return
    if ns.resume is not None and _same_file(path, ns.resume):
        return  # continuing a run in its own checkpoint
    q = shlex.quote(path)
    raise _Usage(
        f"--save {path}: the file already exists; to continue the run saved there, use "
        f"`implicitnet train --resume {q}`; to replace it, add --overwrite"
    )


def _resume_command(ns, checkpoint: str, save: str | None) -> str:
    """The command line that continues this run from `checkpoint`."""
    words = ["implicitnet", "train", "--resume", checkpoint]
    if save is not None and not _same_file(save, checkpoint):
        words += ["--save", save]
    for flag in ("json", "no_progress"):
        if getattr(ns, flag):
            words.append("--" + flag.replace("_", "-"))
    if ns.plot is not None:
        words += ["--plot", ns.plot]
    return shlex.join(words)


class _Stopped(Exception):
    """Training ended early (interruption, non-finite values): `status`, `message`."""

    def __init__(self, status: str, message: str, code: int):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _cmd_train(ns) -> int:
    from . import nn
    from ._train import (
        CHECKPOINT_FORMAT,
        build_model,
        build_optimizer,
        evaluate,
        train_epoch,
    )

    if ns.distributed and not hasattr(ns, "data_parallel"):
        # The same run on every MPI rank; `ns.data_parallel` is then its epoch function.
        from .distributed._cli import run_data_parallel

        return run_data_parallel(_cmd_train, ns, usage_errors=(_Usage,), failure=_Failure)
    meta = None
    if ns.overwrite and ns.save is None:
        raise _Usage("--overwrite replaces the file named by --save; give --save PATH")
    if ns.resume is not None:
        meta, _ = _read_checkpoint(ns.resume)
        # Checkpoints from before --classes: the model's class count is the one trained.
        meta["config"].setdefault("classes", meta["num_classes"])
    config = _config_from(ns, None if meta is None else meta["config"])
    seq = config["model"] == "transformer"
    if seq and float(config.get("dropout") or 0.0) != 0.0:
        raise _Usage("--dropout: the transformer model has no dropout")
    if seq and ns.distributed:
        raise _Usage("--distributed is for the image models; --model transformer runs alone")
    if seq and ns.classes is not None:
        raise _Usage("--classes is for image data; a text's symbols are its classes")
    if not seq and not config.get("data") and int(config.get("classes") or 10) != 10:
        raise _Usage(f"--classes {config['classes']}: the digits have 10 classes; it is for --data")
    # A resumed run goes on saving to its own checkpoint unless --save names another.
    save = ns.save if ns.save is not None else ns.resume
    if not getattr(ns, "writes", True):  # an MPI rank other than 0: rank 0 saves
        save = None
    save_flag = "--save" if ns.save is not None else "--resume"
    if ns.save is not None:
        _check_save_target(ns)
    if ns.plot is not None:
        _check_plot_available()
        _check_writable(ns.plot, "--plot")
    if save is not None:
        _check_writable(save, save_flag)
    be = _backend_module(config["backend"], ns.device)
    if seq:
        ds = _load_corpus(config, be)
        in_shape, num_classes = (int(config["seq_len"]),), ds.vocab_size
        n_train = _seq_windows(ds, config)
        n_test = _seq_windows(ds, config, "test")
    else:
        ds = _load_data(config, be)
        in_shape, num_classes = tuple(int(s) for s in ds.x_train.shape[1:]), ds.num_classes
        n_train, n_test = int(ds.x_train.shape[0]), int(ds.x_test.shape[0])
    if n_train == 0:
        raise _Failure("the training set is empty")
    try:
        rng = nn.generator(int(config["seed"]))
        if seq:
            from ._train_seq import build_lm

            model = build_lm(config, rng, vocab_size=num_classes, backend=be)
        else:
            model = build_model(config, rng, in_shape=in_shape, num_classes=num_classes, backend=be)
        optimizer = build_optimizer(config, n_train)
    except (TypeError, ValueError) as exc:
        raise _Usage(str(exc)) from None
    opt_state = optimizer.init(model)
    start, history = 0, []
    if meta is not None:
        if seq and meta.get("vocab") != ds.vocab:
            raise _Failure(
                f"{ns.resume}: the checkpoint was trained on text with another vocabulary "
                f"({meta['num_classes']} symbols; this text has {num_classes})"
            )
        if list(meta["in_shape"]) != list(in_shape) or meta["num_classes"] != num_classes:
            raise _Failure(
                f"{ns.resume}: the checkpoint was trained on inputs of shape "
                f"{tuple(meta['in_shape'])} with {meta['num_classes']} classes, the data "
                f"has {in_shape} and {num_classes}"
            )
        try:
            tree = nn.load(ns.resume, like={"model": model, "optimizer": opt_state})
            rng.bit_generator.state = meta["rng"]
            start = int(meta["epoch"])
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise _Failure(f"corrupt checkpoint: {exc}") from None
        model, opt_state = tree["model"], tree["optimizer"]
        history = list(meta["history"])
    epochs = int(config["epochs"])
    # The newest checkpoint of this run, and the epoch it holds.
    saved, saved_epoch = (ns.resume, start) if meta is not None else (None, 0)

    def summary(status: str, elapsed: float, message: str | None = None) -> dict:
        out = {
            "summary": True,
            "status": status,
            "epochs": history[-1]["epoch"] if history else 0,
            "of": epochs,
            "ran": len(history) - (len(meta["history"]) if meta is not None else 0),
            "test_acc": history[-1].get("test_acc") if history else None,
            "seconds": elapsed,
            "seed": config["seed"],
            "model": config["model"],
            "solver": config["solver"],
            "backward": config["backward"],
            "saved": saved,
            "saved_epoch": saved_epoch if saved is not None else None,
            "plot": ns.plot,
        }
        if seq:
            del out["test_acc"]
            out["test_bpc"] = history[-1].get("test_bpc") if history else None
            out["valid_bpc"] = history[-1].get("valid_bpc") if history else None
        if message is not None:
            out["message"] = message
        if saved is not None and saved_epoch < epochs and status != "diverged":
            out["resume"] = _resume_command(ns, saved, save)
        return out

    if start >= epochs:
        message = (
            f"nothing to do: {ns.resume} has already run {start} of {epochs} epochs "
            "(give a larger --epochs to train on)"
        )
        if ns.json:
            print(json.dumps(_jsonable(summary("nothing_to_do", 0.0, message))), flush=True)
        else:
            print(message, flush=True)
        return 0
    stop = epochs if ns.stop_after is None else min(epochs, start + ns.stop_after)
    disable = True if ns.no_progress else None
    if not ns.json and seq:
        print(
            f"training a transformer DEQ language model on {ds.name} ({n_train} train / "
            f"{n_test} test windows of {config['seq_len']} characters, {num_classes} "
            f"symbols, {model.num_parameters()} parameters): solver {config['solver']}, "
            f"backward {config['backward']}, rtol {config['rtol']:g}, jac-reg "
            f"{config['jac_reg']:g}, seed {config['seed']}, backend {config['backend']}"
            + (f"; resuming after epoch {start}" if start else ""),
            flush=True,
        )
    elif not ns.json:
        kind = "an MLP" if config["model"] == "mlp" else "a convolutional"
        data_name = config["data"] or "digits"
        print(
            f"training {kind} DEQ on {data_name} ({n_train} train / "
            f"{int(ds.x_test.shape[0])} test samples, {model.num_parameters()} parameters): "
            f"solver {config['solver']}, backward {config['backward']}, "
            f"rtol {config['rtol']:g}, seed {config['seed']}, backend {config['backend']}"
            + (f"; resuming after epoch {start}" if start else ""),
            flush=True,
        )
    t_run = time.perf_counter()
    epoch = start
    try:
        for epoch in range(start, stop):
            bar = _Progress(n_train, f"epoch {epoch + 1}/{epochs}", disable)
            try:
                step = _train_epoch_lm if seq else getattr(ns, "data_parallel", train_epoch)
                model, opt_state, metrics = step(
                    model, optimizer, opt_state, ds, config, epoch, rng, progress=bar
                )
            finally:
                bar.close()
            if seq:
                row = {"epoch": epoch + 1, **metrics, **_evaluate_lm_splits(model, ds, config)}
            else:
                test = evaluate(model, ds.x_test, ds.y_test)
                row = {
                    "epoch": epoch + 1,
                    **metrics,
                    "test_acc": test["accuracy"],
                    "test_loss": test["loss"],
                    "test_fwd_iter": test["fwd_iter"],
                }
                row["seconds"] = metrics["seconds"] + test["seconds"]
            history.append(row)
            if ns.json:
                print(json.dumps(_jsonable(row)), flush=True)
            elif seq:
                print(_seq_epoch_line(row, epochs, config["rtol"]), flush=True)
            else:
                print(_epoch_line(row, epochs, config["rtol"]), flush=True)
            if save is not None:
                meta_out = {
                    "format": CHECKPOINT_FORMAT,
                    "implicitnet": __version__,
                    "config": config,
                    "epoch": epoch + 1,
                    "rng": rng.bit_generator.state,
                    "history": _jsonable(history),
                    "in_shape": list(in_shape),
                    "num_classes": num_classes,
                }
                if seq:
                    meta_out["vocab"] = ds.vocab
                try:
                    nn.save(save, {"model": model, "optimizer": opt_state}, metadata=meta_out)
                except OSError as exc:
                    message = f"{save_flag} {save}: {exc.strerror or exc}"
                    if ns.json:
                        out = summary("failed", time.perf_counter() - t_run, message)
                        print(json.dumps(_jsonable(out)), flush=True)
                    raise _Failure(message) from None
                saved, saved_epoch = save, epoch + 1
    except (KeyboardInterrupt, FloatingPointError) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        if interrupted:
            status, what = "interrupted", f"interrupted in epoch {epoch + 1} of {epochs}"
        else:  # resuming would diverge again: point at the last finite state instead
            status, what = "diverged", f"error: {exc} (try a smaller --lr)"
        if save is None:
            where = "nothing was saved (no --save)"
        elif saved is None:
            where = "no epoch had finished, so nothing was saved" + (
                ": start again with the same command" if interrupted else ""
            )
        elif interrupted:
            where = (
                f"{saved} holds epoch {saved_epoch}; resume with "
                f"`{_resume_command(ns, saved, save)}`"
            )
        else:
            where = f"{saved} holds epoch {saved_epoch}, the last finite state"
        message = f"{what}; {where}"
        if ns.json:
            out = summary(status, time.perf_counter() - t_run, message)
            print(json.dumps(_jsonable(out)), flush=True)
        raise _Stopped(status, message, 1) from None
    elapsed = time.perf_counter() - t_run
    if ns.plot is not None and history and seq:
        _write_seq_plot(
            ns.plot,
            history,
            f"transformer DEQ, {config['solver']} / {config['backward']}, "
            f"jac-reg {config['jac_reg']:g}, seed {config['seed']}",
        )
    elif ns.plot is not None and history:
        _write_plot(
            ns.plot,
            history,
            f"{config['model']} DEQ, {config['solver']} / {config['backward']}, "
            f"seed {config['seed']}",
        )
    done = history[-1]["epoch"] if history else 0
    result = summary("done" if done == epochs else "stopped", elapsed)
    if ns.json:
        print(json.dumps(_jsonable(result)), flush=True)
    else:
        extra = []
        if save:
            extra.append(f"saved to {save}")
        if ns.plot:
            extra.append(f"plot in {ns.plot}")
        status = "done" if done == epochs else f"stopped after epoch {done} of {epochs}"
        if seq:
            print(
                f"{status}: test {result['test_bpc']:.3f} bits per character after {done} "
                f"epoch{'' if done == 1 else 's'} ({result['ran']} in this run, "
                f"{elapsed:.1f} s), seed {config['seed']}"
                + (f"; {', '.join(extra)}" if extra else ""),
                flush=True,
            )
        else:
            print(
                f"{status}: test accuracy {100 * result['test_acc']:.2f}% after {done} "
                f"epoch{'' if done == 1 else 's'} "
                f"({result['ran']} in this run, {elapsed:.1f} s), seed {config['seed']}"
                + (f"; {', '.join(extra)}" if extra else ""),
                flush=True,
            )
        if "resume" in result:
            print(f"continue with: {result['resume']}", flush=True)
    return 0


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _cmd_evaluate(ns) -> int:
    from . import nn
    from ._train import build_model, build_optimizer, evaluate

    meta, _ = _read_checkpoint(ns.path)
    config = dict(meta["config"])
    if config.get("model") == "transformer":
        return _evaluate_seq(ns, meta, config)
    config.setdefault("classes", meta["num_classes"])
    for key in ("data", "backend", "solver", "rtol", "maxiter"):
        if getattr(ns, key) is not None:
            config[key] = getattr(ns, key)
    be = _backend_module(config["backend"], ns.device)
    ds = _load_data(config, be)
    in_shape = tuple(int(s) for s in ds.x_test.shape[1:])
    if list(meta["in_shape"]) != list(in_shape) or meta["num_classes"] != ds.num_classes:
        raise _Failure(
            f"{ns.path}: the model takes inputs of shape {tuple(meta['in_shape'])} with "
            f"{meta['num_classes']} classes, the data has {in_shape} and {ds.num_classes}"
        )
    try:
        model = build_model(
            config, nn.generator(0), in_shape=in_shape, num_classes=ds.num_classes, backend=be
        )
        opt_state = build_optimizer(config, 1).init(model)
        tree = nn.load(ns.path, like={"model": model, "optimizer": opt_state})
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise _Failure(f"corrupt checkpoint: {exc}") from None
    model = tree["model"]
    out = evaluate(model, ds.x_test, ds.y_test)
    out = {"path": ns.path, "epoch": meta["epoch"], **out}
    if ns.json:
        print(json.dumps(_jsonable(out)))
        return 0
    print(
        f"{ns.path}: {config['model']} DEQ after {meta['epoch']} epochs, "
        f"{out['samples']} test samples"
    )
    print(
        f"test accuracy {100 * out['accuracy']:.2f}%  loss {out['loss']:.4f}  "
        f"fwd {out['fwd_iter']:.1f} it (mean rel res {out['fwd_rel_residual']:.1e}, max "
        f"abs res {out['max_residual']:.1e}, {out['unconverged']} unconverged)  "
        f"solver {config['solver']} rtol {config['rtol']:g}  {out['seconds']:.2f} s"
    )
    return 0


def _load_lm(path: str, meta: dict, config: dict, be):
    """The language model of a transformer checkpoint."""
    from . import nn
    from ._train import build_optimizer
    from ._train_seq import build_lm

    if not isinstance(meta.get("vocab"), str) or len(meta["vocab"]) != meta["num_classes"]:
        raise _Failure(f"{path}: corrupt checkpoint (no vocabulary)")
    try:
        model = build_lm(config, nn.generator(0), vocab_size=meta["num_classes"], backend=be)
        opt_state = build_optimizer(config, 1).init(model)
        tree = nn.load(path, like={"model": model, "optimizer": opt_state})
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise _Failure(f"corrupt checkpoint: {exc}") from None
    return tree["model"]


def _evaluate_seq(ns, meta: dict, config: dict) -> int:
    from ._train_seq import evaluate_lm

    for key in ("data", "backend", "solver", "rtol", "maxiter"):
        if getattr(ns, key) is not None:
            config[key] = getattr(ns, key)
    be = _backend_module(config["backend"])
    corpus = _load_corpus(config, be)
    if corpus.vocab != meta.get("vocab"):
        raise _Failure(f"{ns.path}: the text's vocabulary differs from the model's")
    model = _load_lm(ns.path, meta, config, be)
    out = evaluate_lm(model, corpus.test, config)
    out = {"path": ns.path, "epoch": meta["epoch"], **out}
    if ns.json:
        print(json.dumps(_jsonable(out)))
        return 0
    print(
        f"{ns.path}: transformer DEQ after {meta['epoch']} epochs, {out['windows']} test "
        f"windows of {corpus.name}"
    )
    print(
        f"test {out['bpc']:.3f} bits per character  fwd {out['fwd_iter']:.1f} it (mean rel "
        f"res {out['fwd_rel_residual']:.1e}, {out['unconverged']} unconverged)  solver "
        f"{config['solver']} rtol {config['rtol']:g}  {out['seconds']:.2f} s"
    )
    return 0


def _add_sample_parser(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="generate text with a trained transformer language model",
        description="Continue a prompt with characters drawn one at a time from a "
        "checkpoint written by `implicitnet train --model transformer --save`.",
    )
    p.add_argument("path", metavar="CHECKPOINT", help="transformer checkpoint")
    p.add_argument("--prompt", required=True, help="text to continue (symbols of the corpus)")
    p.add_argument(
        "--length", type=_positive_int, default=200, help="characters to generate (default: 200)"
    )
    p.add_argument(
        "--temperature",
        type=_nonnegative_float,
        default=1.0,
        help="softmax temperature; 0 picks the most likely character (default: 1)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    p.add_argument("--backend", choices=_backends.BACKEND_NAMES, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_sample)


def _cmd_sample(ns) -> int:
    from ._train_seq import sample_text

    meta, _ = _read_checkpoint(ns.path)
    config = dict(meta["config"])
    if config.get("model") != "transformer":
        raise _Failure(f"{ns.path}: a {config.get('model')} classifier, not a language model")
    if ns.backend is not None:
        config["backend"] = ns.backend
    be = _backend_module(config["backend"])
    model = _load_lm(ns.path, meta, config, be)
    try:
        text = sample_text(
            model,
            meta["vocab"],
            ns.prompt,
            ns.length,
            context=int(config["seq_len"]),
            temperature=ns.temperature,
            seed=ns.seed,
        )
    except ValueError as exc:
        raise _Usage(str(exc).replace("`prompt`", "--prompt")) from None
    if ns.json:
        out = {"prompt": ns.prompt, "text": text, "temperature": ns.temperature, "seed": ns.seed}
        print(json.dumps(out))
    else:
        print(ns.prompt + text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="implicitnet", description="Implicit layers on the array API.")
    parser.add_argument("--version", action="version", version=f"implicitnet {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an unexpected error"
    )
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    p_info = sub.add_parser("info", help="version, backends found and their devices")
    p_info.add_argument("--json", action="store_true", help="print one JSON object")
    p_info.set_defaults(func=_cmd_info)
    _add_train_parser(sub)
    _add_evaluate_parser(sub)
    _add_sample_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with `argv` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    if getattr(ns, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return ns.func(ns)
    except _Usage as exc:
        print(f"implicitnet {ns.command}: error: {exc}", file=sys.stderr)
        return 2
    except _Failure as exc:
        print(f"implicitnet {ns.command}: error: {exc}", file=sys.stderr)
        return 1
    except _Stopped as exc:
        print(f"implicitnet {ns.command}: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"implicitnet {ns.command}: interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # stdout closed early (e.g. piped into `head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:
        if ns.debug:
            raise
        print(
            f"implicitnet {ns.command}: unexpected error: {type(exc).__name__}: {exc} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
