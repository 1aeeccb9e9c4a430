"""The recipe "An autodiff primitive" of ``docs/contributing.md``, followed to the letter.

The page's code block is read from the page and run here, once (the docs test skips
it): it adds ``log2``, an array-API function that implicitnet cannot differentiate
otherwise. The tests check that the new primitive is differentiable on every backend
(against finite differences and against the closed form ``1 / (x log 2)``), that the
differentiable namespace serves it, and that the registry it joined is what
``implicitnet.ops`` and the namespace are made from.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

import implicitnet as inet
from implicitnet import ops
from implicitnet.autodiff import differentiable_functions
from implicitnet.testing import assert_close, check_grads

PAGE = Path(__file__).resolve().parents[1] / "docs" / "contributing.md"
SECTION = "### An autodiff primitive"
RTOL = {"float32": 1e-6, "float64": 1e-12}


def _recipe() -> str:
    """The first ``python`` block of the page's section on primitives."""
    text = PAGE.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    section = section[: section.find("\n### ", len(SECTION))]
    block = re.search(r"^```python\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    assert block is not None, f"no python block under {SECTION!r} in {PAGE}"
    return block.group(1)


def _x(xp, dtype="float64"):
    return xp.asarray([0.25, 1.0, 3.0], dtype=getattr(xp, dtype))


@pytest.fixture(scope="module")
def log2():
    """The primitive, as the page adds it (once per session: exporting is global)."""
    if "log2" in differentiable_functions():
        pytest.skip("implicitnet differentiates log2 itself now: give the page another example")
    # Before: the namespace refuses a traced tensor, naming the function.
    with pytest.raises(NotImplementedError, match="log2"):
        inet.grad(lambda x: inet.ops.sum(inet.namespace(x).log2(x)))(np.ones(2))
    scope = {"__name__": "contributing_recipe"}
    exec(compile(_recipe(), str(PAGE), "exec"), scope)
    return scope["log2"]


def test_recipe_block_is_skipped_by_the_docs_test():
    # It can run only once per process; the docs test would run it a second time.
    text = PAGE.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    before_block = section[: section.index("```python")].rstrip().splitlines()[-1]
    assert before_block.startswith("% doc: skip "), before_block


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_new_primitive_computes_the_backend_function(xp, log2, dtype):
    x = _x(xp, dtype)
    assert_close(log2(x), xp.log2(x), rtol=RTOL[dtype], xp=xp)


def test_new_primitive_gradient_matches_finite_differences(xp, log2):
    check_grads(log2, (_x(xp),))
    check_grads(lambda x: log2(x * x) * x, (_x(xp),))


def test_new_primitive_is_served_by_the_namespace(xp, log2):
    x = _x(xp)

    def loss(x):
        ns = inet.namespace(x)  # the differentiable namespace of a traced tensor
        assert ns.log2 is log2
        return ns.sum(ns.log2(x))

    expected = 1.0 / (x * math.log(2.0))
    assert_close(inet.grad(loss)(x), expected, rtol=RTOL["float64"], xp=xp)


def test_new_primitive_is_in_the_registry(log2):
    assert differentiable_functions()["log2"] is log2


def test_ops_holds_every_function_that_implicitnet_exports(log2):
    # `implicitnet.ops` is made from the registry when it is imported: every function
    # that implicitnet's modules export is there under its name, none is listed twice.
    for extension, where in [("", ops), ("linalg", ops.linalg)]:
        for name, fn in differentiable_functions(extension).items():
            if fn.__module__.startswith("implicitnet."):
                assert getattr(where, name) is fn, (extension, name)
