"""One registry style for everything chosen by name: solvers, linear solvers, adjoints.

A :class:`Registry` maps names to entries (a class, a configured object or a factory)
for one argument of the public API (``method=``, ``linear_solver=``, ``backward=``).
It refuses a second registration under a name unless asked, lists its names, and
answers an unknown name with a ``ValueError`` that names the argument and the known
names. What an entry is turned into stays with the caller.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Registry"]


class Registry:
    """Names usable for one argument of the public API.

    Parameters
    ----------
    argument : str
        The argument the names are given as (``"method"``); it is named in errors.
    kind : str
        What an entry is, for messages (``"method"``, ``"linear solver"``).
    base : type, optional
        Entries may be instances of this class, or anything callable.
    case_sensitive : bool, default: True
        Whether ``"GMRES"`` and ``"gmres"`` are different names.
    """

    def __init__(
        self, argument: str, *, kind: str, base: type | None = None, case_sensitive: bool = True
    ):
        self.argument = argument
        self.kind = kind
        self.base = base
        self.case_sensitive = case_sensitive
        self._entries: dict[str, Any] = {}

    def _key(self, name: str) -> str:
        return name if self.case_sensitive else name.lower()

    def register(self, name: str, entry: Any, *, overwrite: bool = False) -> None:
        """Register `entry` under `name`; ``ValueError`` if taken and not `overwrite`."""
        if not isinstance(name, str) or not name:
            msg = f"`name` must be a non-empty string, got {name!r}"
            raise TypeError(msg)
        if not (callable(entry) or (self.base is not None and isinstance(entry, self.base))):
            base = "" if self.base is None else f"a {self.base.__name__} instance, "
            msg = f"a {self.kind} must be {base}a class or a factory, got {type(entry).__name__}"
            raise TypeError(msg)
        key = self._key(name)
        if key in self._entries and not overwrite:
            msg = f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it"
            raise ValueError(msg)
        self._entries[key] = entry

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._entries

    def lookup(self, name: str, *, also: str = "") -> Any:
        """The entry registered as `name`; ``ValueError`` listing the known names if none.

        `also` is appended to the list of known names in the message (e.g. ``"or an
        object with a solve method"``).
        """
        try:
            return self._entries[self._key(name)]
        except KeyError:
            known = ", ".join(repr(k) for k in self.names())
            tail = f", {also}" if also else ""
            msg = f"unknown `{self.argument}` {name!r}; known: {known}{tail}"
            raise ValueError(msg) from None
