"""``Module``: frozen dataclasses of arrays and submodules, registered as pytrees."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .._tree import register_dataclass, tree_leaves

__all__ = ["Module", "Sequential"]


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
