"""Learning-rate schedules: callables ``step -> lr`` on the Python step count."""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._validate import check_int, check_nonnegative, check_positive

__all__ = [
    "Constant",
    "Cosine",
    "Step",
    "constant",
    "cosine_schedule",
    "resolve_lr",
    "step_schedule",
]


@dataclass(frozen=True, kw_only=True)
class Constant:
    """The schedule ``step -> lr`` (see :func:`constant`)."""

    lr: float

    def __call__(self, step: int) -> float:
        return self.lr


@dataclass(frozen=True, kw_only=True)
class Cosine:
    """Linear warm-up, then cosine decay (see :func:`cosine_schedule`)."""

    lr: float
    steps: int
    final_lr: float = 0.0
    warmup_steps: int = 0

    def __call__(self, step: int) -> float:
        step = int(step)
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = self.steps - self.warmup_steps
        progress = min(step - self.warmup_steps, span) / span if span > 0 else 1.0
        # lr_t = final + (lr - final) * (1 + cos(pi * progress)) / 2
        return self.final_lr + (self.lr - self.final_lr) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )


@dataclass(frozen=True, kw_only=True)
class Step:
    """Multiply by `gamma` at each milestone (see :func:`step_schedule`)."""

    lr: float
    milestones: tuple[int, ...]
    gamma: float = 0.1
    every: int | None = None

    def __call__(self, step: int) -> float:
        step = int(step)
        if self.every is not None:
            k = step // self.every
        else:
            k = sum(1 for m in self.milestones if step >= m)
        return self.lr * self.gamma**k


def constant(lr: float) -> Constant:
    """A constant learning rate.

    Parameters
    ----------
    lr : float
        The learning rate, positive.

    Returns
    -------
    callable
        ``schedule(step) -> float``.

    Examples
    --------
    >>> from implicitnet import optim
    >>> optim.constant(0.1)(1000)
    0.1
    """
    return Constant(lr=check_positive(lr, "lr"))


def cosine_schedule(
    lr: float, steps: int, *, final_lr: float = 0.0, warmup_steps: int = 0
) -> Cosine:
    """Cosine decay from `lr` to `final_lr` over `steps` steps, after a linear warm-up.

    Parameters
    ----------
    lr : float
        Peak learning rate.
    steps : int
        Step at which the decay reaches `final_lr` (counting the warm-up); the rate stays
        at `final_lr` afterwards.
    final_lr : float, default: 0.0
        Learning rate at the end of the decay.
    warmup_steps : int, default: 0
        Number of warm-up steps, during which the rate grows linearly,
        ``lr * (step + 1) / warmup_steps``.

    Returns
    -------
    callable
        ``schedule(step) -> float``.

    Notes
    -----
    With ``p = min(step - warmup_steps, T) / T`` and ``T = steps - warmup_steps``, the
    rate is ``final_lr + (lr - final_lr) * (1 + cos(pi p)) / 2`` (Loshchilov & Hutter,
    "SGDR", 2017, without restarts).

    Examples
    --------
    >>> from implicitnet import optim
    >>> s = optim.cosine_schedule(1.0, 10)
    >>> s(0), round(s(5), 12), s(10), s(20)
    (1.0, 0.5, 0.0, 0.0)
    """
    lr = check_positive(lr, "lr")
    steps = check_int(steps, "steps", minimum=1)
    final_lr = check_nonnegative(final_lr, "final_lr")
    warmup_steps = check_int(warmup_steps, "warmup_steps", minimum=0)
    if warmup_steps > steps:
        msg = f"`warmup_steps` ({warmup_steps}) must not exceed `steps` ({steps})"
        raise ValueError(msg)
    return Cosine(lr=lr, steps=steps, final_lr=final_lr, warmup_steps=warmup_steps)


def step_schedule(lr: float, milestones: int | Sequence[int], *, gamma: float = 0.1) -> Step:
    """Piecewise-constant rate, multiplied by `gamma` at each milestone.

    Parameters
    ----------
    lr : float
        Initial learning rate.
    milestones : int or sequence of int
        An int ``k`` decays every ``k`` steps; a sequence lists the steps at which the
        rate decays (increasing).
    gamma : float, default: 0.1
        Multiplicative factor per milestone.

    Returns
    -------
    callable
        ``schedule(step) -> float``: ``lr * gamma ** (number of milestones <= step)``.

    Examples
    --------
    >>> from implicitnet import optim
    >>> s = optim.step_schedule(1.0, [2, 4], gamma=0.5)
    >>> [s(t) for t in range(6)]
    [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    """
    lr = check_positive(lr, "lr")
    gamma = check_positive(gamma, "gamma")
    if isinstance(milestones, numbers.Integral) and not isinstance(milestones, bool):
        every = check_int(milestones, "milestones", minimum=1)
        return Step(lr=lr, milestones=(), gamma=gamma, every=every)
    try:
        ms = tuple(check_int(m, "milestones", minimum=0) for m in milestones)
    except TypeError:
        msg = f"`milestones` must be an int or a sequence of ints, got {milestones!r}"
        raise TypeError(msg) from None
    if any(b <= a for a, b in itertools.pairwise(ms)):
        msg = f"`milestones` must be increasing, got {list(ms)}"
        raise ValueError(msg)
    return Step(lr=lr, milestones=ms, gamma=gamma)


def resolve_lr(lr) -> Callable[[int], float]:
    """Validate `lr` (a positive float or a callable schedule) and return a schedule."""
    if callable(lr):
        return lr
    return constant(lr)
