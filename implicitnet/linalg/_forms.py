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

__all__ = ["function_form", "with_shared_parameters"]

# The settings every built-in solver has (numpydoc, unindented): added to the
# ``Parameters`` section of each solver class's docstring, first and last.
_TOLERANCES_DOC = """\
rtol, atol : float, default: 1e-6, 0.0
    Stop a system when ``norm(b - A x) <= atol + rtol * norm(b)`` (Euclidean norms,
    one per system when batched)."""

_CALLBACK_DOC = """\
callback : callable, optional
    Called after every iteration with the residual norm (a 0-D array, or one entry
    per system when batched)."""

# The problem's arguments, shared by every function form.
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
    ``nit``, ``nfev`` / ``nmatvec`` (products with ``A``, one more for a nonzero
    `x0`), ``residual`` (the residual norm of ``x``) and ``history`` (entry 0 the
    initial residual norm, then one entry per iteration). Batched: one entry per
    system."""

_RAISES_DOC = """\
ValueError
    If `b` or `x0` is non-finite or misshapen, `A` has the wrong shape, or one of
    {settings} is out of range.
TypeError
    If `A` is neither callable, an array nor has a ``matvec``, or a setting has the
    wrong type."""

# Every example starts from these.
_EXAMPLE_IMPORTS = ">>> import numpy as np\n>>> import implicitnet as inet\n"

_TITLE = re.compile(r"^([A-Z][A-Za-z ]+)\n-+\n", re.MULTILINE)


def _split(doc: str) -> tuple[str, dict[str, str]]:
    """A cleaned numpydoc docstring as its preamble and ``{title: body}``, in order."""
    parts = _TITLE.split(inspect.cleandoc(doc))
    return parts[0].strip("\n"), {t: b.strip("\n") for t, b in zip(parts[1::2], parts[2::2])}


def _join(preamble: str, sections: dict[str, str]) -> str:
    blocks = [preamble]
    blocks += [f"{t}\n{'-' * len(t)}\n{b}" for t, b in sections.items() if b]
    return "\n\n".join(blocks) + "\n"


def with_shared_parameters(doc: str) -> str:
    """A solver class's docstring with `rtol`, `atol` and `callback` documented.

    The class documents its own settings; the ones every built-in solver shares are
    written once, here, and placed first (`rtol`, `atol`) and last (`callback`) in
    its ``Parameters`` section.
    """
    preamble, sections = _split(doc)
    own = sections.pop("Parameters", "")
    shared = "\n".join(p for p in (_TOLERANCES_DOC, own, _CALLBACK_DOC) if p)
    return _join(preamble, {"Parameters": shared, **sections})


def function_form(
    cls: type,
    *,
    summary: str,
    returns: str = "",
    see_also: str = "",
    notes: str = "",
    examples: str,
) -> Callable:
    """The function form of the solver class `cls`, named ``cls.__name__.lower()``.

    Its signature is ``(A, b, /, *, x0=None, <fields of cls>, batch_axis=None,
    xp=None)``; it builds ``cls(**settings)`` and returns its ``solve(A, b, x0=...,
    batch_axis=..., xp=...)``. `summary` is the docstring's first line, `returns` is
    added to the shared description of the result, `see_also` and `notes` are the
    bodies of those sections and `examples` follows the imports of NumPy and
    implicitnet (unindented numpydoc). The ``Parameters`` section is the shared block
    of the problem's arguments around the ``Parameters`` section of the class.
    """
    name = cls.__name__.lower()
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

    listed = ", ".join(f"`{f.name}`" for f in fields if f.name not in ("M", "callback"))
    class_parameters = _split(cls.__doc__)[1]["Parameters"]
    sections = {
        "Parameters": "\n".join((_OPERATOR_DOC, class_parameters, _LAYOUT_DOC)),
        "Returns": "\n".join(
            r for r in (_RETURNS_DOC, textwrap.indent(returns.strip("\n"), "    ")) if r
        ),
        "Raises": _RAISES_DOC.format(settings=listed),
        "See Also": f"{cls.__name__} : The solver object, with the algorithm.\n{see_also}",
        "Notes": notes.strip("\n"),
        "Examples": _EXAMPLE_IMPORTS + examples.strip("\n"),
    }
    solve.__name__ = solve.__qualname__ = name
    solve.__module__ = cls.__module__
    preamble = (
        f"{summary.strip()}\n\nThe function form of :class:`{cls.__name__}`: "
        f"``{name}(A, b, **settings)`` returns\n``{cls.__name__}(**settings).solve(A, b, "
        "x0=x0, batch_axis=batch_axis, xp=xp)``."
    )
    solve.__doc__ = _join(preamble, sections)
    solve.__signature__ = signature
    return solve
