"""2-D convolution kernels (NCHW) for NumPy and CuPy: im2col through strided views.

``conv2d(x, w, stride, padding)`` computes the cross-correlation

    y[n, o, i, j] = sum_{c, a, b} w[o, c, a, b] * xp[n, c, s i + a, s j + b]

with ``xp`` the input zero-padded by ``padding`` on each side of both spatial axes, and
``s = stride``. Its two vector-Jacobian products are ``conv2d_input_grad`` (the
transposed convolution) and ``conv2d_weight_grad``. Each function takes the array
module (``numpy`` or ``cupy``) as its first argument; the backend modules bind it.
"""

from __future__ import annotations


def _out_size(n: int, k: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - k) // stride + 1


def _pad(m, x, padding: int):
    if padding == 0:
        return x
    p = padding
    return m.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))


def _windows(m, xp_, kh: int, kw: int, ho: int, wo: int, stride: int):
    """View of shape ``(N, C, Ho, Wo, kh, kw)`` on the padded input (no copy)."""
    n, c = xp_.shape[:2]
    sn, sc, sh, sw = xp_.strides
    shape = (n, c, ho, wo, kh, kw)
    strides = (sn, sc, stride * sh, stride * sw, sh, sw)
    return m.lib.stride_tricks.as_strided(xp_, shape=shape, strides=strides)


def conv2d(m, x, w, stride: int = 1, padding: int = 0):
    """``y[N, O, Ho, Wo]`` from ``x[N, C, H, W]`` and ``w[O, C, kh, kw]``."""
    kh, kw = w.shape[2:]
    ho = _out_size(x.shape[2], kh, stride, padding)
    wo = _out_size(x.shape[3], kw, stride, padding)
    xp_ = m.ascontiguousarray(_pad(m, x, padding))
    cols = _windows(m, xp_, kh, kw, ho, wo, stride)
    # im2col + one matmul: tensordot copies the windows into a (N Ho Wo, C kh kw) matrix.
    y = m.tensordot(cols, w, axes=([1, 4, 5], [1, 2, 3]))  # (N, Ho, Wo, O)
    return m.ascontiguousarray(y.transpose(0, 3, 1, 2))


def conv2d_input_grad(m, g, w, x_shape, stride: int = 1, padding: int = 0):
    """VJP of :func:`conv2d` in ``x``: ``dx[N, C, H, W]`` from ``g[N, O, Ho, Wo]``."""
    n, c, h, wd = x_shape
    kh, kw = w.shape[2:]
    ho, wo = g.shape[2:]
    # cols[n, i, j, c, a, b] = sum_o g[n, o, i, j] w[o, c, a, b]  (one matmul, col2im below)
    cols = m.tensordot(g, w, axes=([1], [0])).transpose(0, 3, 1, 2, 4, 5)  # (N,C,Ho,Wo,kh,kw)
    hp, wp = h + 2 * padding, wd + 2 * padding
    dxp = m.zeros((n, c, hp, wp), dtype=cols.dtype)
    for a in range(kh):
        for b in range(kw):
            dxp[
                :, :, a : a + stride * (ho - 1) + 1 : stride, b : b + stride * (wo - 1) + 1 : stride
            ] += cols[..., a, b]
    if padding:
        dxp = dxp[:, :, padding : padding + h, padding : padding + wd]
    return m.ascontiguousarray(dxp)


def conv2d_weight_grad(m, g, x, w_shape, stride: int = 1, padding: int = 0):
    """VJP of :func:`conv2d` in ``w``: ``dw[O, C, kh, kw]`` from ``g`` and ``x``."""
    kh, kw = w_shape[2:]
    ho, wo = g.shape[2:]
    xp_ = m.ascontiguousarray(_pad(m, x, padding))
    cols = _windows(m, xp_, kh, kw, ho, wo, stride)
    # dw[o, c, a, b] = sum_{n, i, j} g[n, o, i, j] cols[n, c, i, j, a, b]
    return m.ascontiguousarray(m.tensordot(g, cols, axes=([0, 2, 3], [0, 2, 3])))
