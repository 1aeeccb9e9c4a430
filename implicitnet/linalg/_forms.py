"""The function forms (``gmres(A, b, ...)``) of the linear solver classes.

A function form is generated from its class: its keyword arguments are the class's
fields (plus `x0`, `batch_axis` and `xp`, which belong to the problem), and its
docstring is the one parameter block shared by every linear solve, the class's own
``Parameters`` section, and what the solver adds (summary, notes, examples). Adding a
linear solver therefore needs one class and one call of :func:`function_form`, not a
second signature and a second copy of the parameter documentation.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
from collections.abc import Callable

__all__ = ["function_form"]

# The problem's arguments, shared by every function form (numpydoc, unindented).
_OPERATOR_DOC = """\
A : callable, array or object with ``matvec``
    ``A(v)`` returns ``A @ v`` for an array ``v`` shaped like `b`. A 2-D array is
    the matrix itself (acting on each system); with ``batch_axis=0`` and a 2-D `b`,
    a 3-D array ``(batch, n, n)`` holds one matrix per system.
b : array, or a Python number or (nested) list of numbers
    Right-hand side (numbers and lists become an array of the namespace of `A`, or
    NumPy's; a 0-D `b` is one equation). Without `batch_axis` an N-D `b` is one
    system of ``b.size`` unknowns (flattened, and the solution reshaped back).
x0 : array, optional
    Initial guess, shaped like `b`. Default: zeros."""

_LAYOUT_DOC = """\
batch_axis : int, optional
    Solve every slice of `b` along this axis as its own system, each with its own
    convergence test, iteration count and status.
xp : array namespace, optional
    Namespace of `b`. Default: inferred."""

_RETURNS_DOC = """\
Result
    ``x`` (shaped like `b`, in its namespace and dtype), ``success``, ``status``,
    ``nit``, ``nfev`` / ``nmatvec`` (products with ``A``), ``residual`` (the
    residual norm of ``x``) and ``history`` (entry 0 the initial residual norm, then
    one entry per iteration). Batched: one entry per system."""

_RAISES_DOC = """\
ValueError
    If `b` or `x0` is non-finite or misshapen, `A` has the wrong shape, or one of
    {settings} is out of range.
TypeError
    If `A` is neither callable, an array nor has a ``matvec``, or a setting has the
    wrong type."""

_SECTION = re.compile(r"^(?P<title>[A-Z][A-Za-z ]+)\n-+\n", re.MULTILINE)


def _section(doc: str, title: str) -> str:
    """The body of the numpydoc section `title` of a (cleaned) docstring."""
    parts = _SECTION.split(doc)
    # split() gives [preamble, title1, body1, title2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2]):
        if name == title:
            return body.strip("\n")
    msg = f"the docstring has no {title!r} section"
    raise ValueError(msg)


def _block(title: str, *bodies: str) -> str:
    text = "\n".join(b.strip("\n") for b in bodies if b)
    return f"{title}\n{'-' * len(title)}\n{text}\n"


def function_form(
    cls: type,
    name: str,
    *,
    summary: str,
    returns: str = "",
    see_also: str = "",
    notes: str = "",
    examples: str,
) -> Callable:
    """The function ``name(A, b, /, *, x0=None, <fields of cls>, batch_axis=None, xp=None)``.

    It builds ``cls(**settings)`` and returns its ``solve(A, b, x0=..., batch_axis=...,
    xp=...)``. `summary` is the docstring's first line; `returns` is added to the
    shared description of the result; `see_also`, `notes` and `examples` are the
    bodies of those sections (unindented numpydoc). The ``Parameters`` section is the
    shared block around the ``Parameters`` section of the class's docstring.
    """
    fields = [f for f in dataclasses.fields(cls) if f.init]
    settings = frozenset(f.name for f in fields)
    keyword = inspect.Parameter.KEYWORD_ONLY
    positional = inspect.Parameter.POSITIONAL_ONLY
    signature = inspect.Signature(
        [
            inspect.Parameter("A", positional),
            inspect.Parameter("b", positional),
            inspect.Parameter("x0", keyword, default=None),
            *(inspect.Parameter(f.name, keyword, default=f.default) for f in fields),
            inspect.Parameter("batch_axis", keyword, default=None),
            inspect.Parameter("xp", keyword, default=None),
        ]
    )

    def solve(A, b, /, *, x0=None, batch_axis=None, xp=None, **options):
        unknown = sorted(options.keys() - settings)
        if unknown:
            msg = f"{name}() got an unexpected keyword argument {unknown[0]!r}"
            raise TypeError(msg)
        return cls(**options).solve(A, b, x0=x0, batch_axis=batch_axis, xp=xp)

    listed = [f"`{f.name}`" for f in fields if f.name not in ("M", "callback")]
    class_doc = inspect.cleandoc(cls.__doc__)
    sections = [
        summary.strip() + "\n",
        _block("Parameters", _OPERATOR_DOC, _section(class_doc, "Parameters"), _LAYOUT_DOC),
        _block("Returns", _RETURNS_DOC, textwrap.indent(returns.strip(), "    ")),
        _block("Raises", _RAISES_DOC.format(settings=", ".join(listed))),
        _block("See Also", f"{cls.__name__} : The solver object, with the algorithm.", see_also),
        _block("Notes", notes) if notes else "",
        _block("Examples", examples),
    ]
    solve.__name__ = solve.__qualname__ = name
    solve.__module__ = cls.__module__
    solve.__doc__ = "\n".join(s for s in sections if s)
    solve.__signature__ = signature
    return solve
