"""Pytrees: nested tuples, lists, dicts and registered dataclasses of arrays.

A model's parameters are a pytree; gradients come back shaped like it. Leaves are
everything that is not a registered container. ``None`` is an empty subtree.
Dataclass fields marked ``static`` (``field(metadata={"static": True})``) are part of
the tree's structure, not leaves: that is where a module keeps its configuration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = [
    "TreeDef",
    "register_dataclass",
    "static_field",
    "tree_flatten",
    "tree_leaves",
    "tree_map",
    "tree_structure",
    "tree_unflatten",
]

_DATACLASSES: set[type] = set()


def static_field(**kwargs) -> Any:
    """A dataclass field that belongs to the tree structure rather than its leaves."""
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata["static"] = True
    return dataclasses.field(metadata=metadata, **kwargs)


def register_dataclass(cls: type) -> type:
    """Register a dataclass (and its subclasses) as a pytree node; usable as a decorator.

    May be called before ``@dataclass`` has been applied (e.g. from
    ``__init_subclass__``); the fields are read when a tree is flattened.
    """
    if not isinstance(cls, type):
        msg = f"register_dataclass needs a class, got {cls!r}"
        raise TypeError(msg)
    _DATACLASSES.add(cls)
    _NOT_NODES.clear()
    return cls


_NOT_NODES: set[type] = set()


def _is_node_dataclass(x) -> bool:
    t = type(x)
    if t in _NOT_NODES:
        return False
    if t in _DATACLASSES:
        return dataclasses.is_dataclass(x)
    if any(issubclass(t, c) for c in _DATACLASSES) and dataclasses.is_dataclass(x):
        _DATACLASSES.add(t)
        return True
    _NOT_NODES.add(t)
    return False


class TreeDef(NamedTuple):
    """The structure of a pytree: node kind, metadata and children's structures."""

    kind: str  # "leaf", "none", "tuple", "list", "dict", "namedtuple", "dataclass"
    meta: Any
    children: tuple

    @property
    def num_leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(c.num_leaves for c in self.children)


_LEAF = TreeDef("leaf", None, ())
_NONE = TreeDef("none", None, ())


def _flatten(x, leaves: list, is_leaf) -> TreeDef:
    if is_leaf is not None and is_leaf(x):
        leaves.append(x)
        return _LEAF
    if x is None:
        return _NONE
    t = type(x)
    if t is tuple or t is list:
        return TreeDef(t.__name__, None, tuple(_flatten(c, leaves, is_leaf) for c in x))
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return TreeDef("namedtuple", t, tuple(_flatten(c, leaves, is_leaf) for c in x))
    if isinstance(x, dict):
        keys = tuple(sorted(x, key=str))
        return TreeDef("dict", (t, keys), tuple(_flatten(x[k], leaves, is_leaf) for k in keys))
    if _is_node_dataclass(x):
        dyn, static = [], []
        for f in dataclasses.fields(x):
            if not f.init:
                continue
            if f.metadata.get("static", False):
                static.append((f.name, getattr(x, f.name)))
            else:
                dyn.append(f.name)
        children = tuple(_flatten(getattr(x, n), leaves, is_leaf) for n in dyn)
        return TreeDef("dataclass", (t, tuple(dyn), tuple(static)), children)
    leaves.append(x)
    return _LEAF


def tree_flatten(tree: Any, is_leaf: Callable[[Any], bool] | None = None):
    """Return ``(leaves, treedef)``; leaves in a deterministic order."""
    leaves: list = []
    treedef = _flatten(tree, leaves, is_leaf)
    return leaves, treedef


def tree_leaves(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> list:
    """The leaves of `tree`, in :func:`tree_flatten` order."""
    return tree_flatten(tree, is_leaf)[0]


def tree_structure(tree: Any) -> TreeDef:
    return tree_flatten(tree)[1]


def _unflatten(td: TreeDef, it):
    k = td.kind
    if k == "leaf":
        return next(it)
    if k == "none":
        return None
    children = [_unflatten(c, it) for c in td.children]
    if k == "tuple":
        return tuple(children)
    if k == "list":
        return children
    if k == "namedtuple":
        return td.meta(*children)
    if k == "dict":
        t, keys = td.meta
        d = dict(zip(keys, children))
        return d if t is dict else t(d)
    if k == "dataclass":
        t, dyn, static = td.meta
        kwargs = dict(zip(dyn, children))
        kwargs.update(static)
        return t(**kwargs)
    raise AssertionError(k)  # pragma: no cover - internal invariant


def tree_unflatten(treedef: TreeDef, leaves) -> Any:
    """Rebuild a tree of structure `treedef` from `leaves`."""
    leaves = list(leaves)
    if len(leaves) != treedef.num_leaves:
        msg = f"tree_unflatten: expected {treedef.num_leaves} leaves, got {len(leaves)}"
        raise ValueError(msg)
    return _unflatten(treedef, iter(leaves))


def tree_map(fn: Callable, tree: Any, *rest: Any, is_leaf=None) -> Any:
    """Apply `fn` leafwise to `tree` (and the same-structured trees in `rest`)."""
    leaves, td = tree_flatten(tree, is_leaf)
    others = []
    for r in rest:
        rl, rtd = tree_flatten(r, is_leaf)
        if rtd != td:
            msg = "tree_map: trees have different structures"
            raise ValueError(msg)
        others.append(rl)
    return tree_unflatten(td, [fn(*xs) for xs in zip(leaves, *others)])
