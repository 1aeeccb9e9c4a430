"""Every differentiable primitive: VJP against finite differences, float32 vs float64.

``CASES`` is the table of primitives. Each entry draws a problem (shapes from
hypothesis, including broadcasting, 0-d arrays and size-1 axes; values from a seeded
NumPy generator, away from kinks) and returns the function, its NumPy arguments and
the arguments to differentiate. ``test_every_primitive_has_a_case`` walks the primitive
registry (after importing ``implicitnet.nn``, whose convolution primitives are in it)
and fails when a primitive has no entry here. ``SECOND_ORDER`` lists the primitives
whose VJP rules are differentiated once more (grad-of-grad), including the mixes of raw
arrays and tensors of an outer trace that array-api-strict is strict about.
"""

from __future__ import annotations

from functools import partial

import array_api_compat
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import implicitnet as inet
from implicitnet import nn, ops  # importing nn registers the convolution primitives
from implicitnet.autodiff import _core
from implicitnet.autodiff import _ops as _impl
from implicitnet.testing import assert_close, check_grads

# float32 gradients compared with float64 ones (themselves checked against finite
# differences in float64).
RTOL = {"float32": 2e-4, "float64": 1e-5}
ATOL = {"float32": 2e-5, "float64": 1e-9}

CASES = {}


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn

    return register


def shapes(max_dims=3, min_dims=0, min_side=1):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=3)


def bshapes(n=2, max_dims=3):
    return hnp.mutually_broadcastable_shapes(
        num_shapes=n, min_dims=0, max_dims=max_dims, max_side=3
    ).map(lambda s: s.input_shapes)


def normal(rng, shape):
    return rng.standard_normal(shape)


def positive(rng, shape):
    return rng.uniform(0.5, 2.0, shape)


def nonzero(rng, shape):
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 2.0, shape)


def axis_args(draw, ndim):
    """An `axis` (None, int or tuple) and `keepdims` for a reduction over `ndim` axes."""
    if ndim == 0:
        return None, draw(st.booleans())
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        axis = None
    elif kind == "int":
        axis = draw(st.integers(-ndim, ndim - 1))
    else:
        axis = tuple(
            draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
        )
    return axis, draw(st.booleans())


# --- elementwise -------------------------------------------------------------------

_UNARY = {
    "exp": normal,
    "log": positive,
    "log1p": positive,
    "expm1": normal,
    "sqrt": positive,
    "tanh": normal,
    "sin": normal,
    "cos": normal,
    "abs": nonzero,
    "negative": normal,
    "square": normal,
}


def _unary_case(name, domain):
    def make(draw, rng, xp):
        return getattr(ops, name), (domain(rng, draw(shapes())),), (0,)

    return make


for _name, _domain in _UNARY.items():
    case(_name)(_unary_case(_name, _domain))


def _binary_case(name, d1, d2):
    def make(draw, rng, xp):
        s1, s2 = draw(bshapes())
        return getattr(ops, name), (d1(rng, s1), d2(rng, s2)), (0, 1)

    return make


for _name, _d1, _d2 in [
    ("add", normal, normal),
    ("subtract", normal, normal),
    ("multiply", normal, normal),
    ("divide", normal, nonzero),
    ("pow", positive, normal),
    ("maximum", normal, normal),
    ("minimum", normal, normal),
    ("logaddexp", normal, normal),
]:
    case(_name)(_binary_case(_name, _d1, _d2))


@case("where")
def _(draw, rng, xp):
    sc, s1, s2 = draw(bshapes(3))
    cond = rng.uniform(size=sc) < 0.5
    return (
        (lambda x1, x2, c: ops.where(c, x1, x2)),
        (normal(rng, s1), normal(rng, s2), cond),
        (0, 1),
    )


@case("clip")
def _(draw, rng, xp):
    s = draw(shapes())
    lo = rng.uniform(-1.0, -0.2, s)
    hi = lo + rng.uniform(0.4, 1.5, s)
    x = 1.5 * rng.standard_normal(s)
    return (lambda x, lo, hi: ops.clip(x, min=lo, max=hi)), (x, lo, hi), (0, 1, 2)


@case("astype")
def _(draw, rng, xp):
    return (lambda x: ops.astype(x, xp.float64) * 2.0), (normal(rng, draw(shapes())),), (0,)


# --- reductions --------------------------------------------------------------------


def _reduction_case(name, domain):
    def make(draw, rng, xp):
        s = draw(shapes())
        axis, keepdims = axis_args(draw, len(s))
        fn = getattr(ops, name)
        return (lambda x: fn(x, axis=axis, keepdims=keepdims)), (domain(rng, s),), (0,)

    return make


for _name, _domain in [
    ("sum", normal),
    ("mean", normal),
    ("max", normal),
    ("min", normal),
    ("prod", nonzero),
]:
    case(_name)(_reduction_case(_name, _domain))


@case("linalg.vector_norm")
def _(draw, rng, xp):
    s = draw(shapes())
    axis, keepdims = axis_args(draw, len(s))
    return (
        (lambda x: ops.linalg.vector_norm(x, axis=axis, keepdims=keepdims)),
        (nonzero(rng, s),),
        (0,),
    )


# --- linear algebra ----------------------------------------------------------------


@case("matmul")
def _(draw, rng, xp):
    m, n, p = (draw(st.integers(1, 3)) for _ in range(3))
    b1, b2 = draw(bshapes(2, max_dims=2))
    s1 = (n,) if draw(st.booleans()) else (*b1, m, n)
    s2 = (n,) if draw(st.booleans()) else (*b2, n, p)
    return ops.matmul, (normal(rng, s1), normal(rng, s2)), (0, 1)


@case("matrix_transpose")
def _(draw, rng, xp):
    return ops.matrix_transpose, (normal(rng, draw(shapes(min_dims=2))),), (0,)


@case("tensordot")
def _(draw, rng, xp):
    sa = draw(shapes())
    k = draw(st.integers(0, len(sa)))
    axes_a = draw(st.permutations(range(len(sa))))[:k]
    free_b = draw(shapes(max_dims=2))
    # b holds the contracted axes in a random order among its free axes
    order = draw(st.permutations(range(k + len(free_b))))
    dims = [sa[a] for a in axes_a] + list(free_b)
    sb = tuple(dims[i] for i in order)
    axes_b = [order.index(i) for i in range(k)]
    axes = (list(axes_a), axes_b)
    return (lambda a, b: ops.tensordot(a, b, axes=axes)), (normal(rng, sa), normal(rng, sb)), (0, 1)


@case("vecdot")
def _(draw, rng, xp):
    k = draw(st.integers(1, 3))
    b1, b2 = draw(bshapes(2, max_dims=2))
    return ops.vecdot, (normal(rng, (*b1, k)), normal(rng, (*b2, k))), (0, 1)


@case("linalg.solve")
def _(draw, rng, xp):
    n = draw(st.integers(1, 3))
    b1, b2 = draw(bshapes(2, max_dims=2))
    A = normal(rng, (*b1, n, n)) + 3.0 * np.eye(n)
    if draw(st.booleans()):
        B = normal(rng, (n,))
    else:
        B = normal(rng, (*b2, n, draw(st.integers(1, 2))))
    return ops.linalg.solve, (A, B), (0, 1)


# --- shapes ------------------------------------------------------------------------


@case("reshape")
def _(draw, rng, xp):
    s = draw(shapes())
    target = draw(st.sampled_from([(-1,), tuple(reversed(s)), (1, *s), (*s, 1)]))
    return (lambda x: ops.reshape(x, target)), (normal(rng, s),), (0,)


@case("permute_dims")
def _(draw, rng, xp):
    s = draw(shapes())
    perm = tuple(draw(st.permutations(range(len(s)))))
    return (lambda x: ops.permute_dims(x, perm)), (normal(rng, s),), (0,)


@case("expand_dims")
def _(draw, rng, xp):
    s = draw(shapes())
    axis = draw(st.integers(-len(s) - 1, len(s)))
    return (lambda x: ops.expand_dims(x, axis=axis)), (normal(rng, s),), (0,)


@case("squeeze")
def _(draw, rng, xp):
    s = draw(shapes(min_dims=1))
    ones = [i for i, n in enumerate(s) if n == 1] or [0]
    s = tuple(1 if i in ones else n for i, n in enumerate(s))
    axis = tuple(ones) if draw(st.booleans()) else ones[0]
    return (lambda x: ops.squeeze(x, axis)), (normal(rng, s),), (0,)


@case("broadcast_to")
def _(draw, rng, xp):
    s1, s2 = draw(bshapes())
    target = np.broadcast_shapes(s1, s2)
    return (lambda x: ops.broadcast_to(x, target)), (normal(rng, s1),), (0,)


@case("flip")
def _(draw, rng, xp):
    s = draw(shapes())
    axis, _ = axis_args(draw, len(s))
    return (lambda x: ops.flip(x, axis=axis)), (normal(rng, s),), (0,)


@case("concat")
def _(draw, rng, xp):
    s = draw(shapes(min_dims=1))
    n = draw(st.integers(1, 3))
    if draw(st.booleans()):
        axis = None
        arrays = [normal(rng, draw(shapes())) for _ in range(n)]
    else:
        axis = draw(st.integers(-len(s), len(s) - 1))
        arrays = []
        for _ in range(n):
            si = list(s)
            si[axis] = draw(st.integers(1, 3))
            arrays.append(normal(rng, tuple(si)))
    return (lambda *a: ops.concat(list(a), axis=axis)), tuple(arrays), tuple(range(n))


@case("stack")
def _(draw, rng, xp):
    s = draw(shapes())
    n = draw(st.integers(1, 3))
    axis = draw(st.integers(-len(s) - 1, len(s)))
    arrays = tuple(normal(rng, s) for _ in range(n))
    return (lambda *a: ops.stack(list(a), axis=axis)), arrays, tuple(range(n))


def _index_key(draw, rng, xp, shape):
    """A valid array-API key: basic (slices, ints, None, Ellipsis) or integer arrays."""
    if draw(st.booleans()):
        # integer-array indexing (with repeats); array-API keys combine arrays with ints
        k = draw(st.integers(1, 4))
        key = [
            draw(st.integers(-n, n - 1))
            if draw(st.booleans())
            else xp.asarray(rng.integers(0, n, size=k))
            for n in shape
        ]
        if not any(hasattr(i, "shape") for i in key):
            key[0] = xp.asarray(rng.integers(0, shape[0], size=k))
        return tuple(key)
    key = []
    for n in shape:
        kind = draw(st.sampled_from(["slice", "int", "none"]))
        if kind == "slice":
            start = draw(st.integers(0, n - 1))
            # PyTorch refuses negative slice steps on its own tensors (a torch limit)
            steps = [1, 2] if array_api_compat.is_torch_namespace(xp) else [1, 2, -1]
            key.append(slice(start, None, draw(st.sampled_from(steps))))
        elif kind == "int":
            key.append(draw(st.integers(-n, n - 1)))
        else:
            key.extend([None, slice(None)])
    if draw(st.booleans()):
        key = [Ellipsis, *key[1:]]
    return tuple(key)


@case("getitem")
def _(draw, rng, xp):
    s = draw(shapes(min_dims=1))
    key = _index_key(draw, rng, xp, s)
    return (lambda x: x[key]), (normal(rng, s),), (0,)


@case("getitem_transpose")
def _(draw, rng, xp):
    s = draw(shapes(min_dims=1))
    key = _index_key(draw, rng, xp, s)
    gshape = tuple(xp.zeros(s)[key].shape)
    return (lambda g: _impl._scatter(g, shape=s, key=key)), (normal(rng, gshape),), (0,)


@case("take")
def _(draw, rng, xp):
    s = draw(shapes(min_dims=1))
    axis = draw(st.integers(-len(s), len(s) - 1))
    idx = xp.asarray(rng.integers(0, s[axis], size=draw(st.integers(1, 5))))
    return (lambda x: ops.take(x, idx, axis=axis)), (normal(rng, s),), (0,)


# --- primitives of implicitnet.nn ------------------------------------------------------


def _conv_problem(draw):
    """Shapes of ``x``, ``w`` and ``y = conv2d(x, w)``, with a stride and a padding."""
    n, c, o = (draw(st.integers(1, 2)) for _ in range(3))
    stride, padding = draw(st.integers(1, 2)), draw(st.integers(0, 1))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = draw(st.integers(max(kh - 2 * padding, 1), 5))
    w = draw(st.integers(max(kw - 2 * padding, 1), 5))
    ho, wo = ((m + 2 * padding - k) // stride + 1 for m, k in ((h, kh), (w, kw)))
    return (n, c, h, w), (o, c, kh, kw), (n, o, ho, wo), {"stride": stride, "padding": padding}


def _conv_case(draw, rng, primitive, inputs, **shape_args):
    """The case of a conv primitive of two arrays, their shapes `inputs` among x, w, y.

    `shape_args` names the keyword that receives a shape (``x_shape="x"``: the shape of x).
    """
    xs, ws, ys, conf = _conv_problem(draw)
    shape = {"x": xs, "w": ws, "y": ys}
    kw = {key: shape[name] for key, name in shape_args.items()}
    fun = partial(primitive, **kw, **conf)
    return fun, tuple(normal(rng, shape[name]) for name in inputs), (0, 1)


@case("conv2d")
def _(draw, rng, xp):
    return _conv_case(draw, rng, nn.conv2d, "xw")


@case("conv2d_input_grad")
def _(draw, rng, xp):
    return _conv_case(draw, rng, nn.conv2d_input_grad, "yw", x_shape="x")


@case("conv2d_weight_grad")
def _(draw, rng, xp):
    return _conv_case(draw, rng, nn.conv2d_weight_grad, "yx", w_shape="w")


# ----------------------------------------------------------------------------------

#: Modules whose primitives have their gradient checks in another test file.
TESTED_ELSEWHERE = {
    "implicitnet._adjoint": "tests/test_implicit.py (adjoint solve vs unrolled and FD)",
}


def _library_primitives():
    return [
        rec
        for rec in _core._REGISTRY
        if rec.module.startswith("implicitnet.")
        and rec.module not in TESTED_ELSEWHERE
        # Primitives defined by docstring examples (run by tests/test_docs.py) carry the
        # module's name but live in no file of the package.
        and rec.fun.__code__.co_filename.endswith(".py")
    ]


def test_every_primitive_has_a_case():
    recs = _library_primitives()
    modules = {rec.module for rec in recs}
    assert {_impl.__name__, "implicitnet.nn._conv"} <= modules, modules
    missing = sorted({rec.name for rec in recs} - set(CASES))
    assert not missing, f"primitives without an entry in CASES: {missing}"
    no_rule = sorted(rec.name for rec in recs if rec.vjp is None)
    assert not no_rule, f"primitives without a VJP rule: {no_rule}"


#: Exported functions of implicitnet that are not primitives of their own, and why.
NOT_PRIMITIVES = {
    "unbroadcast": "a helper of VJP rules, made of sum, reshape and astype",
}


def test_every_exported_function_has_a_case():
    """What the differentiable namespace and ``implicitnet.ops`` serve is tested here.

    Both are derived from the registry's exports, primitives and the wrappers that give
    them their array-API signatures (``reshape``, ``linalg.vector_norm``), so the table
    is checked against the exports too, each under its qualified name.
    """
    exported = {
        name for name, fn in _core._EXPORTS.items() if fn.__module__.startswith("implicitnet.")
    }
    assert {"add", "reshape", "linalg.solve", "linalg.vector_norm"} <= exported, exported
    missing = sorted(exported - set(CASES) - set(NOT_PRIMITIVES))
    assert not missing, f"exported functions without an entry in CASES: {missing}"


def _draw_case(xp, name, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    fun, args, argnums = CASES[name](data.draw, rng, xp)
    args = tuple(xp.asarray(a) for a in args)
    return fun, args, argnums


@pytest.mark.parametrize("name", sorted(CASES))
@given(data=st.data())
def test_vjp_matches_finite_differences(xp, name, data):
    fun, args, argnums = _draw_case(xp, name, data)
    check_grads(fun, args, argnums=argnums, elementwise=6)


@pytest.mark.parametrize("name", sorted(CASES))
@given(data=st.data())
def test_float32_gradients_match_float64(xp, name, data):
    fun, args, argnums = _draw_case(xp, name, data)

    def grads(dtype):
        cast = tuple(xp.astype(a, dtype) if i in argnums else a for i, a in enumerate(args))

        def f(*diff):
            call = list(cast)
            for i, d in zip(argnums, diff):
                call[i] = d
            return fun(*call)

        out, vjp_fn = inet.vjp(f, *(cast[i] for i in argnums))
        ct = xp.asarray(
            np.linspace(-1.0, 1.0, int(np.prod(out.shape))).reshape(out.shape), dtype=out.dtype
        )
        return vjp_fn(ct)

    g32, g64 = grads(xp.float32), grads(xp.float64)
    for a, b in zip(g32, g64):
        assert a.dtype == xp.float32
        assert_close(a, xp.astype(b, xp.float32), rtol=RTOL["float32"], atol=ATOL["float32"])


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=5)
@given(data=st.data())
def test_vjp_in_each_input_alone(xp, name, data):
    """Differentiating one input alone gives that input's part of the full VJP.

    The tape keeps only what a rule reads for the inputs that need a cotangent (see the
    ``save_inputs`` declarations), so this runs every rule with the other inputs
    released: a rule that read a value its declaration does not keep would fail here.
    """
    fun, args, argnums = _draw_case(xp, name, data)
    out = fun(*args)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    u = xp.asarray(rng.standard_normal(tuple(out.shape)), dtype=out.dtype)

    def vjp_in(positions):
        def f(*diff):
            call = list(args)
            for i, d in zip(positions, diff):
                call[i] = d
            return fun(*call)

        return inet.vjp(f, *(args[i] for i in positions))[1](u)

    full = vjp_in(argnums)
    for k, i in enumerate(argnums):
        (alone,) = vjp_in((i,))
        assert_close(alone, full[k], rtol=RTOL["float64"], atol=ATOL["float64"])


@pytest.mark.parametrize("name", ["add", "multiply", "sum", "matmul", "getitem", "tanh"])
@given(data=st.data())
def test_raw_arrays_give_raw_arrays(xp, name, data):
    """On raw arrays the primitives call the backend: no tensor comes back."""
    fun, args, _ = _draw_case(xp, name, data)
    out = fun(*args)
    assert not inet.autodiff.Tensor._implicitnet_tensor or type(out) is not inet.Tensor


def test_prod_gradient_with_zeros(xp):
    # closed form: d prod / d x_i = prod of the others
    x = xp.asarray([[2.0, 0.0, 3.0], [0.0, 0.0, 5.0], [1.0, 2.0, 4.0]])
    g = inet.grad(lambda x: ops.sum(ops.prod(x, axis=1)))(x)
    expected = xp.asarray([[0.0, 6.0, 0.0], [0.0, 0.0, 0.0], [8.0, 4.0, 2.0]])
    assert_close(g, expected, xp=xp)


def test_extremum_ties_split_evenly(xp):
    x = xp.asarray([1.0, 3.0, 3.0])
    assert_close(inet.grad(lambda x: ops.max(x))(x), xp.asarray([0.0, 0.5, 0.5]), xp=xp)
    assert_close(
        inet.grad(lambda x: ops.sum(ops.maximum(x, 3.0)))(x), xp.asarray([0.0, 0.5, 0.5]), xp=xp
    )


def test_vector_norm_other_orders_and_zero(xp):
    x = xp.asarray([[3.0, -4.0], [0.5, 2.0]])
    for ord_ in (1, 3, float("inf")):
        check_grads(lambda x, o=ord_: ops.linalg.vector_norm(x, axis=1, ord=o), (x,))
    g = inet.grad(lambda x: ops.linalg.vector_norm(x))(xp.zeros(3))
    assert_close(g, xp.zeros(3), xp=xp)


def test_scalar_operands(xp):
    x = xp.asarray([0.5, 1.5])
    check_grads(lambda x: 2.0**x + x**3 - 1.0 / x + 3.0 * x - (2 - x), (x,))


# --- second order ------------------------------------------------------------------

#: Primitives whose VJP rules are differentiated again (a representative set: products,
#: quotients, powers, transcendental functions, masks, reductions, linear algebra,
#: shapes, indexing and the convolution).
SECOND_ORDER = [
    "clip",
    "conv2d",
    "divide",
    "exp",
    "getitem",
    "matmul",
    "maximum",
    "mean",
    "minimum",
    "multiply",
    "pow",
    "reshape",
    "sum",
    "tanh",
    "where",
]


@pytest.mark.parametrize("name", SECOND_ORDER)
@settings(max_examples=4)
@given(data=st.data())
def test_second_order_matches_finite_differences(xp, name, data):
    """Gradients of ``vjp_fn(u)``, the way grad-of-grad and Hessian products use them.

    First every input is traced by both transforms. Then each cross term alone: the
    inner transform differentiates a raw-array argument while the outer one
    differentiates another argument or the cotangent, so the VJP rules meet raw arrays
    and outer tensors side by side (array-api-strict refuses a tensor on the right of a
    raw array's operator, so a rule that wrote ``raw * tensor`` would fail here).
    """
    fun, args, argnums = _draw_case(xp, name, data)
    out = fun(*args)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    u = xp.asarray(rng.standard_normal(tuple(out.shape)))

    def with_args(values, positions):
        call = list(args)
        for i, v in zip(positions, values):
            call[i] = v
        return call

    def full(u, *diff):
        _, vjp_fn = inet.vjp(lambda *d: fun(*with_args(d, argnums)), *diff)
        return vjp_fn(u)

    check_grads(full, (u, *(args[i] for i in argnums)), elementwise=0)

    for i in argnums:
        for j in [k for k in argnums if k != i] + ["ct"]:

            def cross(outer, i=i, j=j):
                call = args if j == "ct" else with_args([outer], [j])
                ct = outer if j == "ct" else u
                inner = inet.vjp(
                    lambda a: fun(*[a if k == i else v for k, v in enumerate(call)]), args[i]
                )
                return inner[1](ct)[0]

            check_grads(cross, (u if j == "ct" else args[j],), elementwise=0)


def test_grad_of_grad_with_raw_constants_on_both_sides(xp):
    """grad(grad(f)) where `f` mixes the traced input with raw arrays, in both orders."""
    c = xp.asarray([0.5, -1.5, 2.0])
    x = xp.asarray([0.3, -0.7, 1.1])

    def f(x):
        # raw constants met through functions: any operand order works
        y = (
            ops.multiply(c, x)
            + ops.divide(c, ops.exp(x))
            + ops.pow(1.0 + ops.tanh(x) ** 2, c)
            + ops.pow(c * c, x)
        )
        y = ops.maximum(c, y) + ops.minimum(y, c) + ops.clip(x, min=c, max=None)
        return ops.sum(ops.where(c > 0.0, y, x * x) ** 2)

    def g(x):
        return ops.sum(inet.grad(f)(x) * c)

    check_grads(g, (x,))
    check_grads(lambda c_: ops.sum(inet.grad(lambda x: ops.sum(ops.maximum(c_, x) ** 2))(x)), (c,))
