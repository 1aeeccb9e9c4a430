"""Activations and losses, written with the array API (differentiable on tensors)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._xp import device, namespace
from ..autodiff import stop_gradient as _stop_gradient
from ._module import Module

__all__ = [
    "GELU",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "accuracy",
    "cross_entropy",
    "gelu",
    "log_softmax",
    "logsumexp",
    "relu",
    "sigmoid",
    "softmax",
    "tanh",
]


def relu(x, /):
    """Rectified linear unit, ``max(x, 0)``.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> nn.relu(np.array([-1.0, 2.0])).tolist()
    [0.0, 2.0]
    """
    xp = namespace(x)
    return xp.maximum(x, xp.zeros_like(x))


def tanh(x, /):
    """Hyperbolic tangent."""
    return namespace(x).tanh(x)


def sigmoid(x, /):
    """Logistic function ``1 / (1 + exp(-x))``, as ``(1 + tanh(x / 2)) / 2`` (no overflow)."""
    xp = namespace(x)
    return 0.5 * (xp.tanh(0.5 * x) + 1.0)


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu(x, /):
    """Gaussian error linear unit, tanh approximation.

    Notes
    -----
    ``gelu(x) = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (Hendrycks & Gimpel,
    2016); the array API has no ``erf``, so the exact form is not portable.
    """
    xp = namespace(x)
    return 0.5 * x * (1.0 + xp.tanh(_GELU_C * (x + 0.044715 * (x * x * x))))


def logsumexp(x, /, *, axis=-1, keepdims: bool = False):
    """``log(sum(exp(x), axis))``, computed without overflow.

    Notes
    -----
    With ``m = max(x, axis)`` (held constant: the result does not depend on it),
    ``logsumexp(x) = m + log(sum(exp(x - m)))``; every exponent is at most 0.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> float(nn.logsumexp(np.array([1000.0, 1000.0])))  # naive form overflows
    1000.6931471805599
    """
    xp = namespace(x)
    m = _stop_gradient(xp.max(x, axis=axis, keepdims=True))
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    out = xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else xp.squeeze(out, axis=axis)


def log_softmax(x, /, *, axis=-1):
    """``x - logsumexp(x)`` along `axis` (numerically stable)."""
    return x - logsumexp(x, axis=axis, keepdims=True)


def softmax(x, /, *, axis=-1):
    """``exp(x) / sum(exp(x))`` along `axis` (numerically stable)."""
    return namespace(x).exp(log_softmax(x, axis=axis))


def _one_hot(labels, num_classes: int, dtype, *, xp, dev):
    classes = xp.arange(num_classes, device=dev)
    return xp.astype(xp.reshape(labels, (-1, 1)) == xp.reshape(classes, (1, -1)), dtype)


def cross_entropy(logits, labels, /, *, reduction: str = "mean"):
    """Softmax cross-entropy between `logits` and integer class `labels`.

    Parameters
    ----------
    logits : array, shape (n, num_classes)
        Unnormalised log-probabilities.
    labels : int array, shape (n,)
        Class indices in ``[0, num_classes)``.
    reduction : {"mean", "sum", "none"}, default: "mean"
        How the per-sample losses are combined.

    Returns
    -------
    array
        ``-log_softmax(logits)[i, labels[i]]``, reduced.

    Raises
    ------
    ValueError
        If the shapes do not match or `reduction` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> logits = np.array([[0.0, 0.0], [1000.0, 0.0]])
    >>> nn.cross_entropy(logits, np.array([0, 0]), reduction="none").tolist()
    [0.6931471805599453, 0.0]
    """
    if reduction not in ("mean", "sum", "none"):
        msg = f"`reduction` must be 'mean', 'sum' or 'none', got {reduction!r}"
        raise ValueError(msg)
    if logits.ndim != 2:
        msg = f"`logits` must be 2-D (n, num_classes), got shape {tuple(logits.shape)}"
        raise ValueError(msg)
    if tuple(labels.shape) != (logits.shape[0],):
        msg = (
            f"`labels` must have shape ({logits.shape[0]},) to match `logits`, got "
            f"{tuple(labels.shape)}"
        )
        raise ValueError(msg)
    xp = namespace(logits)
    # loss_i = logsumexp(logits_i) - logits[i, labels[i]]; the label's logit is picked
    # with a one-hot mask (no gather: portable and differentiable).
    onehot = _one_hot(labels, logits.shape[1], logits.dtype, xp=xp, dev=device(logits))
    losses = logsumexp(logits, axis=-1) - xp.sum(logits * onehot, axis=-1)
    if reduction == "none":
        return losses
    total = xp.sum(losses)
    return total if reduction == "sum" else total / logits.shape[0]


def accuracy(logits, labels, /) -> float:
    """Fraction of rows of `logits` whose argmax equals the label (a Python float)."""
    xp = namespace(logits)
    n = logits.shape[0]
    if n == 0:
        return 0.0
    correct = xp.sum(xp.astype(xp.argmax(logits, axis=-1) == labels, xp.int64))
    return int(correct) / n


def _elementwise_module(name: str, function: Callable[[Any], Any], doc: str) -> type[Module]:
    """A module class `name` with no parameters whose call is ``function(x)``."""

    @dataclass(frozen=True)
    class Elementwise(Module):
        def __call__(self, x):
            return function(x)

    Elementwise.__name__ = Elementwise.__qualname__ = name
    Elementwise.__call__.__qualname__ = f"{name}.__call__"
    Elementwise.__doc__ = doc
    return Elementwise


ReLU = _elementwise_module("ReLU", relu, ":func:`relu` as a module (for :class:`Sequential`).")
Tanh = _elementwise_module("Tanh", tanh, ":func:`tanh` as a module.")
GELU = _elementwise_module("GELU", gelu, ":func:`gelu` as a module.")
Sigmoid = _elementwise_module("Sigmoid", sigmoid, ":func:`sigmoid` as a module.")
