"""Layers: ``Linear``, ``Conv2d``, ``LayerNorm``, ``GroupNorm``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import backends
from .._tree import static_field
from .._validate import check_divides, check_int, check_positive
from .._xp import namespace
from ..backends import host
from ._conv import conv2d
from ._init import fan_in_bound, generator, uniform_init
from ._module import Module

__all__ = ["Conv2d", "GroupNorm", "LayerNorm", "Linear"]


def _pair(name: str, value) -> tuple[int, int]:
    if isinstance(value, tuple | list):
        if len(value) != 2:
            msg = f"`{name}` must be an int or a pair of ints, got {value!r}"
            raise ValueError(msg)
        return check_int(value[0], name, minimum=1), check_int(value[1], name, minimum=1)
    v = check_int(value, name, minimum=1)
    return v, v


@dataclass(frozen=True)
class Linear(Module):
    """Affine map ``y = x W^T + b`` on the last axis.

    Parameters
    ----------
    weight : array, shape (out_features, in_features)
    bias : array, shape (out_features,), or None

    See Also
    --------
    Linear.create : initialise from a seed.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> lin = nn.Linear(weight=np.array([[1.0, 2.0]]), bias=np.array([0.5]))
    >>> lin(np.array([[1.0, 1.0]])).tolist()
    [[3.5]]
    """

    weight: Any
    bias: Any = None

    def __call__(self, x):
        xp = namespace(x, self.weight, self.bias)
        y = xp.matmul(x, xp.matrix_transpose(self.weight))
        return y if self.bias is None else y + self.bias

    @classmethod
    def create(
        cls,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        seed=0,
        dtype=None,
        backend="numpy",
        device=None,
    ) -> Linear:
        """A layer with PyTorch's default initialisation, ``U(-1/sqrt(in), 1/sqrt(in))``.

        Parameters
        ----------
        in_features, out_features : int
            Input and output sizes.
        bias : bool, default: True
            Whether to add a bias.
        seed : int or numpy.random.Generator, default: 0
            Source of the initial values (the same on every backend).
        dtype : dtype or str, optional
            float32 or float64 (default).
        backend : str or backend module, default: "numpy"
            Where the arrays live.
        device : optional
            Device of the arrays.
        """
        in_features = check_int(in_features, "in_features", minimum=1)
        out_features = check_int(out_features, "out_features", minimum=1)
        rng = generator(seed)
        bound = fan_in_bound(in_features)
        kw = {"dtype": dtype, "backend": backends.get_backend(backend), "device": device}
        w = uniform_init((out_features, in_features), bound, rng, **kw)
        b = uniform_init((out_features,), bound, rng, **kw) if bias else None
        return cls(weight=w, bias=b)


@dataclass(frozen=True)
class Conv2d(Module):
    """2-D convolution (cross-correlation) of NCHW images, plus a per-channel bias.

    Parameters
    ----------
    weight : array, shape (out_channels, in_channels, kh, kw)
    bias : array, shape (out_channels,), or None
    stride : int, default: 1
    padding : int, default: 0
        Static configuration (part of the tree structure, not leaves).

    See Also
    --------
    conv2d : the differentiable operation.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> conv = nn.Conv2d.create(1, 4, 3, padding=1, seed=0)
    >>> conv(np.ones((2, 1, 8, 8))).shape
    (2, 4, 8, 8)
    """

    weight: Any
    bias: Any = None
    stride: int = static_field(default=1)
    padding: int = static_field(default=0)

    def __post_init__(self):
        check_int(self.stride, "stride", minimum=1)
        check_int(self.padding, "padding", minimum=0)

    def __call__(self, x):
        if x.ndim != 4:
            msg = f"`x` must be 4-D (N, C, H, W), got shape {tuple(x.shape)}"
            raise ValueError(msg)
        y = conv2d(x, self.weight, stride=self.stride, padding=self.padding)
        if self.bias is None:
            return y
        xp = namespace(y, self.bias)
        return y + xp.reshape(self.bias, (1, -1, 1, 1))

    @classmethod
    def create(
        cls,
        in_channels: int,
        out_channels: int,
        kernel_size,
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        seed=0,
        dtype=None,
        backend="numpy",
        device=None,
    ) -> Conv2d:
        """A layer with PyTorch's default initialisation, ``U(-1/sqrt(fan_in), ...)``.

        Parameters
        ----------
        in_channels, out_channels : int
            Channel counts.
        kernel_size : int or (int, int)
            Filter height and width.
        stride, padding : int
            As in :func:`conv2d`.
        bias, seed, dtype, backend, device
            As in :meth:`Linear.create`.
        """
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        out_channels = check_int(out_channels, "out_channels", minimum=1)
        kh, kw = _pair("kernel_size", kernel_size)
        rng = generator(seed)
        bound = fan_in_bound(in_channels * kh * kw)
        kw_ = {"dtype": dtype, "backend": backends.get_backend(backend), "device": device}
        w = uniform_init((out_channels, in_channels, kh, kw), bound, rng, **kw_)
        b = uniform_init((out_channels,), bound, rng, **kw_) if bias else None
        return cls(weight=w, bias=b, stride=stride, padding=padding)


def _ones(shape, *, dtype, backend, device):
    be = backends.get_backend(backend)
    ns = be.namespace()
    return ns.ones(shape, dtype=getattr(ns, host.dtype_name(dtype)), device=device)


def _zeros(shape, *, dtype, backend, device):
    be = backends.get_backend(backend)
    ns = be.namespace()
    return ns.zeros(shape, dtype=getattr(ns, host.dtype_name(dtype)), device=device)


def _standardize(x, axes, eps, *, xp):
    """``(x - mean) / sqrt(var + eps)``, mean and (biased) variance over `axes`."""
    d = x - xp.mean(x, axis=axes, keepdims=True)
    var = xp.mean(d * d, axis=axes, keepdims=True)
    return d / xp.sqrt(var + eps)


def _scale_shift(y, weight, bias, shape, *, xp):
    """``y * weight + bias`` (either may be None), reshaped to `shape` unless it is None."""
    if weight is not None:
        y = y * (weight if shape is None else xp.reshape(weight, shape))
    if bias is not None:
        y = y + (bias if shape is None else xp.reshape(bias, shape))
    return y


@dataclass(frozen=True)
class LayerNorm(Module):
    """Normalise over the trailing axes, then scale and shift.

    Parameters
    ----------
    weight, bias : array of the normalised shape, or None
        Elementwise affine parameters.
    num_axes : int, default: 1
        Number of trailing axes normalised together (static).
    eps : float, default: 1e-5
        Added to the variance (static).

    Notes
    -----
    ``y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias`` with mean and (biased)
    variance over the last `num_axes` axes (Ba, Kiros & Hinton, 2016).

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> ln = nn.LayerNorm.create(3)
    >>> np.round(ln(np.array([[1.0, 2.0, 3.0]])), 4).tolist()
    [[-1.2247, 0.0, 1.2247]]
    """

    weight: Any = None
    bias: Any = None
    num_axes: int = static_field(default=1)
    eps: float = static_field(default=1e-5)

    def __post_init__(self):
        check_int(self.num_axes, "num_axes", minimum=1)
        check_positive(self.eps, "eps")

    def __call__(self, x):
        if x.ndim < self.num_axes:
            msg = f"`x` must have at least {self.num_axes} axes, got shape {tuple(x.shape)}"
            raise ValueError(msg)
        xp = namespace(x, self.weight, self.bias)
        axes = tuple(range(x.ndim - self.num_axes, x.ndim))
        y = _standardize(x, axes, self.eps, xp=xp)
        return _scale_shift(y, self.weight, self.bias, None, xp=xp)

    @classmethod
    def create(
        cls,
        normalized_shape,
        *,
        eps: float = 1e-5,
        affine: bool = True,
        dtype=None,
        backend="numpy",
        device=None,
    ) -> LayerNorm:
        """Unit weight and zero bias of `normalized_shape` (an int or a tuple)."""
        shape = (
            (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        )
        kw = {"dtype": dtype, "backend": backend, "device": device}
        if not affine:
            return cls(weight=None, bias=None, num_axes=len(shape), eps=eps)
        return cls(
            weight=_ones(shape, **kw), bias=_zeros(shape, **kw), num_axes=len(shape), eps=eps
        )


@dataclass(frozen=True)
class GroupNorm(Module):
    """Normalise groups of channels of ``x[N, C, ...]``, then scale and shift per channel.

    Parameters
    ----------
    weight, bias : array of shape (C,), or None
        Per-channel affine parameters.
    num_groups : int
        Number of groups; must divide ``C`` (static).
    eps : float, default: 1e-5
        Added to the variance (static).

    Notes
    -----
    The channels are split into `num_groups` consecutive groups; each sample's group
    (with all its spatial positions) is normalised to zero mean and unit variance
    (Wu & He, "Group normalization", 2018). Independent of the batch size, which suits
    equilibrium models.

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> gn = nn.GroupNorm.create(2, 4)
    >>> y = gn(np.arange(32.0).reshape(1, 4, 2, 4))
    >>> bool(abs(float(y[0, :2].mean())) < 1e-12)
    True
    """

    weight: Any = None
    bias: Any = None
    num_groups: int = static_field(default=1)
    eps: float = static_field(default=1e-5)

    def __post_init__(self):
        check_int(self.num_groups, "num_groups", minimum=1)
        check_positive(self.eps, "eps")

    def __call__(self, x):
        if x.ndim < 2:
            msg = f"`x` must be (N, C, ...), got shape {tuple(x.shape)}"
            raise ValueError(msg)
        n, c = x.shape[:2]
        if c % self.num_groups:
            msg = f"`num_groups` ({self.num_groups}) must divide the {c} channels of `x`"
            raise ValueError(msg)
        xp = namespace(x, self.weight, self.bias)
        shape = tuple(x.shape)
        g = xp.reshape(x, (n, self.num_groups, -1))
        y = xp.reshape(_standardize(g, (2,), self.eps, xp=xp), shape)
        bshape = (1, c) + (1,) * (x.ndim - 2)
        return _scale_shift(y, self.weight, self.bias, bshape, xp=xp)

    @classmethod
    def create(
        cls,
        num_groups: int,
        num_channels: int,
        *,
        eps: float = 1e-5,
        affine: bool = True,
        dtype=None,
        backend="numpy",
        device=None,
    ) -> GroupNorm:
        """Unit weight and zero bias for `num_channels` channels."""
        num_channels = check_int(num_channels, "num_channels", minimum=1)
        num_groups = check_int(num_groups, "num_groups", minimum=1)
        check_divides(num_groups, "num_groups", num_channels, "num_channels")
        kw = {"dtype": dtype, "backend": backend, "device": device}
        if not affine:
            return cls(num_groups=num_groups, eps=eps)
        return cls(
            weight=_ones((num_channels,), **kw),
            bias=_zeros((num_channels,), **kw),
            num_groups=num_groups,
            eps=eps,
        )
