"""The ``implicitnet`` command line.

``main(argv)`` returns an exit code: 0 success, 1 runtime failure, 2 usage error.
Metrics go to stdout, diagnostics to stderr. The commands are glue: the training loops
are in ``_train.py`` (image classifiers) and ``_train_seq.py`` (the transformer language
model), the checkpoint format in ``_checkpoint.py`` and the figures in ``_plot.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shlex
import sys
import time
from typing import Any

from tqdm import tqdm

from . import __version__, _checkpoint, _plot, _train, _train_seq, nn, solvers
from . import backends as _backends
from ._adjoint import available_adjoints
from ._checkpoint import CheckpointError
from ._checkpoint import jsonable as _jsonable
from ._cli_distributed import run_data_parallel
from ._validate import check_int, check_nonnegative, check_positive, check_real

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
        mod = _backends.load_backend(name)
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
    "warmup",
    "clip_norm",
    "seed",
    "dtype",
    "limit",
    "classes",
    "heads",
    "seq_len",
    "jac_reg",
)
# Options that resume or evaluate a run on other terms than it was trained with.
_CHANGEABLE = ("solver", "backward", "rtol", "maxiter", "epochs", "backend", "data")


class _Failure(Exception):
    """A runtime failure reported as one line on stderr (exit code 1)."""


class _Usage(Exception):
    """A usage error found after parsing (exit code 2)."""


def _parse(text: str, convert, check, expected: str):
    """`text` converted to a number and checked (a check of :mod:`implicitnet._validate`);
    an argparse usage error saying what was `expected` if either fails."""
    try:
        return check(convert(text), "value")
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _positive_int(text: str) -> int:
    return _parse(text, int, functools.partial(check_int, minimum=1), "a positive integer")


def _nonnegative_int(text: str) -> int:
    return _parse(text, int, functools.partial(check_int, minimum=0), "an integer >= 0")


def _nonnegative_float(text: str) -> float:
    return _parse(text, float, check_nonnegative, "a number >= 0")


def _positive_float(text: str) -> float:
    return _parse(text, float, check_positive, "a positive number")


def _rate(text: str) -> float:
    unit = functools.partial(check_real, low=0.0, high=1.0, high_open=True)
    return _parse(text, float, unit, "a number in [0, 1)")


def _seed(text: str) -> int:
    return _parse(text, int, functools.partial(check_int, minimum=0), "a non-negative integer")


# The commands: ``(summary, description)`` of each, for ``implicitnet -h`` and its own -h.
_COMMANDS = {
    "info": ("version, backends found and their devices", None),
    "train": (
        "train a deep equilibrium classifier (default: MLP DEQ on the digits)",
        "Train a deep equilibrium classifier on the handwritten digits embedded in "
        "scikit-learn (or on MNIST-format IDX files with --data). Prints one line "
        "per epoch (loss, train and test accuracy, mean forward iterations and "
        "residual, mean backward iterations, seconds) and a final summary; a "
        "progress bar goes to stderr.",
    ),
    "evaluate": (
        "accuracy and solver statistics of a saved model",
        "Evaluate a checkpoint written by `implicitnet train --save` on its "
        "test set: accuracy, loss, forward iterations and residuals.",
    ),
    "sample": (
        "generate text with a trained transformer language model",
        "Continue a prompt with characters drawn one at a time from a "
        "checkpoint written by `implicitnet train --model transformer --save`.",
    ),
}


def _command(sub, name: str) -> argparse.ArgumentParser:
    summary, description = _COMMANDS[name]
    return sub.add_parser(name, help=summary, description=description)


def _solver_choices() -> list[str]:
    # The solver registry, read when the parser is built (so a method registered
    # before `main` is offered too).
    return solvers.available_methods()


def _train_help() -> dict[str, str]:
    """The help of the train options whose text names a default."""
    common, seq = _train.COMMON_DEFAULTS, _train_seq.SEQ_DEFAULTS
    mlp, conv = _train.DEFAULTS["mlp"], _train.DEFAULTS["conv"]
    return {
        "model": "architecture (default: mlp); transformer: a weight-tied transformer DEQ "
        "language model on characters (pydoc_data.topics, or the text file --data)",
        "solver": f"forward solver, any registered method (default: {common['solver']}); "
        "the scipy: adapters need --backend numpy",
        "backward": f"how gradients flow through the solve (default: {common['backward']})",
        "rtol": f"forward (and adjoint) relative tolerance (default: {common['rtol']})",
        "maxiter": f"forward iteration limit (default: {common['maxiter']})",
        "width": f"state size: features (mlp, default {mlp['width']}), channels "
        f"(conv, default {conv['width']}) or model width (transformer, default {seq['width']})",
        "dropout": f"variational dropout rate (default: mlp {mlp['dropout']}, "
        f"conv {conv['dropout']})",
        "heads": f"attention heads of the transformer (default: {seq['heads']})",
        "seq_len": f"characters per training window of the transformer (default: {seq['seq_len']})",
        "jac_reg": "weight of the Jacobian regularisation ||df/dz||_F^2 added to the "
        f"transformer's loss (Bai, Koltun & Kolter, 2021; default: {seq['jac_reg']:g}; "
        "0: none)",
        "epochs": f"total number of epochs (default: mlp {mlp['epochs']}, conv "
        f"{conv['epochs']}, transformer {seq['epochs']}); with --resume, train up to this "
        "total (a cosine schedule is "
        "then re-planned over it)",
        "batch_size": f"samples per batch (default: {mlp['batch_size']}; transformer "
        f"{seq['batch_size']} windows)",
        "lr": f"peak learning rate (default: {mlp['lr']}; transformer {seq['lr']})",
        "schedule": "learning-rate schedule of Adam (default: cosine decay over all epochs)",
        "warmup": "steps of linear learning-rate warm-up before the schedule (default: "
        f"{common['warmup']})",
        "clip_norm": "clip the gradients to this global norm before each step (default: "
        f"{common['clip_norm']:g}: no clipping)",
        "data": "directory of MNIST-format IDX files (train-images-idx3-ubyte, ...) "
        "instead of the embedded digits; with --model transformer, a UTF-8 text file "
        "instead of pydoc_data.topics",
        "classes": "number of classes of the --data set (default: 10); a label outside "
        "0..N-1 is an error",
        "save": "checkpoint (.npz) written atomically after every epoch: parameters, "
        "optimizer state, configuration, epoch and random state; an existing file is "
        "refused unless it is the --resume checkpoint or --overwrite is given",
        "resume": "continue the run saved in this checkpoint (exactly as if uninterrupted), "
        "saving to the same file after every epoch unless --save names another",
        "distributed": "data-parallel over MPI: run as `mpiexec -n N implicitnet train "
        "--distributed ...`; each batch is split across the N ranks, gradients are "
        "all-reduced, rank 0 prints and saves (needs mpi4py: pip install "
        "'implicitnet[distributed]')",
        "stop_after": "stop after N epochs of this invocation, as an interruption would "
        "(the schedule still spans --epochs); resume with --resume",
    }


def _add_train_parser(sub) -> None:
    h = _train_help()
    p = _command(sub, "train")
    # Every default is None: the configuration fills in the model's defaults, or the
    # values saved in the checkpoint of --resume.
    g = p.add_argument_group("model and solver")
    g.add_argument("--model", choices=_MODELS, help=h["model"])
    g.add_argument("--solver", choices=_solver_choices(), help=h["solver"])
    g.add_argument("--backward", choices=available_adjoints(), help=h["backward"])
    g.add_argument("--rtol", type=_positive_float, help=h["rtol"])
    g.add_argument("--maxiter", type=_positive_int, help=h["maxiter"])
    g.add_argument("--width", type=_positive_int, help=h["width"])
    g.add_argument("--dropout", type=_rate, help=h["dropout"])
    g.add_argument("--heads", type=_positive_int, help=h["heads"])
    g.add_argument("--seq-len", type=_positive_int, help=h["seq_len"])
    g.add_argument("--jac-reg", type=_nonnegative_float, metavar="WEIGHT", help=h["jac_reg"])
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=_positive_int, help=h["epochs"])
    t.add_argument("--batch-size", type=_positive_int, help=h["batch_size"])
    t.add_argument("--lr", type=_positive_float, help=h["lr"])
    t.add_argument("--schedule", choices=("cosine", "constant"), help=h["schedule"])
    t.add_argument("--warmup", type=_nonnegative_int, metavar="STEPS", help=h["warmup"])
    t.add_argument("--clip-norm", type=_nonnegative_float, metavar="NORM", help=h["clip_norm"])
    t.add_argument("--seed", type=_seed, help="random seed (default: 0)")
    t.add_argument(
        "--backend", choices=_backends.BACKEND_NAMES, help="array library (default: numpy)"
    )
    t.add_argument("--device", help=_DEVICE_HELP)
    t.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        help=f"default: {_train.COMMON_DEFAULTS['dtype']}; transformer "
        f"{_train_seq.SEQ_DEFAULTS['dtype']}",
    )
    t.add_argument("--distributed", action="store_true", help=h["distributed"])
    io = p.add_argument_group("data, checkpoints and output")
    io.add_argument("--data", metavar="PATH", help=h["data"])
    io.add_argument("--classes", type=_positive_int, metavar="N", help=h["classes"])
    io.add_argument("--save", metavar="PATH", help=h["save"])
    io.add_argument("--resume", metavar="PATH", help=h["resume"])
    io.add_argument(
        "--overwrite",
        action="store_true",
        help="let --save replace an existing file (which is otherwise refused)",
    )
    io.add_argument("--plot", metavar="PATH", help="write a PNG of the curves (needs matplotlib)")
    io.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    io.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    adv = p.add_argument_group("advanced (testing and quick runs)")
    adv.add_argument(
        "--limit",
        type=_positive_int,
        metavar="N",
        help="use only the first N training and N test samples (transformer: windows)",
    )
    adv.add_argument("--stop-after", type=_positive_int, metavar="N", help=h["stop_after"])
    p.set_defaults(func=_cmd_train)


def _add_evaluate_parser(sub) -> None:
    p = _command(sub, "evaluate")
    p.add_argument("path", metavar="PATH", help="checkpoint written by `implicitnet train`")
    p.add_argument("--data", metavar="DIR", help="IDX directory (default: as trained)")
    p.add_argument("--backend", choices=_backends.BACKEND_NAMES)
    p.add_argument("--device", help=_DEVICE_HELP)
    p.add_argument("--solver", choices=_solver_choices(), help="default: as trained")
    p.add_argument("--rtol", type=_positive_float, help="default: as trained")
    p.add_argument("--maxiter", type=_positive_int, help="default: as trained")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_evaluate)


def _fmt_opt(value) -> str:
    return "null" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _config_from(ns, checkpoint_config: dict | None) -> dict:
    options = (*_FIXED_ON_RESUME, *_CHANGEABLE)
    given = {k: getattr(ns, k) for k in options if getattr(ns, k, None) is not None}
    if checkpoint_config is None:
        model = given.setdefault("model", "mlp")
        defaults = _train.DEFAULTS.get(model, _train_seq.SEQ_DEFAULTS)
        return {**_train.COMMON_DEFAULTS, **defaults, **given}
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


def _read_checkpoint(path: str) -> dict:
    """The checked metadata of a training checkpoint; one-line errors."""
    try:
        return _checkpoint.read_metadata(path)
    except CheckpointError as exc:
        raise _Failure(str(exc)) from None


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


class _Progress:
    """A tqdm bar over the samples of one epoch, on stderr (silent when disabled)."""

    def __init__(self, total: int, desc: str, disable):
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


def _failing(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, with ``OSError`` and ``ValueError`` as one-line failures."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError) as exc:
        raise _Failure(str(exc)) from None


# ----------------------------------------------------------------------------------
# The model kinds. `train` and `evaluate` are written once; what differs between the
# image classifiers (mlp, conv) and the transformer language model is here.
# ----------------------------------------------------------------------------------


class _Classifier:
    """The mlp and conv DEQ classifiers, on images."""

    units = "samples"
    results = ("test_acc",)  # the figures of the final summary

    def check(self, ns, config: dict) -> None:
        if not config.get("data") and int(config.get("classes") or 10) != 10:
            msg = f"--classes {config['classes']}: the digits have 10 classes; it is for --data"
            raise _Usage(msg)

    def load(self, config: dict, be):
        return _failing(_train.load_data, config, backend=be)

    def sizes(self, ds, config: dict) -> tuple[tuple, int, int, int]:
        """``(in_shape, num_classes, n_train, n_test)``."""
        in_shape = tuple(int(s) for s in ds.x_train.shape[1:])
        return in_shape, ds.num_classes, int(ds.x_train.shape[0]), int(ds.x_test.shape[0])

    def vocab(self, ds) -> str | None:
        return None

    def build(self, config: dict, rng, in_shape: tuple, num_classes: int, be):
        return _train.build_model(
            config, rng, in_shape=in_shape, num_classes=num_classes, backend=be
        )

    def epoch(self, ns):
        # `ns.data_parallel` is the data-parallel epoch of `train --distributed`.
        return getattr(ns, "data_parallel", _train.train_epoch)

    def scores(self, model, ds, config: dict, metrics: dict) -> dict:
        test = _train.evaluate(model, ds.x_test, ds.y_test)
        named = {"test_acc": "accuracy", "test_loss": "loss", "test_fwd_iter": "fwd_iter"}
        seconds = metrics["seconds"] + test["seconds"]  # the epoch's, evaluation included
        return {**{key: test[name] for key, name in named.items()}, "seconds": seconds}

    def figures(self, row: dict) -> tuple[str, float]:
        """The epoch line's own figures, and the seconds it reports."""
        text = (
            f"loss {row['loss']:.4f}  train {100 * row['train_acc']:5.1f}%  "
            f"test {100 * row['test_acc']:5.1f}%  "
        )
        return text, row["seconds"]

    def subject(self, ds, config: dict, num_classes: int) -> tuple[str, str]:
        """What is trained, on what; and what a sample is, for the first line."""
        kind = "an MLP" if config["model"] == "mlp" else "a convolutional"
        return f"{kind} DEQ on {config['data'] or 'digits'}", "samples"

    def settings(self, config: dict) -> str:
        return ""

    def score(self, result: dict) -> str:
        return f"accuracy {100 * result['test_acc']:.2f}%"

    def plot(self, path: str, history: list, title: str) -> None:
        _plot.write_classifier_plot(path, history, title)

    def evaluate(self, model, ds, config: dict) -> dict:
        return _train.evaluate(model, ds.x_test, ds.y_test)

    def evaluated(self, out: dict, ds) -> tuple[str, str, str]:
        """The evaluation's set, score and extra residual figure, for its two lines."""
        score = f"accuracy {100 * out['accuracy']:.2f}%  loss {out['loss']:.4f}"
        return f"{out['samples']} test samples", score, f"max abs res {out['max_residual']:.1e}, "


class _LanguageModel:
    """The transformer DEQ language model, on the characters of a text."""

    units = "windows"
    results = ("test_bpc", "valid_bpc")

    def check(self, ns, config: dict) -> None:
        if float(config.get("dropout") or 0.0) != 0.0:
            raise _Usage("--dropout: the transformer model has no dropout")
        if ns.distributed:
            raise _Usage("--distributed is for the image models; --model transformer runs alone")
        if ns.classes is not None:
            raise _Usage("--classes is for image data; a text's symbols are its classes")

    def load(self, config: dict, be):
        return _failing(_train_seq.load_corpus, config, backend=be)

    def sizes(self, corpus, config: dict) -> tuple[tuple, int, int, int]:
        try:
            n_train, _, n_test = (
                _train_seq.count_windows(corpus, config, split)
                for split in ("train", "valid", "test")
            )
        except ValueError as exc:
            raise _Failure(f"--seq-len {config['seq_len']}: {exc}") from None
        return (int(config["seq_len"]),), corpus.vocab_size, n_train, n_test

    def vocab(self, corpus) -> str | None:
        return corpus.vocab

    def build(self, config: dict, rng, in_shape: tuple, num_classes: int, be):
        return _train_seq.build_lm(config, rng, vocab_size=num_classes, backend=be)

    def epoch(self, ns):
        return _train_seq.train_epoch_lm

    def scores(self, model, corpus, config: dict, metrics: dict) -> dict:
        valid = _train_seq.evaluate_lm(model, corpus.valid, config)
        test = _train_seq.evaluate_lm(model, corpus.test, config)
        return {
            "valid_bpc": valid["bpc"],
            "test_bpc": test["bpc"],
            "test_fwd_iter": test["fwd_iter"],
            "test_fwd_rel_residual": test["fwd_rel_residual"],
            "eval_seconds": valid["seconds"] + test["seconds"],
        }

    def figures(self, row: dict) -> tuple[str, float]:
        text = (
            f"train {row['train_bpc']:.3f}  valid {row['valid_bpc']:.3f}  "
            f"test {row['test_bpc']:.3f} bpc  "
        )
        return text, row["seconds"] + row["eval_seconds"]

    def subject(self, corpus, config: dict, num_classes: int) -> tuple[str, str]:
        windows = f"windows of {config['seq_len']} characters, {num_classes} symbols"
        return f"a transformer DEQ language model on {corpus.name}", windows

    def settings(self, config: dict) -> str:
        return (
            f", jac-reg {config['jac_reg']:g}, warm-up {config['warmup']}, "
            f"clip {config['clip_norm']:g}"
        )

    def score(self, result: dict) -> str:
        return f"{result['test_bpc']:.3f} bits per character"

    def plot(self, path: str, history: list, title: str) -> None:
        _plot.write_language_model_plot(path, history, title)

    def evaluate(self, model, corpus, config: dict) -> dict:
        return _train_seq.evaluate_lm(model, corpus.test, config)

    def evaluated(self, out: dict, corpus) -> tuple[str, str, str]:
        what = (
            f"{out['characters']} test characters of {corpus.name} (each predicted from at "
            f"least {out['context']} characters before it, but the first {out['context']})"
        )
        return what, f"{out['bpc']:.3f} bits per character", ""


_KINDS = {"mlp": _Classifier(), "conv": _Classifier(), "transformer": _LanguageModel()}


def _kind(config: dict):
    return _KINDS.get(config.get("model"), _KINDS["mlp"])


def _epoch_line(kind, row: dict, epochs: int, rtol: float) -> str:
    width = len(str(epochs))
    figures, seconds = kind.figures(row)
    head = f"epoch {row['epoch']:>{width}}/{epochs}  {figures}"
    return head + _solver_columns(row, rtol, seconds, kind.units)


def _check_plot_available() -> None:
    try:
        _plot.check_available()
    except ImportError as exc:
        raise _Failure(str(exc)) from None


def _write_plot(kind, path: str, history: list, config: dict) -> None:
    title = (
        f"{config['model']} DEQ, {config['solver']} / {config['backward']}"
        f"{kind.settings(config)}, seed {config['seed']}"
    )
    try:
        kind.plot(path, history, title)
    except OSError as exc:
        raise _Failure(f"--plot {path}: {exc.strerror or exc}") from None


def _check_writable(path: str, flag: str) -> None:
    """Fail now, not after an epoch, if `path` cannot be written as a checkpoint or plot."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise _Failure(f"{flag} {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise _Failure(f"{flag} {path}: is a directory")
    try:
        _checkpoint.check_writable(path)
    except OSError as exc:
        hint = "; give --save PATH to save elsewhere" if flag == "--resume" else ""
        raise _Failure(
            f"{flag} {path}: cannot write in {directory} ({exc.strerror or exc}){hint}"
        ) from None


def _restore(path: str, meta: dict, model, opt_state, rng=None) -> tuple[Any, Any]:
    try:
        return _checkpoint.restore(path, meta, model, opt_state, rng=rng)
    except CheckpointError as exc:
        raise _Failure(str(exc)) from None


def _saved_model(kind, path: str, meta: dict, config: dict, be):
    """The model saved in the checkpoint `path` (with metadata `meta`), on `be`."""
    try:
        model = kind.build(
            config, nn.generator(0), tuple(meta["in_shape"]), meta["num_classes"], be
        )
        opt_state = _train.build_optimizer(config, 1).init(model)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise _Failure(f"corrupt checkpoint: {exc}") from None
    return _restore(path, meta, model, opt_state)[0]


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
    if ns.distributed and not hasattr(ns, "data_parallel"):
        # The same run on every MPI rank; `ns.data_parallel` is then its epoch function.
        return run_data_parallel(_cmd_train, ns, usage_errors=(_Usage,), failure=_Failure)
    meta = None
    if ns.overwrite and ns.save is None:
        raise _Usage("--overwrite replaces the file named by --save; give --save PATH")
    if ns.resume is not None:
        meta = _read_checkpoint(ns.resume)
    config = _config_from(ns, None if meta is None else meta["config"])
    kind = _kind(config)
    kind.check(ns, config)
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
    data = kind.load(config, be)
    in_shape, num_classes, n_train, n_test = kind.sizes(data, config)
    if n_train == 0:
        raise _Failure("the training set is empty")
    try:
        rng = nn.generator(int(config["seed"]))
        model = kind.build(config, rng, in_shape, num_classes, be)
        optimizer = _train.build_optimizer(config, n_train)
    except (TypeError, ValueError) as exc:
        raise _Usage(str(exc)) from None
    opt_state = optimizer.init(model)
    start, history = 0, []
    if meta is not None:
        try:
            _checkpoint.check_fits(meta, ns.resume, in_shape, num_classes, vocab=kind.vocab(data))
        except CheckpointError as exc:
            raise _Failure(str(exc)) from None
        model, opt_state = _restore(ns.resume, meta, model, opt_state, rng=rng)
        start, history = meta["epoch"], list(meta["history"])
    epochs = int(config["epochs"])
    # The newest checkpoint of this run, and the epoch it holds.
    saved, saved_epoch = (ns.resume, start) if meta is not None else (None, 0)

    def summary(status: str, elapsed: float, message: str | None = None) -> dict:
        last = history[-1] if history else {}
        out = {
            "summary": True,
            "status": status,
            "epochs": last.get("epoch", 0),
            "of": epochs,
            "ran": len(history) - (len(meta["history"]) if meta is not None else 0),
            **{key: last.get(key) for key in kind.results},
            "seconds": elapsed,
            "seed": config["seed"],
            "model": config["model"],
            "solver": config["solver"],
            "backward": config["backward"],
            "saved": saved,
            "saved_epoch": saved_epoch if saved is not None else None,
            "plot": ns.plot,
        }
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
    if not ns.json:
        subject, units = kind.subject(data, config, num_classes)
        print(
            f"training {subject} ({n_train} train / {n_test} test {units}, "
            f"{model.num_parameters()} parameters): solver {config['solver']}, "
            f"backward {config['backward']}, rtol {config['rtol']:g}{kind.settings(config)}, "
            f"seed {config['seed']}, backend {config['backend']}"
            + (f"; resuming after epoch {start}" if start else ""),
            flush=True,
        )
    t_run = time.perf_counter()
    epoch = start
    step = kind.epoch(ns)
    try:
        for epoch in range(start, stop):
            bar = _Progress(n_train, f"epoch {epoch + 1}/{epochs}", disable)
            try:
                model, opt_state, metrics = step(
                    model, optimizer, opt_state, data, config, epoch, rng, progress=bar
                )
            finally:
                bar.close()
            row = {"epoch": epoch + 1, **metrics}
            row.update(kind.scores(model, data, config, metrics))
            history.append(row)
            if ns.json:
                print(json.dumps(_jsonable(row)), flush=True)
            else:
                print(_epoch_line(kind, row, epochs, config["rtol"]), flush=True)
            if save is not None:
                meta_out = _checkpoint.metadata(
                    config,
                    epoch=epoch + 1,
                    rng=rng,
                    history=history,
                    in_shape=in_shape,
                    num_classes=num_classes,
                    vocab=kind.vocab(data),
                )
                try:
                    _checkpoint.write(save, model, opt_state, meta_out)
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
    if ns.plot is not None and history:
        _write_plot(kind, ns.plot, history, config)
    done = history[-1]["epoch"] if history else 0
    result = summary("done" if done == epochs else "stopped", elapsed)
    if ns.json:
        print(json.dumps(_jsonable(result)), flush=True)
        return 0
    extra = []
    if save:
        extra.append(f"saved to {save}")
    if ns.plot:
        extra.append(f"plot in {ns.plot}")
    status = "done" if done == epochs else f"stopped after epoch {done} of {epochs}"
    print(
        f"{status}: test {kind.score(result)} after {done} epoch{'' if done == 1 else 's'} "
        f"({result['ran']} in this run, {elapsed:.1f} s), seed {config['seed']}"
        + (f"; {', '.join(extra)}" if extra else ""),
        flush=True,
    )
    if "resume" in result:
        print(f"continue with: {result['resume']}", flush=True)
    return 0


def _cmd_evaluate(ns) -> int:
    meta = _read_checkpoint(ns.path)
    config = dict(meta["config"])
    for key in ("data", "backend", "solver", "rtol", "maxiter"):
        if getattr(ns, key) is not None:
            config[key] = getattr(ns, key)
    kind = _kind(config)
    be = _backend_module(config["backend"], ns.device)
    data = kind.load(config, be)
    in_shape, num_classes, _, _ = kind.sizes(data, config)
    try:
        _checkpoint.check_fits(meta, ns.path, in_shape, num_classes, vocab=kind.vocab(data))
    except CheckpointError as exc:
        raise _Failure(str(exc)) from None
    model = _saved_model(kind, ns.path, meta, config, be)
    out = {"path": ns.path, "epoch": meta["epoch"], **kind.evaluate(model, data, config)}
    if ns.json:
        print(json.dumps(_jsonable(out)))
        return 0
    what, score, residual = kind.evaluated(out, data)
    print(f"{ns.path}: {config['model']} DEQ after {meta['epoch']} epochs, {what}")
    print(
        f"test {score}  fwd {out['fwd_iter']:.1f} it (mean rel res "
        f"{out['fwd_rel_residual']:.1e}, {residual}{out['unconverged']} unconverged)  "
        f"solver {config['solver']} rtol {config['rtol']:g}  {out['seconds']:.2f} s"
    )
    return 0


def _add_sample_parser(sub) -> None:
    p = _command(sub, "sample")
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
    meta = _read_checkpoint(ns.path)
    config = dict(meta["config"])
    if config.get("model") != "transformer":
        raise _Failure(f"{ns.path}: a {config.get('model')} classifier, not a language model")
    if ns.backend is not None:
        config["backend"] = ns.backend
    be = _backend_module(config["backend"])
    model = _saved_model(_kind(config), ns.path, meta, config, be)
    try:
        text = _train_seq.sample_text(
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
    p_info = _command(sub, "info")
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
