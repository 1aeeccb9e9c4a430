"""The shared argument checks (``implicitnet._validate``) and the linear solvers'
function forms generated from their classes (``implicitnet.linalg._forms``).

The checks are held against their documented contract: the exception type (TypeError
for the wrong kind of value, ValueError for a value out of range), the argument named
in backticks, and the wording callers rely on. The function forms are held against
their classes: same keyword arguments, same results, documented parameters.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import numpy as np
import pytest

import implicitnet as inet
from implicitnet import _validate as v
from implicitnet.testing import assert_close

# (call, exception, message pattern): one row per rule.
REJECTED = [
    (lambda: v.check_real("1", "omega"), TypeError, r"`omega` must be a real number, got '1'"),
    (lambda: v.check_real(True, "omega"), TypeError, r"`omega` must be a real number"),
    (lambda: v.check_real(float("nan"), "omega"), ValueError, r"`omega` must lie in"),
    (
        lambda: v.check_real(2.0, "omega", low=0.0, high=2.0, low_open=True, high_open=True),
        ValueError,
        r"`omega` must lie in \(0\.0, 2\.0\), got 2\.0",
    ),
    (lambda: v.check_real(-1, "x", low=0), ValueError, r"`x` must lie in \[0, inf\), got -1"),
    (lambda: v.check_positive(0.0, "lr"), ValueError, r"`lr` must be finite and positive"),
    (lambda: v.check_positive(float("inf"), "lr"), ValueError, r"`lr` must be finite"),
    (lambda: v.check_nonnegative(-1e-3, "atol"), ValueError, r"`atol` must be finite and non-"),
    (lambda: v.check_nonnegative(None, "atol"), TypeError, r"`atol` must be a real number"),
    (lambda: v.check_int(2.5, "m"), TypeError, r"`m` must be an integer, got 2\.5"),
    (lambda: v.check_int(False, "m"), TypeError, r"`m` must be an integer"),
    (lambda: v.check_int(0, "m", minimum=1), ValueError, r"`m` must be at least 1, got 0"),
    (lambda: v.check_int(None, "m", minimum=1), TypeError, r"`m` must be an integer"),
    (lambda: v.check_tolerances(-1.0, 0.0, 10), ValueError, r"`rtol` must be finite"),
    (lambda: v.check_tolerances(1e-6, "0", 10), TypeError, r"`atol` must be a real number"),
    (lambda: v.check_tolerances(1e-6, 0.0, 0), ValueError, r"`maxiter` must be at least 1"),
    (lambda: v.check_tolerances(1e-6, 0.0, None), TypeError, r"`maxiter` must be an integer"),
    (lambda: v.check_callable(3, "f"), TypeError, r"`f` must be callable, got int"),
    (
        lambda: v.check_callable(3, "callback", optional=True),
        TypeError,
        r"`callback` must be callable or None, got int",
    ),
    (lambda: v.check_batch_axis(1.0, 2, "b"), TypeError, r"`batch_axis` must be an integer"),
    (
        lambda: v.check_batch_axis(2, 2, "b"),
        ValueError,
        r"`batch_axis` 2 is out of range for `b` with 2 dimensions",
    ),
    (
        lambda: v.check_finite(np.array([1.0, np.inf]), "x0", xp=np),
        v.NonFiniteError,
        r"`x0` must be finite \(it contains NaN or infinity\)",
    ),
    (
        lambda: v.check_arg_batch_axes(0, (np.ones(3),), None, np.ones((3, 2))),
        ValueError,
        r"`arg_batch_axes` needs `batch_axis`",
    ),
    (
        lambda: v.check_arg_batch_axes((0, 0), (np.ones(3),), 0, np.ones((3, 2))),
        ValueError,
        r"`arg_batch_axes` has 2 entries but `args` has 1",
    ),
    (
        lambda: v.check_arg_batch_axes("0", (np.ones(3),), 0, np.ones((3, 2))),
        TypeError,
        r"`arg_batch_axes` must be an int, None or a sequence",
    ),
    (
        lambda: v.check_arg_batch_axes((1.0,), (np.ones(3),), 0, np.ones((3, 2))),
        TypeError,
        r"`arg_batch_axes\[0\]` must be an int or None",
    ),
    (
        lambda: v.check_arg_batch_axes(0, (2.0,), 0, np.ones((3, 2))),
        TypeError,
        r"`args\[0\]` has a batch axis in `arg_batch_axes` but holds non-arrays",
    ),
    (
        lambda: v.check_arg_batch_axes(2, (np.ones((3, 2)),), 0, np.ones((3, 2))),
        ValueError,
        r"`arg_batch_axes\[0\]` = 2 is out of range for an argument with 2 dimensions",
    ),
    (
        lambda: v.check_arg_batch_axes(0, (np.ones(4),), 0, np.ones((3, 2))),
        ValueError,
        r"`args\[0\]` has size 4 along its batch axis 0, but `x0` holds 3 systems",
    ),
]


@pytest.mark.parametrize(("call", "error", "match"), REJECTED, ids=range(len(REJECTED)))
def test_checks_reject_with_the_argument_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_checks_return_plain_numbers():
    assert v.check_real(np.float32(0.5), "omega", low=0.0) == 0.5
    assert type(v.check_real(1, "omega")) is float
    assert v.check_real(float("inf"), "factor", low=1.0) == float("inf")
    assert v.check_positive(2, "lr") == 2.0
    assert v.check_nonnegative(0, "atol") == 0.0
    assert type(v.check_int(np.int64(3), "m", minimum=1)) is int
    assert v.check_int(None, "maxiter", minimum=1, optional=True) is None
    assert v.check_batch_axis(-1, 3, "x0") == 2
    assert v.check_batch_axis(None, 3, "x0") is None
    v.check_tolerances(0.0, 0.0, None, maxiter_optional=True)
    v.check_callable(None, "callback", optional=True)
    v.check_finite(np.ones(2), "x0", xp=np)


def test_arg_batch_axes_are_normalised_per_argument():
    x0 = np.ones((3, 2))
    args = (np.ones((2, 3)), 1.5, {"w": np.ones((4, 3)), "b": np.ones(3)})
    assert v.check_arg_batch_axes((1, None, -1), args, 0, x0) == (1, None, -1)
    assert v.check_arg_batch_axes(-1, args[:1], 0, x0) == (1,)
    assert v.check_arg_batch_axes(None, args, 0, x0) == (None, None, None)


def test_python_numbers():
    assert v.is_python_numbers(1.5)
    assert v.is_python_numbers([[1, 2.0], [3, 4]])
    assert not v.is_python_numbers([])
    assert not v.is_python_numbers(True)
    assert not v.is_python_numbers(np.ones(2))
    assert not v.is_python_numbers([1.0, "2"])


def test_non_finite_error_is_a_value_error(xp):
    assert issubclass(v.NonFiniteError, ValueError)
    b = xp.asarray([1.0, float("nan")])
    with pytest.raises(v.NonFiniteError, match="`b` must be finite"):
        inet.linalg.gmres(xp.asarray(np.eye(2)), b)


# -- Function forms of the linear solvers -------------------------------------------------

FORMS = {
    "gmres": (inet.linalg.gmres, inet.linalg.GMRES, {"restart": 3}),
    "bicgstab": (inet.linalg.bicgstab, inet.linalg.BiCGSTAB, {"maxiter": 40}),
    "neumann": (inet.linalg.neumann, inet.linalg.Neumann, {"maxiter": 80}),
    "broyden": (inet.linalg.broyden, inet.linalg.Broyden, {"m": 3}),
    "anderson": (inet.linalg.anderson, inet.linalg.Anderson, {"m": 3, "regularization": 1e-8}),
}


@pytest.mark.parametrize("name", sorted(FORMS))
def test_function_form_signature_is_the_class_fields(name):
    fun, cls, _ = FORMS[name]
    sig = inspect.signature(fun)
    fields = [f.name for f in dataclasses.fields(cls)]
    assert list(sig.parameters) == ["A", "b", "x0", *fields, "batch_axis", "xp"]
    kinds = {p.name: p.kind for p in sig.parameters.values()}
    assert kinds["A"] is kinds["b"] is inspect.Parameter.POSITIONAL_ONLY
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    assert {k: sig.parameters[k].default for k in fields} == defaults
    assert fun.__name__ == name and fun.__module__ == cls.__module__


@pytest.mark.parametrize("name", sorted(FORMS))
def test_function_form_documents_every_parameter(name):
    fun, cls, _ = FORMS[name]
    doc = inspect.getdoc(fun)
    params = doc.split("Parameters\n----------\n", 1)[1].split("\n\nReturns\n", 1)[0]
    documented = set()
    for line in params.splitlines():
        if line and not line.startswith(" "):
            documented.update(n.strip() for n in line.split(" : ")[0].split(","))
    assert documented == set(inspect.signature(fun).parameters)
    for section in ("Returns", "Raises", "See Also", "Examples"):
        assert re.search(rf"^{section}\n-+$", doc, re.MULTILINE), section
    assert f"{cls.__name__} : " in doc


@pytest.mark.parametrize("name", sorted(FORMS))
def test_function_form_solves_as_its_class(xp, name):
    fun, cls, options = FORMS[name]
    rng = np.random.default_rng(0)
    J = 0.3 * rng.standard_normal((6, 6)) / np.sqrt(6)
    A = xp.asarray(np.eye(6) - J.T)
    b = xp.asarray(rng.standard_normal((2, 6)))
    got = fun(A, b, rtol=1e-9, batch_axis=0, **options)
    want = cls(rtol=1e-9, **options).solve(A, b, batch_axis=0)
    assert_close(got.x, want.x, rtol=0.0, atol=0.0, xp=xp)
    assert got.status == want.status
    assert_close(got.nit, want.nit, rtol=0.0, xp=xp)


@pytest.mark.parametrize("name", sorted(FORMS))
def test_function_form_rejects_unknown_keywords(name):
    fun = FORMS[name][0]
    with pytest.raises(TypeError, match=rf"{name}\(\) got an unexpected keyword argument 'tol'"):
        fun(np.eye(2), np.ones(2), tol=1e-3)
    with pytest.raises(TypeError, match="`callback`"):
        fun(np.eye(2), np.ones(2), callback=3)
