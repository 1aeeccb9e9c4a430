"""The core of the reverse-mode autodiff: the tape, tensor boxes and primitives.

A ``Tensor`` wraps one value and belongs to one *trace*, identified by an integer
level. Every transform (``vjp``, ``grad``, ...) opens a new trace with a level larger
than all earlier ones, boxes its inputs at that level and runs the user's function.
When a primitive meets boxed arguments it takes the highest level among them, unboxes
the arguments of that level, evaluates itself on the unboxed values (recursively, so
that lower-level boxes record on their own traces) and boxes the answer at that level,
remembering in a *node* what the VJP rule will need. That record is the tape: each node
points at the nodes of its arguments, nothing points back, and the graph is freed with
its last reference.

A node keeps only what its rule reads (declared with :func:`defvjp`): ``tanh`` keeps
its output, ``matmul`` the other operand of each argument that needs a gradient, ``add``
nothing but shapes. Values nobody keeps are freed as soon as the user's code drops them,
so an unrolled loop holds one array per step where a rule needs one.

Nested traces are therefore independent: the backward pass of level ``L`` only follows
boxes of level ``L``, and a value of an outer trace met inside an inner one is simply a
constant there (no perturbation confusion). Level 0 is reserved for *constant* tensors:
raw arrays that a transform wrapped so that operators dispatch to ``Tensor`` (array-api-
strict's operators refuse foreign operands instead of returning ``NotImplemented``).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from typing import Any

import array_api_compat

__all__ = [
    "EXTENSIONS",
    "AbstractTensor",
    "defvjp",
    "differentiable_functions",
    "export",
    "nondifferentiable",
    "primitive",
    "stop_gradient",
]

_SCALAR_TYPES = (bool, int, float, complex)

# Trace levels: strictly increasing, so a trace opened later is nested deeper.
_levels = itertools.count(1)


def _new_level() -> int:
    return next(_levels)


class AbstractTensor:
    """What the tape knows of a tensor: the value it wraps, its trace level, its node.

    The array interface and the operators are those of the one concrete subclass,
    :class:`~implicitnet.autodiff.Tensor` (``_tensor.py``), built on the primitives of
    ``_ops.py``, which are built on this module. Defining that subclass makes it
    `_Tensor` here, so that the machinery recognises tensors with
    ``type(x) is _Tensor``: the cheapest test there is, which every primitive runs on
    every argument of every call (``isinstance`` makes a primitive on small raw arrays
    about 12 % slower).
    """

    __slots__ = ("_implicitnet_data", "_level", "_node")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        global _Tensor
        if _Tensor is not AbstractTensor and _definition(_Tensor) != _definition(cls):
            msg = f"`{_Tensor.__qualname__}` is final: it cannot be subclassed"
            raise TypeError(msg)
        _Tensor = cls

    def __init__(self, data, level: int = 0, node=None):
        self._implicitnet_data = data
        self._level = level
        # the tape node of a traced tensor (a leaf node for a transform's input); None
        # for a constant
        self._node = node if node is not None or level == 0 else _leaf_node()


#: The concrete tensor class (see `AbstractTensor`), this placeholder until it is defined:
#: read it here at call time; import `Tensor` from ``_tensor``.
_Tensor: type = AbstractTensor


def _raw(x):
    """The backend array under any number of tensor boxes."""
    while type(x) is _Tensor:
        x = x._implicitnet_data
    return x


def _unwrap_all(x):
    """`x` with every tensor replaced by its backend array (recursing into lists/tuples)."""
    if type(x) is _Tensor:
        return _raw(x)
    if type(x) is tuple or type(x) is list:
        return type(x)(_unwrap_all(a) for a in x)
    return x


_NS_BY_TYPE: dict[type, Any] = {}

# Output types of primitives seen so far: array types pass unchanged; NumPy scalar types
# (``np.float64``, ... the result of a NumPy reduction or ufunc on 0-d data) are turned
# into 0-d arrays, so that every primitive returns an array (``ndim``, ``device``,
# indexing, ``__array_namespace__``) on every backend.
_ARRAY_TYPES: set[type] = set()
_NUMPY_SCALAR_TYPES: set[type] = set()


def _as_array(x):
    """`x`, with a NumPy scalar (an ``np.generic``) replaced by the 0-d array it holds.

    Classifies each new type once; afterwards the cost is one set lookup.
    """
    t = type(x)
    if t in _ARRAY_TYPES:
        return x
    if t in _NUMPY_SCALAR_TYPES:
        return x[...]  # a NumPy scalar indexed with ``...`` is a 0-d ndarray
    if t is _Tensor or t in _SCALAR_TYPES or x is None:
        return x
    if array_api_compat.is_numpy_array(x) and type(x[...]) is not t:
        _NUMPY_SCALAR_TYPES.add(t)
        return x[...]
    if array_api_compat.is_array_api_obj(x):
        _ARRAY_TYPES.add(t)
    return x


def _raw_namespace(args):
    """The backend namespace of the first raw array in `args` (cached per type)."""
    for a in args:
        t = type(a)
        ns = _NS_BY_TYPE.get(t)
        if ns is not None:
            return ns
        if a is None or t in _SCALAR_TYPES:
            continue
        if t is _Tensor:
            return _raw_namespace((_raw(a),))
        if t is tuple or t is list:
            if a:
                return _raw_namespace(a)
            continue
        ns = array_api_compat.array_namespace(a)
        _NS_BY_TYPE[t] = ns
        return ns
    msg = "expected at least one array argument"
    raise TypeError(msg)


class _Released:
    """What a tape node holds in place of a value its VJP rule does not read.

    Only the static facts about the value survive: ``shape``, ``dtype`` (and ``ndim``,
    ``size``), enough for ``unbroadcast`` and for rules that need a shape. Reading
    anything else is a bug in a rule's declaration, reported as such.
    """

    __slots__ = ("dtype", "namespace", "shape")

    def __init__(self, value):
        self.shape = value.shape
        self.dtype = value.dtype
        ns = _NS_BY_TYPE.get(type(value))
        self.namespace = ns if ns is not None else _raw_namespace((value,))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def __getattr__(self, name):
        msg = (
            f"a VJP rule read `.{name}` of a value its primitive does not keep on the tape "
            "(only shape and dtype are kept): declare the value in `defvjp(..., "
            "save_inputs=..., save_output=...)`"
        )
        raise AttributeError(msg)

    def __repr__(self) -> str:
        return f"<released value, shape={self.shape}, dtype={self.dtype}>"

    def _refuse(self, *args, **kwargs):
        msg = (
            "a VJP rule computed with a value its primitive does not keep on the tape "
            "(only shape and dtype are kept): declare the value in `defvjp(..., "
            "save_inputs=..., save_output=...)`"
        )
        raise TypeError(msg)

    __array_ufunc__ = None
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse
    __truediv__ = __rtruediv__ = __pow__ = __rpow__ = __matmul__ = __rmatmul__ = _refuse
    __neg__ = __getitem__ = __array__ = __array_namespace__ = _refuse


# A tape node is a list (cheaper to build than an object, never interned, so its id()
# identifies it): what one recorded operation's VJP rule needs, and its parents.
#   NODE_PRIM     the primitive's record (None for a leaf: an input of a transform)
#   NODE_PARENTS  [(position, parent node)] for the inputs of the trace's level
#   NODE_SAVED    one entry per positional input: the value, or a `_Released` stand-in
#   NODE_ANS      the output, or a `_Released` stand-in
#   NODE_KWARGS   the primitive's keyword arguments
#   NODE_NEEDS    per positional input, whether it needs a cotangent
#   NODE_SPEC     the stand-in of this node's output, once made (shared by consumers)
NODE_PRIM, NODE_PARENTS, NODE_SAVED, NODE_ANS, NODE_KWARGS, NODE_NEEDS, NODE_SPEC = range(7)

#: NODE_ANS of an output its rule does not read (see `_Plan`).
_UNKEPT = object()
_ONE_INPUT = (True,)
_TWO_INPUTS = (((False, False), (False, True)), ((True, False), (True, True)))


def _leaf_node() -> list:
    return [None, (), (), None, None, (), None]


def _policy(spec, what: str):
    """A save declaration as a function ``needs_grad -> tuple of bool`` (or bool)."""
    if callable(spec):
        return spec
    if what == "output":
        if not isinstance(spec, bool):
            msg = f"`save_output` must be a bool or a callable, got {spec!r}"
            raise TypeError(msg)
        return lambda needs: spec
    if spec == "all":
        return lambda needs: (True,) * len(needs)
    if spec == "none":
        return lambda needs: (False,) * len(needs)
    if spec == "others":
        # input i is read to form the cotangents of the other inputs (products)
        def others(needs):
            n = sum(needs)
            return tuple(n - k > 0 for k in needs)

        return others
    msg = (
        "`save_inputs` must be 'all', 'none', 'others' or a callable "
        f"`needs_grad -> tuple of bool`, got {spec!r}"
    )
    raise ValueError(msg)


class _Primitive:
    """Bookkeeping for one primitive: forward function, VJP rule, what the rule reads."""

    __slots__ = (
        "fun",
        "module",
        "name",
        "pass_xp",
        "save_inputs",
        "save_output",
        "saves",
        "vjp",
        "vjp_needs",
        "wrapper",
    )

    def __init__(self, fun, name):
        self.fun = fun
        self.name = name
        self.module = getattr(fun, "__module__", None)
        self.pass_xp = "xp" in inspect.signature(fun).parameters
        self.vjp = None
        self.vjp_needs = False
        self.wrapper = None
        self.save_inputs = "all"
        self.save_output = True
        # needs_grad -> (which inputs to keep, whether to keep the output); memoised
        self.saves: dict[tuple, tuple] = {}

    def what_to_save(self, needs: tuple) -> tuple:
        """``(inputs to release, keep the output)`` for the inputs flagged by `needs`."""
        keep = self.saves.get(needs)
        if keep is None:
            ins = tuple(bool(k) for k in _policy(self.save_inputs, "inputs")(needs))
            if len(ins) != len(needs):
                msg = (
                    f"the `save_inputs` of `{self.name}` gave {len(ins)} flags for "
                    f"{len(needs)} inputs"
                )
                raise ValueError(msg)
            out = bool(_policy(self.save_output, "output")(needs))
            keep = self.saves[needs] = (tuple(i for i, k in enumerate(ins) if not k), out)
        return keep


#: Every primitive defined so far, in definition order.
_REGISTRY: list[_Primitive] = []


def _unbox_at(a, top: int):
    """`a` as a primitive of trace `top` computes with it (one box removed, or none)."""
    if type(a) is _Tensor and (a._level == top or a._level == 0):
        return a._implicitnet_data
    return a


def _apply(rec: _Primitive, args: tuple, kwargs: dict):
    """Evaluate a primitive on arguments of which at least one is a ``Tensor``."""
    # The top level among the arguments, the arguments with that level's boxes removed,
    # which inputs belong to that trace (`needs`) and their nodes (the parents).
    # Unary and binary primitives, nearly all of them, are spelled out: no loop.
    nargs = len(args)
    if nargs == 1:  # its one input is a tensor
        a1 = args[0]
        top = a1._level
        unboxed = [a1._implicitnet_data]
        needs = _ONE_INPUT
    elif nargs == 2:
        a1, a2 = args
        l1 = a1._level if type(a1) is _Tensor else -1  # -1: not a tensor
        l2 = a2._level if type(a2) is _Tensor else -1
        top = l1 if l1 > l2 else l2
        unboxed = [
            a1._implicitnet_data if l1 == top or l1 == 0 else a1,
            a2._implicitnet_data if l2 == top or l2 == 0 else a2,
        ]
        needs = _TWO_INPUTS[l1 == top][l2 == top]
    else:
        top = 0
        for a in args:
            if type(a) is _Tensor and a._level > top:
                top = a._level
        unboxed = [_unbox_at(a, top) for a in args]
        needs = tuple([type(a) is _Tensor and a._level == top for a in args])
    # recurses when a lower-level tensor remains, else computes on raw arrays
    ans = rec.wrapper(*unboxed, **kwargs)
    if top == 0:
        return _Tensor(ans)
    if rec.vjp is None:
        msg = f"`{rec.name}` has no VJP rule: it is not differentiable (yet)"
        raise NotImplementedError(msg)
    if nargs == 1:
        parents = [(0, a1._node)]
    elif nargs == 2:
        if needs[0]:
            parents = [(0, a1._node), (1, a2._node)] if needs[1] else [(0, a1._node)]
        else:
            parents = [(1, a2._node)]
    else:
        parents = [(pos, a._node) for pos, a in enumerate(args) if needs[pos]]
    # What the rule will need, per its declaration; the rest is released.
    keep = rec.saves.get(needs)
    release, keep_out = keep if keep is not None else rec.what_to_save(needs)
    for pos in release:
        u = unboxed[pos]
        if u is None or type(u) in _SCALAR_TYPES:
            continue
        if needs[pos]:  # an input of this trace: its node shares one stand-in
            pnode = args[pos]._node
            spec = pnode[NODE_SPEC]
            if spec is None:
                spec = pnode[NODE_SPEC] = _Released(u)
            unboxed[pos] = spec
        else:
            unboxed[pos] = _Released(u)
    # An output the rule does not read is not kept: its stand-in is made when needed,
    # from a consumer (which holds the value or its stand-in) or from the output itself.
    node = [rec, parents, unboxed, ans if keep_out else _UNKEPT, kwargs, needs, None]
    return _Tensor(ans, top, node)


def primitive(fun: Callable | None = None, *, name: str | None = None, export: bool = False):
    """Declare `fun`, a function on backend arrays, as a differentiable primitive.

    The returned function accepts raw arrays (and then calls `fun` directly) or
    ``Tensor`` objects (and then records the call on the tape). Positional arguments are
    the inputs that may be differentiated; keyword arguments are static configuration
    (``axis``, ``keepdims``, ``shape``, ...). If `fun` declares an ``xp`` parameter it
    receives the backend namespace of its arguments. Give it a VJP rule with
    :func:`defvjp`.

    Parameters
    ----------
    fun : callable
        ``fun(*arrays, **static)`` computing on backend arrays.
    name : str, optional
        Name used in error messages and the primitive registry. Default:
        ``fun.__name__``. With `export`, the array-API name, qualified by its extension
        where it has one (``"linalg.solve"``).
    export : bool, default: False
        Whether the primitive is also the function `name` of the differentiable
        namespace (``xp = array_namespace(tensor)``, then ``xp.<name>`` or
        ``xp.linalg.<name>``) and of :mod:`implicitnet.ops`. For a function of the
        array API whose derivative implicitnet does not have yet.

    Raises
    ------
    ValueError
        With `export`, if another function already has that name, or the name is not
        an identifier (optionally after ``"linalg."`` or ``"fft."``).

    Returns
    -------
    callable
        The primitive.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> @inet.primitive
    ... def cube(x, /):
    ...     return x * x * x
    >>> @inet.defvjp(cube)
    ... def _cube_vjp(ct, ans, x, /, *, xp):
    ...     return (3.0 * ct * x * x,)
    >>> inet.grad(lambda x: inet.ops.sum(cube(x)))(np.array([1.0, 2.0]))
    array([ 3., 12.])
    """
    if fun is None:
        return lambda f: primitive(f, name=name, export=export)
    rec = _Primitive(fun, name or fun.__name__)
    if export:
        _check_export_name(rec.name)

    # On raw arrays a primitive is `fun` itself, plus one set lookup on the type of its
    # answer (NumPy scalars become 0-d arrays, see `_as_array`).
    array_types = _ARRAY_TYPES
    if rec.pass_xp:

        def wrapper(*args, **kwargs):
            for a in args:
                if type(a) is _Tensor:
                    return _apply(rec, args, kwargs)
            out = fun(*args, xp=_raw_namespace(args), **kwargs)
            return out if type(out) in array_types else _as_array(out)

    else:

        def wrapper(*args, **kwargs):
            for a in args:
                if type(a) is _Tensor:
                    return _apply(rec, args, kwargs)
            out = fun(*args, **kwargs)
            return out if type(out) in array_types else _as_array(out)

    wrapper.__name__ = rec.name
    wrapper.__qualname__ = rec.name
    wrapper.__doc__ = fun.__doc__
    wrapper.__module__ = rec.module
    wrapper.__wrapped__ = fun
    wrapper._implicitnet_primitive = rec
    rec.wrapper = wrapper
    _REGISTRY.append(rec)
    if export:
        _export(wrapper, rec.name)
    return wrapper


#: The array API's extension sub-namespaces: where a qualified exported name may live.
EXTENSIONS = ("linalg", "fft")
#: Functions of the main namespace that the standard repeats in an extension.
_ALSO_IN_EXTENSION = {"linalg": ("matmul", "matrix_transpose", "tensordot", "vecdot")}

#: The differentiable functions of the array API, by qualified name (``"exp"``,
#: ``"linalg.solve"``): primitives declared with ``export=True`` and the composites of
#: `export`. :mod:`implicitnet.ops` and the differentiable namespace serve these.
_EXPORTS: dict[str, Callable] = {}
#: What is built from `_EXPORTS` (the differentiable namespaces, by backend), emptied
#: when a function is exported, so that it is built again with the new function.
_BUILT_FROM_EXPORTS: dict = {}


def export(fun: Callable | None = None, *, name: str | None = None):
    """Make `fun` the differentiable array-API function `name`; use as a decorator.

    For a composite of primitives that gives a primitive its array-API signature (the
    primitive takes static arguments as keywords; ``reshape(x, shape)`` does not). A
    primitive that has that signature itself is declared with ``primitive(export=True)``.
    """
    if fun is None:
        return lambda f: export(f, name=name)
    name = name or fun.__name__
    _check_export_name(name)
    _export(fun, name)
    return fun


def _check_export_name(name: str) -> None:
    sub, _, base = name.rpartition(".")
    if not base.isidentifier() or (sub and sub not in EXTENSIONS):
        msg = (
            f"an exported function's name must be an identifier, optionally qualified by "
            f"an extension of the array API ({', '.join(EXTENSIONS)}), got {name!r}"
        )
        raise ValueError(msg)


def _export(fun: Callable, name: str) -> None:
    old = _EXPORTS.get(name)
    if old is not None and _definition(old) != _definition(fun):
        msg = (
            f"`{name}` is already a differentiable function ({'.'.join(_definition(old))}); "
            "choose another name"
        )
        raise ValueError(msg)
    _EXPORTS[name] = fun  # the same definition again: a module that was reloaded
    _BUILT_FROM_EXPORTS.clear()


def _definition(fun) -> tuple[str, str]:
    fun = getattr(fun, "__wrapped__", fun)
    return (str(getattr(fun, "__module__", "")), str(getattr(fun, "__qualname__", "")))


def differentiable_functions(extension: str = "") -> dict[str, Callable]:
    """The differentiable array-API functions, by name: what ``implicitnet.ops`` holds.

    Every primitive declared with ``primitive(export=True)``, and every composite of
    primitives that implicitnet exports with the array API's signature, from the
    primitive registry as it is now (a primitive defined later is in a later call).

    Parameters
    ----------
    extension : str, default: ""
        ``""`` for the functions of the main namespace; ``"linalg"`` or ``"fft"`` for
        those of that extension, by their names in it (with the main functions that
        the standard repeats there, such as ``linalg.matmul``).

    Returns
    -------
    dict
        Name to function.

    Examples
    --------
    >>> import implicitnet as inet
    >>> fns = inet.autodiff.differentiable_functions()
    >>> fns["tanh"] is inet.ops.tanh
    True
    >>> sorted(inet.autodiff.differentiable_functions("linalg"))
    ['matmul', 'matrix_transpose', 'solve', 'tensordot', 'vecdot', 'vector_norm']
    """
    if not extension:
        return {name: fun for name, fun in _EXPORTS.items() if "." not in name}
    prefix = extension + "."
    also = _ALSO_IN_EXTENSION.get(extension, ())
    return {
        **{n: f for n, f in _EXPORTS.items() if n in also},
        **{n.removeprefix(prefix): f for n, f in _EXPORTS.items() if n.startswith(prefix)},
    }


def defvjp(prim: Callable, *, save_inputs: Any = "all", save_output: Any = True):
    """Attach a VJP rule to the primitive `prim`; use as a decorator.

    The rule is called as ``rule(ct, ans, *inputs, xp=xp, **static)`` with the output
    cotangent `ct`, the forward answer `ans`, the positional inputs and the primitive's
    keyword arguments, and returns one cotangent per positional input (``None`` where
    there is none). ``xp`` is the differentiable namespace of the backend. If the rule
    declares a ``needs_grad`` keyword it also receives a tuple of booleans saying which
    inputs need a cotangent, so it can skip work. Write rules with
    :mod:`implicitnet.ops` and tensor operators so they are differentiable themselves.

    Parameters
    ----------
    prim : callable
        A function made by :func:`primitive`.
    save_inputs : {"all", "none", "others"} or callable, default: "all"
        Which inputs the rule reads, and so which inputs the tape keeps from the
        forward pass to the backward pass. ``"all"``: every input. ``"none"``: no input
        (the rule reads only their ``shape`` and ``dtype``, as ``add`` or ``sum`` do).
        ``"others"``: an input is kept only when *another* input needs a gradient (a
        product: ``matmul`` reads ``x2`` for the cotangent of ``x1``). A callable
        receives ``needs_grad`` and returns one boolean per input. An input that is not
        kept reaches the rule as a stand-in with only ``shape``, ``dtype``, ``ndim`` and
        ``size``.
    save_output : bool or callable, default: True
        Whether the rule reads `ans` (``tanh`` and ``exp`` do); a callable receives
        ``needs_grad``. When not kept, `ans` is a stand-in as above.

    Notes
    -----
    Declaring what the rule reads is what keeps the memory of a trace low: a value that
    no rule keeps is freed as soon as the forward code drops it. The defaults keep
    everything, which is always correct. Python numbers and ``None`` are always passed
    as they are.

    Examples
    --------
    See :func:`primitive`. The rule of ``tanh`` reads only its output:

    >>> import implicitnet as inet
    >>> @inet.primitive
    ... def tanh(x, /, *, xp):
    ...     return xp.tanh(x)
    >>> @inet.defvjp(tanh, save_inputs="none", save_output=True)
    ... def _tanh_vjp(ct, ans, x, /, *, xp):
    ...     return (ct * (1.0 - ans * ans),)
    """
    rec = getattr(prim, "_implicitnet_primitive", None)
    if rec is None:
        msg = f"`prim` must be a function made by `primitive`, got {prim!r}"
        raise TypeError(msg)
    _policy(save_inputs, "inputs")  # refuse a bad declaration now
    _policy(save_output, "output")

    def register(rule):
        rec.vjp = rule
        rec.vjp_needs = "needs_grad" in inspect.signature(rule).parameters
        rec.save_inputs = save_inputs
        rec.save_output = save_output
        rec.saves = {}
        return rule

    return register


def nondifferentiable(fun: Callable, name: str | None = None):
    """Wrap `fun` so that it accepts tensors and returns plain (untraced) arrays.

    For functions with no useful derivative: ``argmax``, comparisons, ``isfinite``.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> sign = inet.nondifferentiable(np.sign)
    >>> sign(inet.autodiff.Tensor(np.array([-2.0, 3.0])))
    array([-1.,  1.])
    """

    def wrapper(*args, **kwargs):
        args = [_unwrap_all(a) for a in args]
        if kwargs:
            kwargs = {k: _unwrap_all(v) for k, v in kwargs.items()}
        return fun(*args, **kwargs)

    wrapper.__name__ = name or getattr(fun, "__name__", "nondifferentiable")
    wrapper.__doc__ = getattr(fun, "__doc__", None)
    wrapper.__wrapped__ = fun
    return wrapper


def stop_gradient(x):
    """`x` as a constant: no gradient flows through it, at any nesting level.

    Examples
    --------
    >>> import numpy as np
    >>> import implicitnet as inet
    >>> inet.grad(lambda x: inet.ops.sum(x * inet.stop_gradient(x)))(np.array([3.0]))
    array([3.])
    """
    if type(x) is _Tensor:
        return _Tensor(_raw(x))
    return x
