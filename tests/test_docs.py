"""The documentation is tested: its code runs, its API reference is complete, it builds.

* Every fenced ```` ```python ```` block (or ```` ```{code-block} python ````) in
  ``docs/**/*.md`` and ``README.md`` runs, page by page: the blocks of one page run in
  order in one fresh ``__main__`` namespace, in a temporary working directory. A failure
  names the page and the line of the block.
* A MyST comment on the line(s) just above a block marks it (see ``docs/contributing.md``):

  - ``% doc: skip REASON`` skips it, saying why (a reason is required);
  - ``% doc: requires NAME[, NAME...]`` skips it unless every NAME is there: a backend
    (``cupy``: a usable CUDA device), an ``implicitnet.*`` name (a public name that is
    not merged yet), or an importable module (``torch``).

  Skipped blocks are reported as skips of their own, with the reason.
* Every docstring example of every module of ``implicitnet`` (``implicitnet.backends``
  included) runs under :mod:`doctest`. Modules are found on disk and imported by their
  package name, which is what the ``implicitnet.backends`` package-dir mapping needs
  (``pytest --doctest-modules`` would import ``backends/`` as a top-level package).
* Every public name of ``implicitnet`` and of its public subpackages appears in an
  ``autosummary`` list (or ``auto*`` directive) of ``docs/api/``.
* ``sphinx-build -W`` passes, with the network blocked (skipped without Sphinx).
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import importlib.util
import linecache
import pkgutil
import re
import subprocess
import sys
import textwrap
import traceback
import types
from pathlib import Path

import pytest

import implicitnet
from implicitnet import backends

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API_DIR = DOCS / "api"
EXCLUDED_DIRS = {"_build", "generated", "_templates"}

# The subpackages whose public names must appear in the API reference. One that is not
# importable yet (or is still an empty namespace directory) is skipped, saying so.
PUBLIC_SUBPACKAGES = (
    "implicitnet.autodiff",
    "implicitnet.backends",
    "implicitnet.data",
    "implicitnet.distributed",
    "implicitnet.linalg",
    "implicitnet.nn",
    "implicitnet.ops",
    "implicitnet.optim",
    "implicitnet.solvers",
    "implicitnet.testing",
    "implicitnet.testing.strategies",
)

# Languages of fenced blocks that run, and the MyST directives that hold literal code.
PYTHON_LANGS = {"python", "py", "python3"}
CODE_DIRECTIVES = {"{code-block}", "{code}", "{sourcecode}"}
# Directives whose body is not Markdown (so fences inside are not blocks of the page).
LITERAL_DIRECTIVES = CODE_DIRECTIVES | {"{eval-rst}", "{math}", "{raw}", "{literalinclude}"}
# Interactive-session blocks are not run by this test: write examples as ```python.
FORBIDDEN_LANGS = {"pycon", "ipython", "ipython3", "python-console", "doscon"}

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>.*)$")
MARKER = re.compile(r"^\s*%\s*doc:\s*(?P<kind>[\w-]+)\s*(?P<arg>.*?)\s*$")


# -- Markdown code blocks ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str  # path relative to the repository root, with forward slashes
    line: int  # 1-based line of the first line of code
    lang: str
    code: str
    skip_reason: str | None = None
    marker_error: str | None = None


def _pages() -> list[Path]:
    pages = []
    for path in sorted(DOCS.rglob("*.md")):
        if EXCLUDED_DIRS.isdisjoint(path.relative_to(DOCS).parts):
            pages.append(path)
    readme = ROOT / "README.md"
    if readme.is_file():
        pages.append(readme)
    return pages


def _relpath(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _requirement_missing(name: str) -> str | None:
    """Why requirement `name` of a ``% doc: requires`` marker is not met, or None."""
    if name in backends.BACKEND_NAMES:
        mod = backends._load(name)
        if mod.available():
            return None
        return f"needs the {name} backend: {mod.unavailable_reason()}"
    if name == "implicitnet" or name.startswith("implicitnet."):
        obj: object = implicitnet
        parts = name.split(".")
        for i, part in enumerate(parts[1:], start=2):
            if hasattr(obj, part):
                obj = getattr(obj, part)
                continue
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                return f"API not merged yet: `{name}` does not exist"
        return None
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"needs `{name}`, which is not installed"


def _read_markers(lines: list[str], fence_index: int) -> tuple[str | None, str | None]:
    """The skip reason and marker error from the ``% doc:`` comments above a fence."""
    skip, error = None, None
    i = fence_index - 1
    while i >= 0 and lines[i].strip().startswith("%"):
        m = MARKER.match(lines[i])
        if m is not None:
            kind, arg = m["kind"], m["arg"]
            if kind == "skip":
                if arg:
                    skip = skip or arg
                else:
                    error = f"line {i + 1}: `% doc: skip` needs a reason"
            elif kind == "requires":
                names = [n.strip() for n in arg.split(",") if n.strip()]
                if not names:
                    error = f"line {i + 1}: `% doc: requires` needs at least one name"
                for name in names:
                    reason = _requirement_missing(name)
                    if reason is not None:
                        skip = skip or reason
            else:
                error = (
                    f"line {i + 1}: unknown marker `% doc: {kind}` "
                    "(known: `skip REASON`, `requires NAME[, NAME...]`)"
                )
        i -= 1
    return skip, error


def _strip_directive_options(body: list[str]) -> tuple[list[str], int]:
    """Drop ``:key: value`` (or ``---`` fenced YAML) options at the top of a directive."""
    n = 0
    if body and body[0].strip() == "---":
        n = 1
        while n < len(body) and body[n].strip() != "---":
            n += 1
        n += 1
    else:
        while n < len(body) and re.match(r"^\s*:[\w-]+:", body[n]):
            n += 1
    if n and n < len(body) and not body[n].strip():
        n += 1
    return body[n:], n


def parse_blocks(path: Path) -> list[Block]:
    """Every fenced code block of the Markdown page `path`, with its markers."""
    return parse_text(path.read_text(encoding="utf-8"), _relpath(path))


def parse_text(text: str, page: str) -> list[Block]:
    """Every fenced code block of the Markdown `text` of `page`, with its markers."""
    lines = text.splitlines()
    blocks = []
    open_directives: list[tuple[str, int]] = []  # (fence char, length) of open {dir}s
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None or (m["fence"][0] == "`" and "`" in m["info"]):
            i += 1  # not a fence (CommonMark: a backtick fence's info has no backtick)
            continue
        fence, info, indent = m["fence"], m["info"].strip(), len(m["indent"])
        words = info.split()
        first = words[0] if words else ""
        if not info and open_directives:
            char, length = open_directives[-1]
            if fence[0] == char and len(fence) >= length:
                open_directives.pop()  # the end of a Markdown-bodied directive
                i += 1
                continue
        if first.startswith("{") and first not in LITERAL_DIRECTIVES:
            open_directives.append((fence[0], len(fence)))  # body is Markdown: look inside
            i += 1
            continue
        # A literal block: find its closing fence.
        j = i + 1
        while j < len(lines):
            c = FENCE.match(lines[j])
            if c and not c["info"].strip() and c["fence"][0] == fence[0]:
                if len(c["fence"]) >= len(fence):
                    break
            j += 1
        body = lines[i + 1 : j]
        first_code_line = i + 2
        if first in CODE_DIRECTIVES:
            lang = words[1].lower() if len(words) > 1 else ""
            body, dropped = _strip_directive_options(body)
            first_code_line += dropped
        elif first.startswith("{"):
            lang = first
        else:
            lang = first.lower()
        body = [ln[indent:] if ln[:indent].strip() == "" else ln.lstrip() for ln in body]
        skip, error = _read_markers(lines, i)
        blocks.append(
            Block(
                page=page,
                line=first_code_line,
                lang=lang,
                code=textwrap.dedent("\n".join(body)) + "\n",
                skip_reason=skip,
                marker_error=error,
            )
        )
        i = j + 1
    return blocks


def _python_blocks() -> dict[str, list[Block]]:
    out = {}
    for path in _pages():
        blocks = [b for b in parse_blocks(path) if b.lang in PYTHON_LANGS]
        if blocks:
            out[_relpath(path)] = blocks
    return out


PYTHON_BLOCKS = _python_blocks()
SKIPPED_BLOCKS = [b for blocks in PYTHON_BLOCKS.values() for b in blocks if b.skip_reason]


def _run_block(block: Block, namespace: dict, source_lines: list[str]) -> None:
    """Run one block so that tracebacks point at the lines of the Markdown page."""
    filename = block.page
    linecache.cache[filename] = (
        sum(len(s) for s in source_lines),
        None,
        source_lines,
        filename,
    )
    # Pad with newlines so line numbers in the compiled code are the page's lines.
    code = compile("\n" * (block.line - 1) + block.code, filename, "exec")
    exec(code, namespace)


@pytest.mark.parametrize("page", list(PYTHON_BLOCKS))
def test_doc_page_examples_run(page, tmp_path, monkeypatch):
    blocks = PYTHON_BLOCKS[page]
    errors = [f"{page}: {b.marker_error}" for b in blocks if b.marker_error]
    assert not errors, "bad `% doc:` markers:\n" + "\n".join(errors)
    runnable = [b for b in blocks if b.skip_reason is None]
    if not runnable:
        reasons = sorted({b.skip_reason for b in blocks})
        pytest.skip(f"{page}: all {len(blocks)} python blocks skipped: {'; '.join(reasons)}")

    source_lines = (ROOT / page).read_text(encoding="utf-8").splitlines(keepends=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(sys, "argv", [page])
    module = types.ModuleType("__main__")
    module.__file__ = str(ROOT / page)
    monkeypatch.setitem(sys.modules, "__main__", module)
    skipped_before = []
    for block in blocks:
        if block.skip_reason is not None:
            skipped_before.append(block)
            continue
        failure = None
        try:
            _run_block(block, module.__dict__, source_lines)
        except Exception as exc:
            failure = _describe_failure(exc, block, skipped_before)
        if failure is not None:
            pytest.fail(failure, pytrace=False)


def _describe_failure(exc: Exception, block: Block, skipped_before: list[Block]) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != block.page:
        tb = tb.tb_next  # drop the frames of this test
    report = "".join(traceback.format_exception(type(exc), exc, tb))
    hint = ""
    if isinstance(exc, NameError) and skipped_before:
        lines = ", ".join(str(b.line) for b in skipped_before)
        hint = (
            f"\n(blocks at lines {lines} were skipped; a block that uses their "
            "names needs the same `% doc:` marker)"
        )
    return f"{block.page}: the python block at line {block.line} failed:\n{report}{hint}"


@pytest.mark.parametrize(
    "block", SKIPPED_BLOCKS, ids=[f"{b.page}:{b.line}" for b in SKIPPED_BLOCKS]
)
def test_doc_block_skipped(block):
    pytest.skip(f"{block.page}, block at line {block.line}: {block.skip_reason}")


def test_doc_examples_are_python_blocks():
    """Examples are ```python blocks; interactive ``>>>`` sessions would go untested."""
    bad = []
    for path in _pages():
        for b in parse_blocks(path):
            if b.lang in FORBIDDEN_LANGS or (
                b.lang not in PYTHON_LANGS and re.search(r"^>>> ", b.code, re.M)
            ):
                bad.append(f"{b.page}:{b.line} ({b.lang or 'no language'})")
    assert not bad, "write these examples as ```python blocks (without >>>):\n" + "\n".join(bad)


def test_block_parser():
    page = textwrap.dedent(
        """\
        # Title

        ```python
        a = 1
        ```

        % doc: skip needs a GPU
        ```{code-block} python
        :caption: x

        b = 2
        ```

        ````{note}
        ```python
        c = 3
        ```
        ````

        ```bash
        echo no
        ```

        ```` ```python ```` is inline code, not a fence

        % doc: skip
        ```python
        d = 4
        ```

        % doc: requires implicitnet.no_such_name, not_a_module_xyz
        ```python
        e = 5
        ```
        """
    )
    blocks = parse_text(page, "selftest.md")
    assert [(b.lang, b.line, b.code.strip()) for b in blocks] == [
        ("python", 4, "a = 1"),
        ("python", 11, "b = 2"),
        ("python", 16, "c = 3"),
        ("bash", 21, "echo no"),
        ("python", 28, "d = 4"),
        ("python", 33, "e = 5"),
    ]
    assert [b.skip_reason for b in blocks[:4]] == [None, "needs a GPU", None, None]
    assert blocks[4].skip_reason is None and "needs a reason" in blocks[4].marker_error
    assert blocks[5].skip_reason == "API not merged yet: `implicitnet.no_such_name` does not exist"


def test_getting_started_repeats_the_readme_commands():
    """The README's shell commands appear, verbatim, on the Getting started page."""
    readme = ROOT / "README.md"
    if not readme.is_file():
        pytest.skip("README.md does not exist yet")
    page = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    commands = [b.code.strip() for b in parse_blocks(readme) if b.lang in {"bash", "sh"}]
    missing = [c for c in commands if c not in page]
    assert commands, "README.md has no ```bash block"
    assert not missing, f"docs/getting-started.md lacks the README commands: {missing}"


def test_every_status_is_explained():
    """The diagnostics tutorial explains every `Status` a solve can end with."""
    page = (DOCS / "tutorials" / "diagnostics.md").read_text(encoding="utf-8")
    missing = [s.value for s in implicitnet.Status if f'`"{s.value}"`' not in page]
    assert not missing, f"docs/tutorials/diagnostics.md does not explain statuses {missing}"


# -- Docstring examples ------------------------------------------------------------------


def _module_names() -> list[str]:
    """Every module of implicitnet, found on disk (so nothing is imported to list them)."""
    roots = [("implicitnet", implicitnet.__path__), ("implicitnet.backends", backends.__path__)]
    names = []
    for prefix, path in roots:
        names.append(prefix)
        for info in pkgutil.walk_packages(path, prefix + ".", onerror=lambda name: None):
            names.append(info.name)
    return sorted(set(names) - {"implicitnet.__main__"})  # __main__ runs the CLI


def _import_error_reason(name: str, exc: BaseException) -> str | None:
    """A skip reason when `name` needs an optional package that is not installed."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    if exc.name.split(".")[0] not in ("implicitnet", "backends"):
        return f"{name} needs `{exc.name}`, which is not installed"
    return None


def _collect_doctests():
    params = []
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in _module_names():
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            params.append(pytest.param(name, exc, id=f"{name}[import]"))
            continue
        for test in finder.find(module, name):
            if test.examples:
                params.append(pytest.param(name, test, id=test.name))
    return params


@pytest.mark.parametrize(("module", "test"), _collect_doctests())
def test_docstring_examples(module, test, tmp_path, monkeypatch):
    if isinstance(test, BaseException):
        reason = _import_error_reason(module, test)
        if reason:
            pytest.skip(reason)
        msg = "".join(traceback.format_exception(type(test), test, test.__traceback__))
        pytest.fail(f"{module} does not import:\n{msg}", pytrace=False)
    monkeypatch.chdir(tmp_path)
    out: list[str] = []
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    test.globs = dict(test.globs)
    result = runner.run(test, out=out.append, clear_globs=True)
    if result.failed:
        pytest.fail("".join(out), pytrace=False)


# -- API reference -----------------------------------------------------------------------

_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\.\s+(?P<name>[\w:-]+)::\s*(?P<arg>\S*)")
_AUTO_ONE = {
    "autofunction",
    "autoclass",
    "autodata",
    "autoexception",
    "automethod",
    "autoattribute",
    "autoproperty",
    "py:function",
    "py:class",
    "py:data",
}


def documented_names() -> set[str]:
    """Fully qualified names listed in ``autosummary`` lists and ``auto*`` directives."""
    names = set()
    for path in sorted(API_DIR.rglob("*")):
        if path.suffix not in {".rst", ".md"}:
            continue
        if not EXCLUDED_DIRS.isdisjoint(path.relative_to(API_DIR).parts):
            continue
        module = None
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            m = _DIRECTIVE.match(lines[i])
            i += 1
            if m is None:
                continue
            name, arg, indent = m["name"], m["arg"], len(m["indent"])
            if name in {"currentmodule", "module", "py:currentmodule", "py:module"}:
                module = None if arg == "None" else arg
            elif name == "automodule":
                module = arg
            elif name in _AUTO_ONE and arg:
                names.add(_qualify(arg, module))
            elif name == "autosummary":
                while i < len(lines) and (
                    not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
                ):
                    entry = lines[i].strip()
                    i += 1
                    if entry and not entry.startswith(":") and not entry.startswith(".."):
                        names.add(_qualify(entry.split()[0].lstrip("~"), module))
    return names


def _qualify(name: str, module: str | None) -> str:
    if name.startswith("implicitnet") or module is None:
        return name
    return f"{module}.{name}"


def _resolve(qualname: str):
    parts = qualname.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(qualname)


def _public_names(module: types.ModuleType) -> list[str]:
    if hasattr(module, "__all__"):
        return list(module.__all__)
    names = []
    for name, obj in vars(module).items():
        if name.startswith("_") or isinstance(obj, types.ModuleType):
            continue
        if str(getattr(obj, "__module__", "")).startswith("implicitnet"):
            names.append(name)
    return names


def _public_modules() -> tuple[list[tuple[str, types.ModuleType]], list[str]]:
    """``(public name, module)`` of implicitnet and its importable public subpackages."""
    modules, missing = [("implicitnet", implicitnet)], []
    for name in PUBLIC_SUBPACKAGES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
            missing.append(f"{name} (not importable yet)")
            continue
        if getattr(module, "__file__", None) is None:
            missing.append(f"{name} (empty directory, no __init__.py yet)")
            continue
        modules.append((name, module))
    return modules, missing


def test_every_public_name_is_documented():
    documented = documented_names()
    documented_objects = []
    for qualname in documented:
        try:
            documented_objects.append(_resolve(qualname))
        except (ImportError, AttributeError):
            pass  # reported by test_api_reference_entries_exist
    modules, _ = _public_modules()
    undocumented = []
    for modname, module in modules:
        for name in _public_names(module):
            qualname = f"{modname}.{name}"
            if qualname in documented:
                continue
            obj = getattr(module, name)
            if (callable(obj) or isinstance(obj, type)) and any(
                obj is d for d in documented_objects
            ):
                continue  # a re-export of a documented object
            page = "top-level.rst" if module is implicitnet else f"{modname.split('.')[1]}.rst"
            undocumented.append(f"{qualname}  (add it to docs/api/{page})")
    assert not undocumented, (
        "public names missing from the API reference (an autosummary list in docs/api/; "
        "a new page starts from docs/api/_subpackage-template.txt):\n  " + "\n  ".join(undocumented)
    )


def test_api_reference_entries_exist():
    broken = []
    for qualname in sorted(documented_names()):
        try:
            _resolve(qualname)
        except (ImportError, AttributeError):
            broken.append(qualname)
    assert not broken, f"the API pages list names that do not exist: {broken}"


def test_every_public_subpackage_has_an_api_page():
    modules, missing = _public_modules()
    no_page = []
    for modname, module in modules[1:]:
        page = modname.split(".")[1]
        if _public_names(module) and not any(
            (API_DIR / f"{page}{suffix}").is_file() for suffix in (".rst", ".md")
        ):
            no_page.append(f"{modname} (docs/api/{page}.rst)")
    assert not no_page, (
        "public subpackages without an API page (start from "
        f"docs/api/_subpackage-template.txt and list it in docs/api/index.rst): {no_page}"
    )
    if missing:
        pytest.skip("not checked for API docs yet: " + ", ".join(missing))


# -- Benchmarks page ---------------------------------------------------------------------


def test_every_benchmark_script_is_documented():
    scripts = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
    if not scripts:
        pytest.skip("no benchmarks/*.py scripts yet")
    page = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    missing = [p.name for p in scripts if f"python benchmarks/{p.name}" not in page]
    assert not missing, f"docs/benchmarks.md has no section for {missing}"


# -- The build ---------------------------------------------------------------------------

_OFFLINE_BUILD = """
import socket, sys

def _refuse(*args, **kwargs):
    raise OSError("the docs build tried to reach the network")

socket.socket.connect = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
from sphinx.cmd.build import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # a full build with autosummary: tens of seconds
def test_sphinx_build_passes_with_warnings_as_errors(tmp_path):
    for mod in (
        "sphinx",
        "pydata_sphinx_theme",
        "numpydoc",
        "myst_parser",
        "sphinx-mathjax-offline",
    ):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"the docs extra is not installed (no `{mod}`): pip install '.[docs]'")
    proc = subprocess.run(
        [
            *(sys.executable, "-c", _OFFLINE_BUILD, "-W", "--keep-going", "-q", "-E"),
            *("-d", str(tmp_path / "doctrees"), "-b", "html", str(DOCS), str(tmp_path / "html")),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, f"sphinx-build -W failed:\n{proc.stdout}\n{proc.stderr}"
    # Formulas render offline: MathJax is served from the site, and no page loads a
    # script or a style sheet from another host.
    html = tmp_path / "html"
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    remote = re.compile(r"<(?:script|link)\b[^>]*(?:src|href)=\"(?:https?:)?//", re.IGNORECASE)
    pages = sorted(html.rglob("*.html"))
    assert pages
    offenders = [str(p.relative_to(html)) for p in pages if remote.search(p.read_text("utf-8"))]
    assert not offenders, f"pages that load remote scripts or styles: {offenders[:5]}"
    math_page = (html / "theory" / "equilibrium.html").read_text("utf-8")
    assert "_static/mathjax/tex-chtml.js" in math_page
