"""``Module``: frozen dataclasses of arrays and submodules, registered as pytrees."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import array_api_compat

from .._tree import register_dataclass, tree_leaves
from .._xp import is_tensor

__all__ = ["Module", "Sequential"]

_MAX_CONFIG_REPR = 40  # longer static settings show as their type name


def _is_array(x: Any) -> bool:
    return is_tensor(x) or array_api_compat.is_array_api_obj(x)


def _dtype_label(dtype: Any) -> str:
    # numpy.float64, torch.float64, array_api_strict float64 -> "float64"
    return str(getattr(dtype, "name", None) or dtype).rsplit(".", 1)[-1]


def _shape(x: Any) -> tuple:
    return tuple(int(s) for s in x.shape)


def _summary(obj: Any, label: str, indent: str, out: list) -> None:
    """Append the summary lines of module `obj` (named `label`) to `out`."""
    inline: list[str] = []
    children: list[tuple[str, Any]] = []
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if value is None:
            continue
        if _is_array(value):
            inline.append(f"{field.name} {_shape(value)}")
        elif isinstance(value, Module):
            children.append((field.name, value))
        elif isinstance(value, tuple | list) and any(
            isinstance(v, Module) or _is_array(v) for v in value
        ):
            for i, v in enumerate(value):
                if isinstance(v, Module):
                    children.append((f"{field.name}.{i}", v))
                elif _is_array(v):
                    inline.append(f"{field.name}.{i} {_shape(v)}")
        elif not (isinstance(value, dict | tuple | list) and not value):
            text = repr(value)
            if len(text) > _MAX_CONFIG_REPR:
                text = type(value).__name__
            inline.append(f"{field.name}={text}")
    head = type(obj).__name__ + (f"({', '.join(inline)})" if inline else "")
    out.append(f"{indent}{label}{head}")
    for name, child in children:
        _summary(child, f"{name}: ", indent + "  ", out)


class Module:
    """Base class of layers and models: a frozen dataclass of arrays and submodules.

    Subclasses are declared with ``@dataclass(frozen=True)``; they are registered as
    pytrees automatically, so ``value_and_grad(loss)(model, batch)`` returns gradients
    shaped like the model, optimizers update it leafwise, and :func:`save` writes it as
    named arrays. Configuration that is not an array (sizes, strides, flags) goes in
    fields declared with :func:`implicitnet._tree.static_field`: it is part of the
    tree's structure, not of its leaves. Calling a module returns a value and changes
    nothing.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> @dataclass(frozen=True)
    ... class Scale(nn.Module):
    ...     s: object
    ...     def __call__(self, x):
    ...         return self.s * x
    >>> Scale(s=np.array(2.0))(np.array([1.0, 3.0])).tolist()
    [2.0, 6.0]
    >>> import implicitnet as inet
    >>> len(inet.tree_leaves(Scale(s=np.array(2.0))))
    1
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register_dataclass(cls)
        # Keep the short summary below unless a class defines its own ``__repr__``:
        # installed before ``@dataclass`` runs, it stops the generated one (which would
        # print every array in full).
        inherited = next(c.__dict__["__repr__"] for c in cls.__mro__ if "__repr__" in c.__dict__)
        if "__repr__" not in cls.__dict__ and inherited is Module.__repr__:
            cls.__repr__ = Module.__repr__

    def __repr__(self) -> str:
        """A short summary: the parameter count, then one line per submodule.

        Arrays show as their shapes, static settings as ``name=value``; the values of
        the arrays are not printed (index the fields for them).

        Examples
        --------
        >>> from implicitnet import nn
        >>> print(nn.Sequential((nn.Linear.create(3, 2, seed=0), nn.ReLU())))
        Sequential: 8 parameters (float64)
          layers.0: Linear(weight (2, 3), bias (2,))
          layers.1: ReLU
        """
        if not dataclasses.is_dataclass(self):
            return f"{type(self).__name__}()"
        leaves = [leaf for leaf in tree_leaves(self) if _is_array(leaf)]
        dtypes = sorted({_dtype_label(leaf.dtype) for leaf in leaves})
        count = f"{self.num_parameters():,} parameter{'' if self.num_parameters() == 1 else 's'}"
        lines: list[str] = []
        _summary(self, "", "", lines)
        first = lines[0]
        name = type(self).__name__
        own = first[len(name) :]  # this module's own arrays and settings, if any
        lines[0] = f"{name}: {count}" + (f" ({', '.join(dtypes)})" if dtypes else "")
        if own:
            lines.insert(1, f"  {own[1:-1]}")
        return "\n".join(lines)

    def replace(self, **changes: Any):
        """A copy with some fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def num_parameters(self) -> int:
        """Total number of scalar entries in the module's arrays."""
        total = 0
        for leaf in tree_leaves(self):
            size = 1
            for s in leaf.shape:
                size *= int(s)
            total += size
        return total


@dataclass(frozen=True)
class Sequential(Module):
    """Apply `layers` in order: ``Sequential((f, g))(x) == g(f(x))``.

    Parameters
    ----------
    layers : tuple of Module
        The layers (activations are modules too: :class:`ReLU`, :class:`Tanh`, ...).

    Examples
    --------
    >>> import numpy as np
    >>> from implicitnet import nn
    >>> model = nn.Sequential((nn.Linear.create(3, 2, seed=0), nn.ReLU()))
    >>> model(np.ones((4, 3))).shape
    (4, 2)
    """

    layers: tuple

    def __post_init__(self):
        if not isinstance(self.layers, tuple | list):
            msg = f"`layers` must be a tuple of modules, got {type(self.layers).__name__}"
            raise TypeError(msg)
        for i, layer in enumerate(self.layers):
            if not callable(layer):
                msg = f"`layers[{i}]` is not callable: {type(layer).__name__}"
                raise TypeError(msg)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)
