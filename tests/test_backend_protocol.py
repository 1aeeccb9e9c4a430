"""Every backend conforms to :class:`implicitnet.backends.Backend`.

Each built-in backend is checked three ways: statically (its source file is parsed, so
a backend whose library is not installed here, CuPy without a GPU say, is still
checked), by :func:`implicitnet.backends.check_backend` on the imported module, and, where
the library is usable, by calling every member once (through the ``backend`` fixture).
:func:`assert_conforms` is the conformance test a new backend runs
(``tests/test_extending_backend.py`` does, for a toy one).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import pathlib
import types

import numpy as np
import pytest

import implicitnet as inet
from implicitnet import backends

_protocol = backends._protocol  # the protocol's signatures, for the static check

CORE = pathlib.Path(inet.__file__).parent

#: The test matrix's variants (tests/conftest.py) and the backend module each one uses.
VARIANTS = {**{name: name for name in backends.BACKEND_NAMES}, "torch_cuda": "torch"}

#: What the test fixtures need of the torch backend beyond the protocol.
TORCH_EXTRAS = ("cuda_available", "default_device", "set_default_device")


# -- The conformance checks --------------------------------------------------------------


def _ast_signature(args: ast.arguments) -> inspect.Signature:
    """The signature of a parsed ``def`` (defaults stand in as ``...``)."""
    P = inspect.Parameter
    positional = [*args.posonlyargs, *args.args]
    defaults = [P.empty] * (len(positional) - len(args.defaults)) + [...] * len(args.defaults)
    params = [
        P(a.arg, P.POSITIONAL_ONLY if i < len(args.posonlyargs) else P.POSITIONAL_OR_KEYWORD,
          default=d)
        for i, (a, d) in enumerate(zip(positional, defaults, strict=True))
    ]  # fmt: skip
    if args.vararg:
        params.append(P(args.vararg.arg, P.VAR_POSITIONAL))
    for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        params.append(P(a.arg, P.KEYWORD_ONLY, default=P.empty if d is None else ...))
    if args.kwarg:
        params.append(P(args.kwarg.arg, P.VAR_KEYWORD))
    return inspect.Signature(params)


def static_problems(path: pathlib.Path, extras: tuple[str, ...] = ()) -> list[str]:
    """What the backend module at `path` lacks, read from its source without importing it.

    Top-level ``def`` s are checked against the protocol's signatures; a member may also
    be bound by an assignment (``available = _library.available``), which is then only
    checked for presence here (and in full by :func:`check_backend` once imported).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    defs: dict[str, inspect.Signature] = {}
    bound: set[str] = set()
    nodes = list(tree.body)
    while nodes:  # module level, including the bodies of module-level ``if`` and ``try``
        node = nodes.pop()
        if isinstance(node, ast.FunctionDef):
            defs[node.name] = _ast_signature(node.args)
        elif isinstance(node, ast.Assign):
            bound.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            bound.add(node.target.id)
        elif isinstance(node, ast.If | ast.Try):
            nodes.extend([*node.body, *node.orelse, *getattr(node, "finalbody", [])])
            for handler in getattr(node, "handlers", []):
                nodes.extend(handler.body)
    required = (*_protocol.REQUIRED_MEMBERS, *extras)
    problems = [f"missing `{m}`" for m in required if m not in defs and m not in bound]
    for member, sig in defs.items():
        if member in _protocol.REQUIRED_MEMBERS or member in _protocol.OPTIONAL_MEMBERS:
            problems.extend(_protocol.signature_problems(member, sig))
    return problems


def behaviour_problems(mod) -> list[str]:
    """Call every member of a usable backend once; what did not behave as documented."""
    problems = []
    a = np.arange(6.0).reshape(2, 3)
    x = mod.from_numpy(a)
    if not mod.is_array(x) or mod.is_array([1.0]) or mod.is_array(1.0):
        problems.append("`is_array` does not recognise exactly its own arrays")
    if not np.array_equal(mod.to_numpy(x), a):
        problems.append("`to_numpy(from_numpy(a))` is not `a`")
    if inet.namespace(x) is not mod.namespace():
        problems.append("`namespace()` is not the namespace of its arrays")
    r = mod.to_numpy(mod.random_normal((3, 2), 0, dtype="float32"))
    ref = np.random.default_rng(0).standard_normal((3, 2)).astype("float32")
    if r.dtype != np.float32 or not np.array_equal(r, ref):
        problems.append("`random_normal` does not draw NumPy's numbers from the seed")
    u = mod.to_numpy(mod.random_uniform((200,), 1, low=-1.0, high=2.0))
    if u.dtype != np.float64 or u.min() < -1.0 or u.max() >= 2.0:
        problems.append("`random_uniform` is not float64 on [low, high)")
    mod.synchronize()
    mod.reset_peak_memory()
    peak = mod.peak_memory()
    if peak is not None and not (isinstance(peak, int) and peak >= 0):
        problems.append(f"`peak_memory()` is {peak!r}")
    if mod.unavailable_reason() != "":
        problems.append("`unavailable_reason()` is not empty on an available backend")
    devices = mod.devices()
    if not (devices and all(isinstance(d, str) for d in devices)):
        problems.append(f"`devices()` is {devices!r}, not a list of str")
    if not isinstance(mod.scipy_module(), types.ModuleType):
        problems.append("`scipy_module()` is not a module")
    if getattr(mod, "storage", None) is not None:
        key, nbytes = mod.storage(x)
        hash(key)
        if nbytes < a.nbytes:
            problems.append(f"`storage` says {nbytes} bytes for an array of {a.nbytes}")
    return problems


def assert_conforms(mod, path: pathlib.Path | None = None, extras: tuple[str, ...] = ()):
    """The conformance test: statically (with `path`), on the module, and by behaviour."""
    if path is not None:
        assert not static_problems(path, extras), static_problems(path, extras)
    backends.check_backend(mod)
    assert isinstance(mod, backends.Backend)
    assert not [e for e in extras if not callable(getattr(mod, e, None))]
    if mod.available():
        assert not behaviour_problems(mod), behaviour_problems(mod)
    else:
        assert mod.unavailable_reason(), "an unavailable backend must say why"


def _source(name: str) -> pathlib.Path:
    spec = importlib.util.find_spec(backends._BUILT_IN[name])  # finds it, runs nothing
    return pathlib.Path(spec.origin)


# -- Every built-in backend --------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_backend_source_conforms(variant):
    """Read from source: conforms whether or not its library is installed here."""
    name = VARIANTS[variant]
    extras = TORCH_EXTRAS if name == "torch" else ()
    assert static_problems(_source(name), extras) == []


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_backend_module_conforms(variant):
    """Imported (every backend module imports without its library) and checked."""
    name = VARIANTS[variant]
    mod = backends.load_backend(name)
    assert mod.name == name
    extras = TORCH_EXTRAS if name == "torch" else ()
    assert_conforms(mod, _source(name), extras)


def test_usable_backend_behaves(backend):
    """Every member, called once on each usable backend (and device) of the test matrix."""
    assert behaviour_problems(backend) == []
    assert backend.name in backends.available_backends()


# -- The checker itself ------------------------------------------------------------------


def _copy_of_numpy_backend(**changes) -> types.ModuleType:
    mod = types.ModuleType("fake_backend")
    src = backends.load_backend("numpy")
    for member in (*_protocol.REQUIRED_MEMBERS, *_protocol.OPTIONAL_MEMBERS):
        setattr(mod, member, getattr(src, member))
    for member, value in changes.items():
        if value is None:
            delattr(mod, member)
        else:
            setattr(mod, member, value)
    return mod


def test_check_backend_accepts_a_conforming_module():
    backends.check_backend(_copy_of_numpy_backend())
    backends.check_backend(_copy_of_numpy_backend(storage=None, conv2d=None))  # optional


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"available": None}, "missing `available`"),
        ({"name": 3}, "`name` is 3, not a str"),
        ({"devices": ["cpu"]}, "`devices` is not callable"),
        ({"from_numpy": lambda a, device: a}, "`device` must be a keyword parameter"),
        ({"random_normal": lambda shape, *, dtype=None: 0}, "no positional parameter `seed`"),
        ({"is_array": lambda array: True}, "positional parameter 0 is `array`, not `x`"),
        ({"to_numpy": lambda x, copy: x}, "extra parameter `copy` has no default"),
        ({"synchronize": lambda *, stream: None}, "extra keyword parameter `stream`"),
        ({"storage": lambda: None}, "no positional parameter `x`"),
    ],
    ids=["missing", "name", "not-callable", "keyword", "positional", "renamed", "extra",
         "extra-keyword", "optional-member"],
)  # fmt: skip
def test_check_backend_says_what_does_not_fit(changes, problem):
    with pytest.raises(TypeError, match=r"`fake_backend` is not a backend: .*" + problem):
        backends.check_backend(_copy_of_numpy_backend(**changes))


def test_check_backend_accepts_flexible_signatures():
    """``*args``/``**kwargs`` and extra parameters with defaults accept the protocol's calls."""
    backends.check_backend(
        _copy_of_numpy_backend(
            from_numpy=lambda a, **kwargs: a,
            to_numpy=lambda x, copy=False: x,
            is_array=lambda *args: True,
        )
    )


# -- Looking backends up ------------------------------------------------------------------


def test_get_backend_takes_a_name_a_module_or_an_array():
    numpy_backend = backends.get_backend("numpy")
    assert backends.get_backend(numpy_backend) is numpy_backend
    assert backends.get_backend(np.ones(2)) is numpy_backend
    assert backends.get_backend(inet.Tensor(np.ones(2))) is numpy_backend
    fake = _copy_of_numpy_backend()
    assert backends.get_backend(fake) is fake  # checked once, then returned as it is
    assert backends.get_backend(fake) is fake


def test_get_backend_refuses_what_is_not_a_backend():
    with pytest.raises(TypeError, match="`math` is not a backend: missing `name`"):
        backends.get_backend(__import__("math"))
    with pytest.raises(TypeError, match=r"unsupported array type builtins\.int.*`backend`"):
        backends.get_backend(3)
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        backends.load_backend("jax")


def test_modules_that_take_a_backend_take_modules_and_names():
    """``backend=`` of the nn initialisers and data loaders goes through get_backend."""
    from implicitnet import data, nn

    fake = _copy_of_numpy_backend()
    w = nn.uniform_init((2, 3), 0.5, seed=0, backend=fake)
    assert backends.backend_of(w).name == "numpy"
    assert nn.zeros_init((2,), backend="numpy").shape == (2,)
    with pytest.raises(TypeError, match="`math` is not a backend"):
        data.read_idx(CORE / "nothing.idx", backend=__import__("math"))


def test_register_backend_refuses_duplicates_and_misfits(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    with pytest.raises(ValueError, match="`module`: a backend named 'numpy' is registered"):
        backends.register_backend(_copy_of_numpy_backend())
    with pytest.raises(TypeError, match="missing `available`"):
        backends.register_backend(_copy_of_numpy_backend(available=None))
    assert list(backends._REGISTRY) == list(backends.BACKEND_NAMES)


def test_core_uses_only_public_names_of_backends():
    """No ``backends._load``-style access to private names of implicitnet.backends in the
    core (imports of private names are checked in tests/test_imports.py)."""
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE)
        if rel.parts[0] == "backends":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        aliases = {"backends"}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                aliases.update(a.asname or a.name for a in node.names if a.name == "backends")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
            ):
                offenders.append(f"{rel}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not offenders, "\n".join(offenders)


def test_static_check_reads_a_module_that_cannot_import(tmp_path):
    """The source check works on a file whose library is absent (it never imports it)."""
    path = tmp_path / "_broken_backend.py"
    numpy_source = _source("numpy").read_text(encoding="utf-8")
    path.write_text(
        "import no_such_array_library\n"
        + numpy_source.replace("def devices()", "def _devices()").replace(
            "def from_numpy(a, *, device=None)", "def from_numpy(a, device)"
        )
    )
    problems = static_problems(path)
    assert "missing `devices`" in problems
    assert any("`device` must be a keyword parameter" in p for p in problems), problems
    assert static_problems(_source("numpy")) == []
