"""First-order optimizers as ``init``/``update`` pairs over pytrees of arrays."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .._tree import tree_flatten, tree_unflatten
from .._validate import check_nonnegative, check_positive, check_real
from .._xp import device, namespace
from ._schedules import resolve_lr


def _is_none(x) -> bool:
    return x is None


def _flatten(tree):
    # ``None`` counts as a leaf so that a ``None`` gradient lines up with its parameter.
    return tree_flatten(tree, is_leaf=_is_none)


def _first_array(leaves, what: str):
    for leaf in leaves:
        if leaf is not None:
            return leaf
    msg = f"`{what}` has no array leaves"
    raise ValueError(msg)


def _match(params, grads):
    p, td = _flatten(params)
    g, gtd = _flatten(grads)
    if gtd != td:
        msg = "`grads` must have the same tree structure as `params`"
        raise ValueError(msg)
    return p, g, td


def _check_lr(lr) -> None:
    if not callable(lr):
        check_positive(lr, "lr")


def _step_counter(leaves):
    first = _first_array(leaves, "params")
    xp = namespace(first)
    return xp.asarray(0, dtype=xp.int64, device=device(first))


def _zeros_like(leaves):
    out = []
    for p in leaves:
        out.append(None if p is None else namespace(p).zeros_like(p))
    return out


def global_norm(tree: Any):
    """Euclidean norm of all the leaves of `tree` taken together, as a 0-d array.

    Parameters
    ----------
    tree : pytree of arrays
        For example the gradients of a model. ``None`` leaves are skipped.

    Returns
    -------
    array
        ``sqrt(sum_i sum(leaf_i ** 2))``.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import optim
    >>> float(optim.global_norm({"a": np.array([3.0]), "b": np.array([[4.0]])}))
    5.0
    """
    leaves = [g for g in _flatten(tree)[0] if g is not None]
    first = _first_array(leaves, "tree")
    xp = namespace(first)
    total = None
    for g in leaves:
        s = xp.sum(g * g)
        total = s if total is None else total + s
    return xp.asarray(xp.sqrt(total), device=device(first))


def clip_by_global_norm(grads: Any, max_norm: float) -> Any:
    """Scale `grads` so that their :func:`global_norm` is at most `max_norm`.

    Parameters
    ----------
    grads : pytree of arrays
        Gradients (``None`` leaves are kept as ``None``).
    max_norm : float
        Largest allowed global norm, positive.

    Returns
    -------
    pytree
        ``grads * min(1, max_norm / global_norm(grads))``, same structure and dtypes.
        The scale is computed on the device: no host synchronisation.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import optim
    >>> g = optim.clip_by_global_norm({"w": np.array([3.0, 4.0])}, 1.0)
    >>> np.round(g["w"], 12).tolist()
    [0.6, 0.8]
    """
    max_norm = check_positive(max_norm, "max_norm")
    leaves, td = _flatten(grads)
    first = _first_array(leaves, "grads")
    xp = namespace(first)
    norm = xp.asarray(global_norm(grads), device=device(first))
    bound = xp.asarray(max_norm, dtype=norm.dtype, device=device(first))
    # scale = max_norm / max(norm, max_norm) = min(1, max_norm / norm)
    scale = bound / xp.maximum(norm, bound)
    out = [None if g is None else g * xp.astype(scale, g.dtype) for g in leaves]
    return tree_unflatten(td, out)


class AbstractOptimizer(abc.ABC):
    """An optimizer: ``state = opt.init(params)``, then
    ``params, state = opt.update(params, grads, state)`` once per step.

    The state is a pytree of arrays (with the step count as a 0-d integer array), so it
    can be saved next to the parameters with :func:`implicitnet.nn.save`.
    """

    @abc.abstractmethod
    def init(self, params: Any) -> Any:
        """Optimizer state for `params` (a pytree of arrays)."""

    @abc.abstractmethod
    def update(self, params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        """One step: return ``(new_params, new_state)``; nothing is modified in place."""


class SGDState(NamedTuple):
    """State of :class:`SGD`: step count and momentum buffers (``None`` without momentum)."""

    step: Any
    momentum: Any


@dataclass(frozen=True, kw_only=True)
class SGD(AbstractOptimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and weight decay.

    Parameters
    ----------
    lr : float or callable
        Learning rate, or a schedule ``lr(step) -> float`` of the step count (0 first).
    momentum : float, default: 0.0
        Momentum coefficient ``mu`` in ``[0, 1)``.
    nesterov : bool, default: False
        Use Nesterov momentum (needs ``momentum > 0``).
    weight_decay : float, default: 0.0
        L2 penalty ``lambda``, added to the gradient.

    Notes
    -----
    With ``g = grad + lambda p`` and buffer ``b`` (zero at the start)::

        b <- mu b + g
        d  = g + mu b   (Nesterov)   or   d = b
        p <- p - lr d

    This is the convention of PyTorch's ``torch.optim.SGD`` without dampening
    (Sutskever et al., "On the importance of initialization and momentum", 2013).

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import optim
    >>> opt = optim.SGD(lr=0.1)
    >>> params = {"w": np.array([1.0, 2.0])}
    >>> state = opt.init(params)
    >>> params, state = opt.update(params, {"w": np.array([1.0, -1.0])}, state)
    >>> params["w"].tolist(), int(state.step)
    ([0.9, 2.1], 1)
    """

    lr: float | Callable[[int], float]
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self):
        _check_lr(self.lr)
        check_real(self.momentum, "momentum", low=0.0, high=1.0, high_open=True)
        check_nonnegative(self.weight_decay, "weight_decay")
        if self.nesterov and self.momentum == 0:
            msg = "`nesterov=True` needs a positive `momentum`"
            raise ValueError(msg)

    def init(self, params: Any) -> SGDState:
        leaves, td = _flatten(params)
        step = _step_counter(leaves)
        buf = tree_unflatten(td, _zeros_like(leaves)) if self.momentum else None
        return SGDState(step=step, momentum=buf)

    def update(self, params: Any, grads: Any, state: SGDState) -> tuple[Any, SGDState]:
        p_leaves, g_leaves, td = _match(params, grads)
        lr = float(resolve_lr(self.lr)(int(state.step)))
        mu, wd = self.momentum, self.weight_decay
        b_leaves = _flatten(state.momentum)[0] if mu else [None] * len(p_leaves)
        new_p, new_b = [], []
        for p, g, b in zip(p_leaves, g_leaves, b_leaves):
            if p is None or g is None:
                new_p.append(p)
                new_b.append(b)
                continue
            if wd:
                g = g + wd * p
            if mu:
                b = mu * b + g
                d = g + mu * b if self.nesterov else b
            else:
                d = g
            new_p.append(p - lr * d)
            new_b.append(b)
        momentum = tree_unflatten(td, new_b) if mu else None
        return tree_unflatten(td, new_p), SGDState(step=state.step + 1, momentum=momentum)


class AdamState(NamedTuple):
    """State of :class:`Adam`/:class:`AdamW`: step count, first and second moments."""

    step: Any
    mu: Any
    nu: Any


def _adam_update(opt, params, grads, state, *, decoupled: bool):
    p_leaves, g_leaves, td = _match(params, grads)
    t = int(state.step) + 1
    lr = float(resolve_lr(opt.lr)(t - 1))
    b1, b2, eps, wd = opt.b1, opt.b2, opt.eps, opt.weight_decay
    # Bias corrections 1 - b^t are host scalars: no device work for them.
    c1 = 1.0 - b1**t
    c2 = 1.0 - b2**t
    m_leaves = _flatten(state.mu)[0]
    v_leaves = _flatten(state.nu)[0]
    new_p, new_m, new_v = [], [], []
    for p, g, m, v in zip(p_leaves, g_leaves, m_leaves, v_leaves):
        if p is None or g is None:
            new_p.append(p)
            new_m.append(m)
            new_v.append(v)
            continue
        xp = namespace(p, g)
        if wd and not decoupled:
            g = g + wd * p
        m = b1 * m + (1.0 - b1) * g
        v = b2 * v + (1.0 - b2) * (g * g)
        # p <- p - lr * m_hat / (sqrt(v_hat) + eps), m_hat = m / c1, v_hat = v / c2
        d = (m / c1) / (xp.sqrt(v / c2) + eps)
        if wd and decoupled:
            d = d + wd * p
        new_p.append(p - lr * d)
        new_m.append(m)
        new_v.append(v)
    new_state = AdamState(
        step=state.step + 1, mu=tree_unflatten(td, new_m), nu=tree_unflatten(td, new_v)
    )
    return tree_unflatten(td, new_p), new_state


def _adam_init(params) -> AdamState:
    leaves, td = _flatten(params)
    step = _step_counter(leaves)
    return AdamState(
        step=step,
        mu=tree_unflatten(td, _zeros_like(leaves)),
        nu=tree_unflatten(td, _zeros_like(leaves)),
    )


def _check_adam(opt) -> None:
    _check_lr(opt.lr)
    check_real(opt.b1, "b1", low=0.0, high=1.0, high_open=True)
    check_real(opt.b2, "b2", low=0.0, high=1.0, high_open=True)
    check_nonnegative(opt.eps, "eps")
    check_nonnegative(opt.weight_decay, "weight_decay")


@dataclass(frozen=True, kw_only=True)
class Adam(AbstractOptimizer):
    """Adam, with optional L2 weight decay added to the gradient.

    Parameters
    ----------
    lr : float or callable, default: 1e-3
        Learning rate, or a schedule ``lr(step) -> float`` (step 0 first).
    b1, b2 : float, default: 0.9, 0.999
        Decay rates of the first and second moment estimates, in ``[0, 1)``.
    eps : float, default: 1e-8
        Added to the denominator.
    weight_decay : float, default: 0.0
        L2 penalty ``lambda``: the gradient becomes ``grad + lambda p`` (coupled; see
        :class:`AdamW` for the decoupled form).

    Notes
    -----
    At step ``t = 1, 2, ...`` (Kingma & Ba, "Adam", 2015)::

        m <- b1 m + (1 - b1) g,      v <- b2 v + (1 - b2) g^2
        p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import optim
    >>> opt = optim.Adam(lr=0.1)
    >>> params = [np.array([1.0])]
    >>> params, state = opt.update(params, [np.array([5.0])], opt.init(params))
    >>> round(float(params[0][0]), 6)
    0.9
    """

    lr: float | Callable[[int], float] = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self):
        _check_adam(self)

    def init(self, params: Any) -> AdamState:
        return _adam_init(params)

    def update(self, params: Any, grads: Any, state: AdamState) -> tuple[Any, AdamState]:
        return _adam_update(self, params, grads, state, decoupled=False)


@dataclass(frozen=True, kw_only=True)
class AdamW(AbstractOptimizer):
    """Adam with decoupled weight decay.

    Parameters
    ----------
    lr : float or callable, default: 1e-3
        Learning rate, or a schedule ``lr(step) -> float``.
    b1, b2 : float, default: 0.9, 0.999
        Moment decay rates, in ``[0, 1)``.
    eps : float, default: 1e-8
        Added to the denominator.
    weight_decay : float, default: 1e-2
        Decoupled decay ``lambda``.

    Notes
    -----
    As :class:`Adam` without L2 term in the gradient, but the step is
    ``p <- p - lr (m_hat / (sqrt(v_hat) + eps) + lambda p)`` (Loshchilov & Hutter,
    "Decoupled weight decay regularization", 2019; PyTorch's convention, where the decay
    is scaled by the learning rate).

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import optim
    >>> opt = optim.AdamW(lr=0.1, weight_decay=0.5)
    >>> params = [np.array([1.0])]
    >>> params, state = opt.update(params, [np.array([0.0])], opt.init(params))
    >>> round(float(params[0][0]), 6)
    0.95
    """

    lr: float | Callable[[int], float] = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1e-2

    def __post_init__(self):
        _check_adam(self)

    def init(self, params: Any) -> AdamState:
        return _adam_init(params)

    def update(self, params: Any, grads: Any, state: AdamState) -> tuple[Any, AdamState]:
        return _adam_update(self, params, grads, state, decoupled=True)


@dataclass(frozen=True, kw_only=True)
class ClipByGlobalNorm(AbstractOptimizer):
    """Clip the gradients to a global norm, then step with an inner optimizer.

    Parameters
    ----------
    inner : AbstractOptimizer
        The optimizer that takes the clipped gradients; the state is its state.
    max_norm : float
        Largest allowed global gradient norm (see :func:`clip_by_global_norm`).

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import optim
    >>> opt = optim.ClipByGlobalNorm(inner=optim.SGD(lr=1.0), max_norm=1.0)
    >>> params = {"w": np.zeros(2)}
    >>> params, _ = opt.update(params, {"w": np.array([30.0, 40.0])}, opt.init(params))
    >>> params["w"].tolist()
    [-0.6, -0.8]
    """

    inner: AbstractOptimizer
    max_norm: float

    def __post_init__(self):
        if not isinstance(self.inner, AbstractOptimizer):
            msg = f"`inner` must be an optimizer, got {type(self.inner).__name__}"
            raise TypeError(msg)
        check_positive(self.max_norm, "max_norm")

    def init(self, params: Any) -> Any:
        return self.inner.init(params)

    def update(self, params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        return self.inner.update(params, clip_by_global_norm(grads, self.max_norm), state)
