"""The training loop behind ``implicitnet train`` and ``implicitnet evaluate``.

Everything here is backend-neutral and prints nothing: the command line (``cli.py``)
turns options into a configuration, calls these functions and reports the metrics
they return. A configuration is a JSON-serialisable dict (stored in checkpoints), so
that a checkpoint alone rebuilds its model, optimizer and data.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import backends, nn, optim
from . import data as _data
from ._result import ConvergenceWarning
from ._validate import NonFiniteError
from ._xp import device, namespace, untraced, vector_norm
from .autodiff import value_and_grad

__all__ = [
    "CLASSIFIER",
    "COMMON_DEFAULTS",
    "DEFAULTS",
    "Objective",
    "Running",
    "build_model",
    "build_optimizer",
    "checked_loss",
    "differentiate",
    "evaluate",
    "evaluate_batches",
    "fit_epoch",
    "load_data",
    "local_step",
    "train_epoch",
]

# Defaults per model; the command line fills the options the user did not give.
DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {
        "width": 64,
        "dropout": 0.3,
        "epochs": 30,
        "batch_size": 64,
        "lr": 5e-3,
    },
    "conv": {
        "width": 16,
        "dropout": 0.1,
        "epochs": 15,
        "batch_size": 64,
        "lr": 5e-3,
    },
}
COMMON_DEFAULTS: dict[str, Any] = {
    "solver": "anderson",
    "backward": "implicit",
    "rtol": 1e-3,
    "maxiter": 30,
    "init_scale": 0.2,
    "schedule": "cosine",
    "warmup": 0,
    "clip_norm": 0.0,
    "seed": 0,
    "dtype": "float64",
    "backend": "numpy",
    "data": None,
    "classes": 10,
    "limit": None,
}


def load_data(config: dict, *, backend: Any) -> _data.Dataset:
    """The training and test data of `config` (digits, or an MNIST-format directory)."""
    flatten = config["model"] == "mlp"
    kw = {"flatten": flatten, "dtype": config["dtype"], "backend": backend}
    classes = int(config.get("classes") or 10)
    if config.get("data"):
        ds = _data.load_mnist(config["data"], num_classes=classes, **kw)
    else:
        if classes != 10:
            msg = f"the digits have 10 classes, not {classes} (--classes applies to --data)"
            raise ValueError(msg)
        ds = _data.load_digits(seed=0, **kw)
    limit = config.get("limit")
    if limit:
        ds = _data.Dataset(
            ds.x_train[:limit, ...],
            ds.y_train[:limit, ...],
            ds.x_test[:limit, ...],
            ds.y_test[:limit, ...],
            ds.num_classes,
        )
    return ds


def _deq_config(config: dict) -> dict:
    return {
        "method": config["solver"],
        "backward": config["backward"],
        "rtol": float(config["rtol"]),
        "maxiter": int(config["maxiter"]),
    }


def build_model(config: dict, rng: Any, *, in_shape: tuple, num_classes: int, backend: Any):
    """The classifier of `config`, initialised from the generator `rng`."""
    kw = {
        "seed": rng,
        "dtype": config["dtype"],
        "backend": backend,
        "dropout": float(config["dropout"]),
        "init_scale": float(config["init_scale"]),
        **_deq_config(config),
    }
    if config["model"] == "mlp":
        in_features = 1
        for s in in_shape:
            in_features *= int(s)
        return nn.mlp_deq(in_features, num_classes, width=int(config["width"]), **kw)
    channels, height, width = (int(s) for s in in_shape)
    if height != width:
        msg = f"the conv model needs square images, got {height}x{width}"
        raise ValueError(msg)
    channels_state = int(config["width"])
    groups = 4 if channels_state % 4 == 0 else 1
    pool = 2 if height % 2 == 0 else 1
    return nn.conv_deq(
        channels,
        num_classes,
        channels=channels_state,
        groups=groups,
        image_size=height,
        pool=pool,
        **kw,
    )


def steps_per_epoch(config: dict, n_train: int) -> int:
    return _data.num_batches(n_train, int(config["batch_size"]))


def build_optimizer(config: dict, n_train: int) -> optim.AbstractOptimizer:
    """Adam with the learning-rate schedule of `config` over all its epochs.

    ``config["warmup"]`` steps of linear warm-up come first (either schedule);
    ``config["clip_norm"]``, if positive, clips the gradients to that global norm (0 or
    None: no clipping). A configuration saved before these keys existed means neither.
    """
    lr = float(config["lr"])
    warmup = int(config.get("warmup") or 0)
    if config["schedule"] == "cosine":
        total = max(1, int(config["epochs"]) * steps_per_epoch(config, n_train))
        lr = optim.cosine_schedule(lr, total, warmup_steps=min(warmup, total))
    elif warmup:
        # A cosine "decay" to the same rate is a constant rate after the warm-up.
        lr = optim.cosine_schedule(lr, warmup, final_lr=lr, warmup_steps=warmup)
    opt: optim.AbstractOptimizer = optim.Adam(lr=lr)
    if config.get("clip_norm"):
        opt = optim.ClipByGlobalNorm(inner=opt, max_norm=float(config["clip_norm"]))
    return opt


def _mean(a) -> float:
    if a is None:
        return math.nan
    if isinstance(a, int | float):
        return float(a)
    xp = namespace(a)
    return float(xp.mean(xp.astype(a, xp.float64)))


def _relative_residuals(res):
    """Per-sample ``||f(z) - z|| / ||z||`` of a batched forward result (an array).

    The forward test is relative (``||f(z) - z|| <= rtol * scale``, with a scale of the
    size of ``z`` once the iterate has settled), so this, not the absolute residual, is
    the figure to read against ``rtol``. A zero state counts with norm 1.
    """
    z = untraced(res.x)
    r = untraced(res.residual)
    xp = namespace(z)
    n = int(z.shape[0])
    size = vector_norm(xp.reshape(z, (n, -1)), axis=1, xp=xp)
    size = xp.where(size > 0, size, xp.ones_like(size))
    return xp.astype(r, size.dtype) / size


def _nonfinite_parameter(model) -> str | None:
    """The path name of the first parameter of `model` holding inf or NaN (else None)."""
    for name, leaf in nn.named_leaves(model).items():
        a = untraced(leaf)
        xp = namespace(a)
        if not xp.isdtype(a.dtype, ("real floating", "complex floating")):
            continue
        if not bool(xp.all(xp.isfinite(a))):
            return name
    return None


def _finite_probe(model):
    # 0.0 when every floating parameter is finite, NaN otherwise: added to the loss, the
    # one host read per batch checks both. (Counted with isfinite, which never warns.)
    bad = None
    for leaf in nn.named_leaves(model).values():
        a = untraced(leaf)
        xp = namespace(a)
        if not xp.isdtype(a.dtype, "real floating"):
            continue
        count = xp.sum(xp.astype(xp.logical_not(xp.isfinite(a)), xp.int64))
        bad = count if bad is None else bad + count
    if bad is None:
        return None
    zero = xp.zeros((), dtype=xp.float64, device=device(bad))
    return xp.where(bad > 0, zero + math.nan, zero)


def _loss(model, xb, yb, mask):
    logits, res = model(xb, mask=mask)
    return nn.cross_entropy(logits, yb), (logits, res)


class Running:
    """Running figures of an epoch: per-batch means weighted by the batch size, and counts.

    :meth:`add_solve` takes a batch's forward result and adds its mean iterations and
    residuals (absolute and relative), its backward iterations when the adjoint reported
    them, and the count of samples whose solve did not converge; :meth:`solver_metrics`
    gives them back as the ``fwd_*``, ``bwd_*`` and ``unconverged`` metrics.
    """

    # The names of the figures :meth:`add_solve` adds.
    SOLVE_FIGURES = ("fwd", "res", "rel", "bwd")

    def __init__(self):
        self.n = 0
        self.sums: dict[str, float] = {}
        self.fwd_per_batch: list[float] = []
        self.unconverged = 0
        self.bwd_failures = 0
        self.bwd_seen = False
        self.worst = 0.0
        self.t0 = time.perf_counter()

    def add(self, n: int, **values: float) -> None:
        self.n += n
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + n * v

    def mean(self, key: str) -> float:
        return self.sums.get(key, math.nan) / self.n if self.n else math.nan

    def add_solve(self, n: int, res, *, track_worst: bool = False, **values: float) -> None:
        """Add a batch of `n` samples, its forward result `res` and other `values`."""
        xp = namespace(res.converged)
        self.unconverged += n - int(xp.sum(xp.astype(res.converged, xp.int64)))
        if track_worst:
            self.worst = max(self.worst, float(xp.max(res.residual)))
        bwd = res.stats.get("backward")
        self.bwd_seen = self.bwd_seen or bwd is not None
        fwd = _mean(res.nit)
        self.fwd_per_batch.append(fwd)
        self.add(
            n,
            **values,
            fwd=fwd,
            res=_mean(res.residual),
            rel=_mean(_relative_residuals(res)),
            bwd=_mean(bwd["nit"]) if bwd is not None else math.nan,
        )

    def add_means(
        self, n: int, means: dict, unconverged: int, bwd_failures: int, bwd_seen: bool
    ) -> None:
        """Add a batch of `n` samples from its mean figures and solver counts."""
        self.unconverged += unconverged
        self.bwd_failures += bwd_failures
        self.bwd_seen = self.bwd_seen or bwd_seen
        self.fwd_per_batch.append(means["fwd"])
        self.add(n, **means)

    def solver_metrics(self) -> dict:
        return {
            "fwd_iter": self.mean("fwd"),
            "fwd_residual": self.mean("res"),
            "fwd_rel_residual": self.mean("rel"),
            "bwd_iter": self.mean("bwd") if self.bwd_seen else None,
            "unconverged": self.unconverged,
            "bwd_failures": self.bwd_failures,
        }

    def seconds(self) -> float:
        return time.perf_counter() - self.t0


def checked_loss(loss, model, epoch: int, batch: int) -> float:
    """The batch's loss as a float, after checking it and the updated `model`.

    One host read checks both (the loss plus :func:`_finite_probe`); raises
    ``FloatingPointError`` naming the epoch, the batch and, if the loss is finite, the
    parameter that is not.
    """
    probe = _finite_probe(model)
    checked = float(untraced(loss) if probe is None else untraced(loss) + probe)
    if not math.isfinite(checked):
        # Only now the loss alone: is it the loss or a parameter that is not finite?
        value = float(untraced(loss))
        where = f"in epoch {epoch + 1}, batch {batch + 1}"
        if not math.isfinite(value):
            msg = f"the training loss became {value} {where}"
        else:
            msg = f"parameter {_nonfinite_parameter(model)!r} became inf or NaN {where}"
        raise FloatingPointError(msg)
    return checked


@dataclass(frozen=True)
class Objective:
    """What one model kind's training step computes, for :func:`fit_epoch`.

    Attributes
    ----------
    loss : callable
        ``loss(model, xb, yb, *extra) -> (value, aux)``: the value differentiated.
    draw : callable
        ``draw(model, xb, rng) -> extra``: the batch's random inputs of `loss` (a
        dropout mask, a seed), drawn from the epoch's generator.
    read : callable
        ``read(value, aux, yb) -> (loss, res, figures)``: the loss to report (an
        array), the forward result, and other per-batch figures (floats).
    shown : callable
        ``shown(stats) -> dict``: the figures on the progress bar, from the
        :class:`Running` figures so far.
    figures : tuple of str
        The names of the figures `read` returns, in a fixed order.
    """

    loss: Callable
    draw: Callable
    read: Callable
    shown: Callable
    figures: tuple[str, ...] = ()


def differentiate(loss_grad, args: tuple, epoch: int, batch: int):
    """``(((value, aux), grads), failures)`` of ``loss_grad(*args)`` for one batch.

    `failures` counts the adjoint solves that did not converge (their
    ``ConvergenceWarning``); a forward solve refusing non-finite values becomes a
    ``FloatingPointError`` naming the epoch and the batch.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            out = loss_grad(*args)
        except NonFiniteError as exc:
            # Finite but huge parameters can make the cell overflow at the start of
            # the solve, which the solver refuses as a bad problem: here it is the
            # training that diverged.
            msg = (
                f"the forward solve met inf or NaN in epoch {epoch + 1}, batch "
                f"{batch + 1}: the parameters overflowed ({exc})"
            )
            raise FloatingPointError(msg) from None
    return out, sum(issubclass(w.category, ConvergenceWarning) for w in caught)


def local_step(loss_grad, objective: Objective, model, xb, yb, extra: tuple, epoch, batch):
    """One batch differentiated in this process: ``(grads, record)``.

    ``record(stats, model)``, called with the model after the optimizer step, checks
    the loss and the parameters (:func:`checked_loss`) and adds the batch's figures to
    the :class:`Running` `stats`. This is :func:`fit_epoch`'s default `step`; the MPI
    data-parallel step has the same signature.
    """
    ((value, aux), grads), failures = differentiate(
        loss_grad, (model, xb, yb, *extra), epoch, batch
    )

    def record(stats: Running, model) -> None:
        loss, res, figures = objective.read(value, aux, yb)
        stats.bwd_failures += failures
        stats.add_solve(
            int(xb.shape[0]), res, loss=checked_loss(loss, model, epoch, batch), **figures
        )

    return grads, record


def fit_epoch(
    model,
    optimizer,
    opt_state,
    x,
    y,
    config: dict,
    epoch: int,
    rng: Any,
    *,
    objective: Objective,
    progress=None,
    step: Callable = local_step,
):
    """One pass of `optimizer` over ``(x, y)``: ``(model, opt_state, stats)``.

    The loop that every model kind shares: the batches of `config` in the order fixed
    by its seed and `epoch`, one differentiation (`step`, see :func:`local_step`) and
    one optimizer step each, the checks of the loss and parameters, and the
    :class:`Running` figures (`stats`). What the step computes is the `objective`.

    Raises
    ------
    FloatingPointError
        If the loss or a parameter becomes infinite or NaN; the message names the
        epoch, the batch and the parameter. Nothing after that batch is trained.
    """
    loss_grad = value_and_grad(objective.loss, has_aux=True)
    be = backends.backend_of(x)
    stats = Running()
    for batch, (xb, yb) in enumerate(
        _data.batches(x, y, int(config["batch_size"]), seed=int(config["seed"]), epoch=epoch)
    ):
        extra = objective.draw(model, xb, rng)
        grads, record = step(loss_grad, objective, model, xb, yb, extra, epoch, batch)
        model, opt_state = optimizer.update(model, grads, opt_state)
        record(stats, model)
        if progress is not None:
            progress(int(xb.shape[0]), objective.shown(stats))
    be.synchronize()
    return model, opt_state, stats


CLASSIFIER = Objective(
    loss=_loss,
    draw=lambda model, xb, rng: (model.mask(int(xb.shape[0]), rng, like=xb),),
    read=lambda value, aux, yb: (value, aux[1], {"acc": nn.accuracy(aux[0], yb)}),
    shown=lambda stats: {"loss": stats.mean("loss")},
    figures=("acc",),
)


def train_epoch(
    model,
    optimizer,
    opt_state,
    ds: _data.Dataset,
    config: dict,
    epoch: int,
    rng: Any,
    *,
    progress=None,
    step: Callable = local_step,
):
    """One pass over the training set: ``(model, opt_state, metrics)``.

    `metrics` holds the mean training loss and accuracy, the mean forward iterations
    and final residual per sample (absolute, ``fwd_residual``, and relative to the
    state's norm, ``fwd_rel_residual``), the mean backward iterations, the number of
    samples whose forward solve did not converge and of adjoint solves that did not,
    and the seconds taken. `progress` (optional) is called with the number of samples
    done after every batch, and may return a dict of figures to show. `step`
    differentiates one batch (default: in this process; see :func:`fit_epoch`).

    Raises
    ------
    FloatingPointError
        If the loss or a parameter becomes infinite or NaN; the message names the
        epoch, the batch and the parameter. Nothing after that batch is trained.
    """
    model, opt_state, stats = fit_epoch(
        model,
        optimizer,
        opt_state,
        ds.x_train,
        ds.y_train,
        config,
        epoch,
        rng,
        objective=CLASSIFIER,
        progress=progress,
        step=step,
    )
    metrics = {"loss": stats.mean("loss"), "train_acc": stats.mean("acc")}
    return model, opt_state, {**metrics, **stats.solver_metrics(), "seconds": stats.seconds()}


def evaluate_batches(model, x, y, batch_size: int, figures: Callable, **kw) -> Running:
    """The :class:`Running` figures of `model` over ``(x, y)`` (no dropout, no gradient).

    ``figures(logits, yb)`` gives each batch's own figures (floats); `kw` goes to
    :meth:`Running.add_solve`.
    """
    stats = Running()
    for xb, yb in _data.batches(x, y, batch_size):
        logits, res = model(xb)
        stats.add_solve(int(xb.shape[0]), res, **kw, **figures(logits, yb))
    return stats


def _classifier_figures(logits, yb) -> dict:
    return {"acc": nn.accuracy(logits, yb), "loss": float(nn.cross_entropy(logits, yb))}


def evaluate(model, x, y, *, batch_size: int = 512) -> dict:
    """Accuracy and forward-solve statistics of `model` on ``(x, y)`` (no dropout)."""
    stats = evaluate_batches(model, x, y, batch_size, _classifier_figures, track_worst=True)
    return {
        "accuracy": stats.mean("acc"),
        "loss": stats.mean("loss"),
        "fwd_iter": stats.mean("fwd"),
        "fwd_residual": stats.mean("res"),
        "fwd_rel_residual": stats.mean("rel"),
        "max_residual": stats.worst,
        "unconverged": stats.unconverged,
        "samples": stats.n,
        "seconds": stats.seconds(),
    }
