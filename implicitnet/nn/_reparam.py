"""Weight reparameterisations: weight norm, spectral norm, monotone operators."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .. import backends
from .._tree import static_field, tree_map
from .._validate import check_int, check_real
from .._xp import device, is_tensor, namespace
from ..autodiff import stop_gradient as _stop_gradient
from ._init import generator, normal_init
from ._module import Module

__all__ = [
    "MonotoneLinear",
    "SpectralNorm",
    "WeightNorm",
    "spectral_norm",
    "update_buffers",
    "weight_norm",
]


def _row_norms(v, *, xp):
    """Norm of each slice ``v[i]`` (over all axes but the first), shaped to broadcast."""
    axes = tuple(range(1, v.ndim))
    return xp.sqrt(xp.sum(v * v, axis=axes, keepdims=True))


def _without_weight(layer):
    if not (
        dataclasses.is_dataclass(layer)
        and any(f.name == "weight" for f in dataclasses.fields(layer))
    ):
        msg = f"`layer` must be a module with a `weight` field, got {type(layer).__name__}"
        raise TypeError(msg)
    return dataclasses.replace(layer, weight=None)


@dataclass(frozen=True)
class WeightNorm(Module):
    """A layer whose weight is ``W = g * v / ||v||``, the norm taken per output row.

    Parameters
    ----------
    inner : Module
        The layer, stored with ``weight=None``; it is called with ``weight=W``.
    v : array, shape like the weight
        Direction parameters.
    g : array, shape (out,)
        Per-row magnitudes.

    Notes
    -----
    Salimans & Kingma, "Weight normalization", 2016. For a weight of shape
    ``(out, ...)`` the norm of ``v[i]`` is over all its other axes. Build one from an
    existing layer with :func:`weight_norm`.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> layer = nn.weight_norm(nn.Linear(weight=np.array([[3.0, 4.0]]), bias=None))
    >>> layer.g.tolist(), layer.weight().tolist()
    ([5.0], [[3.0, 4.0]])
    """

    inner: Any
    v: Any
    g: Any

    def weight(self):
        """The effective weight ``g v / ||v||``."""
        xp = namespace(self.v, self.g)
        shape = (self.v.shape[0],) + (1,) * (self.v.ndim - 1)
        return xp.reshape(self.g, shape) * self.v / _row_norms(self.v, xp=xp)

    def __call__(self, *args, **kwargs):
        return dataclasses.replace(self.inner, weight=self.weight())(*args, **kwargs)


def weight_norm(layer) -> WeightNorm:
    """Reparameterise `layer`'s weight as ``g v / ||v||`` (same function at the start).

    Parameters
    ----------
    layer : Module
        A module with a ``weight`` field (``Linear``, ``Conv2d``, ...).

    Returns
    -------
    WeightNorm
        With ``v = weight`` and ``g = ||weight||`` per row.
    """
    inner = _without_weight(layer)
    v = layer.weight
    xp = namespace(v)
    g = xp.reshape(_row_norms(v, xp=xp), (v.shape[0],))
    return WeightNorm(inner=inner, v=v, g=g)


def _normalize(x, eps, *, xp):
    return x / (xp.sqrt(xp.sum(x * x)) + eps)


@dataclass(frozen=True)
class SpectralNorm(Module):
    """A layer whose weight is ``W / sigma(W)``, with ``sigma`` by power iteration.

    Parameters
    ----------
    inner : Module
        The layer, stored with ``weight=None``.
    weight_orig : array, shape (out, ...)
        The unnormalised weight (trained).
    u : array, shape (out,)
        Power-iteration vector: a buffer, not a parameter (no gradient flows into it).
    n_power_iterations : int, default: 1
        Power iterations per call, started from `u` (static).
    eps : float, default: 1e-12
        Guards the normalisations (static).

    Notes
    -----
    Miyato et al., "Spectral normalization for GANs", 2018. With ``M`` the weight
    reshaped to ``(out, -1)`` and ``u`` held constant, each call runs
    ``v <- M^T u / ||M^T u||``, ``u <- M v / ||M v||`` and uses
    ``sigma = u^T M v`` (differentiable in ``M`` only). The call is a pure function of
    the module, so every iteration of a fixed-point solve sees the same map. The
    buffer is advanced functionally: ``model = update_buffers(model)`` once per training
    step replaces each ``u`` by its iterate.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> layer = nn.spectral_norm(nn.Linear(weight=np.diag([3.0, 1.0]), bias=None), seed=0)
    >>> for _ in range(20):
    ...     layer = nn.update_buffers(layer)
    >>> np.round(layer.weight(), 6).tolist()
    [[1.0, 0.0], [0.0, 0.333333]]
    """

    inner: Any
    weight_orig: Any
    u: Any
    n_power_iterations: int = static_field(default=1)
    eps: float = static_field(default=1e-12)

    def _iterate(self, *, xp):
        m = xp.reshape(_stop_gradient(self.weight_orig), (self.weight_orig.shape[0], -1))
        u = _stop_gradient(self.u)
        v = None
        for _ in range(max(self.n_power_iterations, 1)):
            v = _normalize(xp.matmul(xp.matrix_transpose(m), u), self.eps, xp=xp)
            u = _normalize(xp.matmul(m, v), self.eps, xp=xp)
        return u, v

    def sigma(self):
        """The spectral-norm estimate ``u^T M v``."""
        xp = namespace(self.weight_orig, self.u)
        u, v = self._iterate(xp=xp)
        m = xp.reshape(self.weight_orig, (self.weight_orig.shape[0], -1))
        return xp.sum(u * xp.matmul(m, v))

    def weight(self):
        """The normalised weight ``W / sigma``."""
        return self.weight_orig / self.sigma()

    def __call__(self, *args, **kwargs):
        return dataclasses.replace(self.inner, weight=self.weight())(*args, **kwargs)

    def updated(self) -> SpectralNorm:
        """A copy with `u` advanced by the power iterations (not differentiated)."""
        xp = namespace(self.weight_orig, self.u)
        u, _ = self._iterate(xp=xp)
        while is_tensor(u):
            u = u._implicitnet_data
        return dataclasses.replace(self, u=u)


def spectral_norm(layer, *, n_power_iterations: int = 1, seed=0) -> SpectralNorm:
    """Reparameterise `layer`'s weight as ``W / sigma(W)``.

    Parameters
    ----------
    layer : Module
        A module with a ``weight`` field.
    n_power_iterations : int, default: 1
        Power iterations per call.
    seed : int or numpy.random.Generator, default: 0
        Source of the initial power-iteration vector.

    Returns
    -------
    SpectralNorm
    """
    check_int(n_power_iterations, "n_power_iterations", minimum=1)
    inner = _without_weight(layer)
    w = layer.weight
    be = backends.backend_of(w)
    xp = namespace(w)
    u = normal_init(
        (w.shape[0],), 1.0, generator(seed), dtype=w.dtype, backend=be, device=device(w)
    )
    u = _normalize(u, 1e-12, xp=xp)
    return SpectralNorm(inner=inner, weight_orig=w, u=u, n_power_iterations=n_power_iterations)


def update_buffers(tree):
    """Advance every buffer in `tree` (the power-iteration vectors of :class:`SpectralNorm`).

    Call once per training step, after the optimizer update: ``model = update_buffers(model)``.
    """
    return tree_map(
        lambda m: m.updated() if isinstance(m, SpectralNorm) else m,
        tree,
        is_leaf=lambda m: isinstance(m, SpectralNorm),
    )


@dataclass(frozen=True)
class MonotoneLinear(Module):
    """A linear map ``z -> W z`` with ``I - W`` strongly monotone by construction.

    Parameters
    ----------
    A, B : array, shape (n, n)
        Free parameters.
    m : float, default: 0.05
        Monotonicity margin in ``(0, 1]`` (static).

    Notes
    -----
    ``W = (1 - m) I - A^T A + B - B^T`` (Winston & Kolter, "Monotone operator
    equilibrium networks", 2020). The symmetric part of ``I - W`` is
    ``m I + A^T A``, so ``<(I - W) z, z> >= m ||z||^2`` for every ``z``: the operator
    ``z -> (I - W) z`` is strongly monotone, and the equilibrium
    ``z = relu(W z + U x + b)`` exists and is unique for any `A`, `B`, input. It is
    found from any start by forward-backward splitting,
    ``z <- relu(z - alpha ((I - W) z - (U x + b)))`` with ``0 < alpha < 2 m / L^2``,
    ``L = ||I - W||_2`` (see :meth:`step_size`).

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> lin = nn.MonotoneLinear.create(4, m=0.1, seed=0)
    >>> S = np.eye(4) - lin.weight()
    >>> bool(np.linalg.eigvalsh((S + S.T) / 2).min() >= 0.1 - 1e-12)
    True
    """

    A: Any
    B: Any
    m: float = static_field(default=0.05)

    def __post_init__(self):
        check_real(self.m, "m", low=0.0, high=1.0, low_open=True)

    def weight(self):
        """``W = (1 - m) I - A^T A + B - B^T``."""
        xp = namespace(self.A, self.B)
        n = self.A.shape[1]
        eye = xp.eye(n, dtype=self.A.dtype, device=device(self.A))
        AtA = xp.matmul(xp.matrix_transpose(self.A), self.A)
        # Parameters first: a raw array on the left of a tensor operator would refuse it.
        return self.B - xp.matrix_transpose(self.B) - AtA + (1.0 - self.m) * eye

    def __call__(self, z):
        xp = namespace(z, self.A, self.B)
        return xp.matmul(z, xp.matrix_transpose(self.weight()))

    def step_size(self) -> float:
        """A safe forward-backward step ``alpha = m / L^2`` with ``L = ||I - W||_2``.

        Uses the spectral norm (an SVD through ``linalg.matrix_norm``): call it on the
        raw parameters, outside differentiated code.
        """
        xp = namespace(self.A)
        n = self.A.shape[1]
        S = xp.eye(n, dtype=self.A.dtype, device=device(self.A)) - self.weight()
        L = float(xp.linalg.matrix_norm(S, ord=2))
        return self.m / (L * L)

    @classmethod
    def create(
        cls,
        n: int,
        *,
        m: float = 0.05,
        scale: float | None = None,
        seed=0,
        dtype=None,
        backend="numpy",
        device=None,
    ) -> MonotoneLinear:
        """`A`, `B` with i.i.d. normal entries of standard deviation `scale`.

        Default ``scale = 1 / sqrt(n)``.
        """
        rng = generator(seed)
        scale = 1.0 / n**0.5 if scale is None else float(scale)
        kw = {"dtype": dtype, "backend": backends.get_backend(backend), "device": device}
        A = normal_init((n, n), scale, rng, **kw)
        B = normal_init((n, n), scale, rng, **kw)
        return cls(A=A, B=B, m=m)
