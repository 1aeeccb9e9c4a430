"""The interface every backend module provides, and the function that checks it.

:class:`Backend` is a :class:`typing.Protocol`: a backend is any module (or object) that
has these members, nothing needs to inherit from it. :func:`check_backend` compares a
module with it, member by member and signature by signature, and says what is missing
or different; :func:`implicitnet.backends.get_backend` runs it on modules it is given,
and the conformance test runs it on every registered backend.
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: NumPy is not imported to check a backend
    import numpy

__all__ = ["OPTIONAL_MEMBERS", "REQUIRED_MEMBERS", "Backend", "check_backend"]


@runtime_checkable
class Backend(Protocol):
    """The small interface of a backend module (one module per array library).

    A backend adapts one array library to implicitnet: it says whether the library can
    be used here, gives its array-API namespace, recognises its arrays, converts to and
    from NumPy, draws seeded random numbers, and reports device facts. Everything else
    in implicitnet is written against the array API and never sees the library itself.

    The members are module-level names (functions take no ``self``). ``isinstance(mod,
    Backend)`` checks that the required members are present;
    :func:`check_backend` checks their signatures too.

    Attributes
    ----------
    name : str
        Short name, the key the backend is registered under (``"numpy"``, ``"torch"``).

    Notes
    -----
    Optional members, which a backend may leave out or set to ``None``:

    ``storage(x) -> (key, nbytes)``
        The buffer an array lives in (views of one buffer share ``key``): what
        :func:`implicitnet.autodiff.tape_summary` counts. Without it an array counts as
        its own buffer of ``size * itemsize`` bytes.
    ``conv2d``, ``conv2d_input_grad``, ``conv2d_weight_grad``
        A fast NCHW cross-correlation, ``conv2d(x, w, stride=1, padding=0)``, and its
        two vector-Jacobian products,
        ``conv2d_input_grad(g, w, x_shape, stride=1, padding=0)`` and
        ``conv2d_weight_grad(g, x, w_shape, stride=1, padding=0)``.
        Without them :mod:`implicitnet.nn` uses its portable array-API convolution.

    A backend may have more members (the torch backend has ``cuda_available()``,
    ``default_device()`` and ``set_default_device(device)``); the core uses only these.
    """

    name: str

    def available(self) -> bool:
        """Whether the library can be used here (importable, and a device where needed)."""

    def unavailable_reason(self) -> str:
        """Why :meth:`available` is false (``""`` when it is true)."""

    def namespace(self) -> Any:
        """The library's array-API namespace."""

    def is_array(self, x: Any) -> bool:
        """Whether `x` is an array of this library (without importing the library)."""

    def from_numpy(self, a: Any, *, device: Any = None) -> Any:
        """A copy of the NumPy array `a` as an array of this library, on `device`."""

    def to_numpy(self, x: Any) -> numpy.ndarray:
        """The values of the array `x` as a NumPy array (a host copy on devices)."""

    def random_normal(self, shape: Any, seed: Any, *, dtype: Any = None, device: Any = None) -> Any:
        """Standard normal numbers of `shape`, drawn on the host from `seed`.

        `seed` is an ``int`` or a ``numpy.random.Generator``, so one seed gives the same
        numbers on every backend; `dtype` is float32 or float64 (default).
        """

    def random_uniform(
        self,
        shape: Any,
        seed: Any,
        *,
        low: float = 0.0,
        high: float = 1.0,
        dtype: Any = None,
        device: Any = None,
    ) -> Any:
        """Uniform numbers on ``[low, high)`` of `shape`, drawn on the host from `seed`."""

    def synchronize(self) -> None:
        """Block until queued device work is done (for honest timing)."""

    def peak_memory(self) -> int | None:
        """Peak bytes allocated by the library, where it keeps such a figure, else ``None``."""

    def reset_peak_memory(self) -> None:
        """Start a new peak for :meth:`peak_memory`."""

    def scipy_module(self) -> ModuleType:
        """The SciPy that serves this library (``scipy`` or ``cupyx.scipy``)."""

    def devices(self) -> list[str]:
        """Descriptions of the devices the library sees."""


class _Optional(Protocol):
    """Signatures of the optional members (see the Notes of :class:`Backend`)."""

    def storage(self, x: Any) -> tuple[Hashable, int]: ...

    def conv2d(self, x: Any, w: Any, stride: int = 1, padding: int = 0) -> Any: ...

    def conv2d_input_grad(
        self, g: Any, w: Any, x_shape: Any, stride: int = 1, padding: int = 0
    ) -> Any: ...

    def conv2d_weight_grad(
        self, g: Any, x: Any, w_shape: Any, stride: int = 1, padding: int = 0
    ) -> Any: ...


def _methods(protocol: type) -> dict[str, inspect.Signature]:
    """The protocol's functions and their signatures without ``self``, in order."""
    out = {}
    for member, fn in vars(protocol).items():
        if member.startswith("_") or not inspect.isfunction(fn):
            continue
        sig = inspect.signature(fn)
        out[member] = sig.replace(parameters=list(sig.parameters.values())[1:])
    return out


_REQUIRED = _methods(Backend)
_OPTIONAL = _methods(_Optional)

#: Names every backend must define (``name`` and the functions of :class:`Backend`).
REQUIRED_MEMBERS: tuple[str, ...] = ("name", *_REQUIRED)
#: Names a backend may leave out or set to ``None`` (see :class:`Backend`).
OPTIONAL_MEMBERS: tuple[str, ...] = tuple(_OPTIONAL)

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def signature_problems(member: str, have: inspect.Signature) -> list[str]:
    """How the signature `have` of `member` differs from the protocol's (``[]``: it fits).

    A backend's function fits when it can be called as the protocol calls it: the same
    positional parameters in the same order and with the same names, every keyword-only
    parameter of the protocol (or ``**kwargs``), a default wherever the protocol has one,
    and a default on any extra parameter of its own.
    """
    want = _REQUIRED.get(member) or _OPTIONAL[member]
    where = f"`{member}{have}` (wanted `{member}{want}`)"
    params = list(have.parameters.values())
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    var_pos = any(p.kind is p.VAR_POSITIONAL for p in params)
    have_pos = [p for p in params if p.kind in _POSITIONAL]
    want_pos = [p for p in want.parameters.values() if p.kind in _POSITIONAL]
    problems = []
    for i, p in enumerate(want_pos):
        q = have_pos[i] if i < len(have_pos) else None
        if q is None:
            if not var_pos:
                problems.append(f"{where}: no positional parameter `{p.name}`")
        elif q.name != p.name:
            problems.append(f"{where}: positional parameter {i} is `{q.name}`, not `{p.name}`")
        elif p.default is not p.empty and q.default is q.empty:
            problems.append(f"{where}: `{p.name}` needs a default")
    for q in have_pos[len(want_pos) :]:
        if q.default is q.empty:
            problems.append(f"{where}: extra parameter `{q.name}` has no default")
    for p in want.parameters.values():
        if p.kind is not p.KEYWORD_ONLY:
            continue
        q = have.parameters.get(p.name)
        if q is None:
            if not var_kw:
                problems.append(f"{where}: no keyword parameter `{p.name}`")
        elif q.kind not in (q.KEYWORD_ONLY, q.POSITIONAL_OR_KEYWORD) or q.default is q.empty:
            problems.append(f"{where}: `{p.name}` must be a keyword parameter with a default")
    for q in params:
        if q.kind is q.KEYWORD_ONLY and q.name not in want.parameters and q.default is q.empty:
            problems.append(f"{where}: extra keyword parameter `{q.name}` has no default")
    return problems


def check_backend(module: Any) -> None:
    """Check that `module` has the interface of :class:`Backend`.

    Every required member must be present: ``name`` a non-empty string, the functions
    callable with signatures that accept the protocol's calls. Optional members may be
    absent or ``None``; when present they are checked the same way.

    Parameters
    ----------
    module : module or object
        The candidate backend.

    Raises
    ------
    TypeError
        If anything is missing or does not fit; the message lists every problem.

    Examples
    --------
    >>> from implicitnet import backends
    >>> backends.check_backend(backends.get_backend("numpy"))
    >>> import math
    >>> backends.check_backend(math)
    Traceback (most recent call last):
    ...
    TypeError: `math` is not a backend: missing `name`; ...
    """
    problems = []
    name = getattr(module, "name", None)
    if not isinstance(name, str) or not name:
        problems.append("missing `name`" if name is None else f"`name` is {name!r}, not a str")
    for member in (*_REQUIRED, *_OPTIONAL):
        fn = getattr(module, member, None)
        if fn is None:
            if member in _REQUIRED:
                problems.append(f"missing `{member}`")
            continue
        if not callable(fn):
            problems.append(f"`{member}` is not callable")
            continue
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin without a signature: trust it
            continue
        problems.extend(signature_problems(member, sig))
    if problems:
        label = getattr(module, "__name__", None) or type(module).__name__
        msg = f"`{label}` is not a backend: " + "; ".join(problems)
        raise TypeError(msg)
