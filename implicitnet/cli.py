"""The ``implicitnet`` command line.

``main(argv)`` returns an exit code: 0 success, 1 runtime failure, 2 usage error.
Metrics go to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

from . import __version__
from . import backends as _backends

__all__ = ["main", "main_entry"]


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit(2) itself
        raise _UsageError(f"{self.prog}: error: {message}")


def _cmd_info(ns) -> int:
    found = {}
    for name in _backends.BACKEND_NAMES:
        mod = _backends._load(name)
        if mod.available():
            found[name] = {"available": True, "devices": mod.devices()}
        else:
            found[name] = {"available": False, "reason": mod.unavailable_reason()}
    info = {
        "implicitnet": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backends": found,
    }
    if ns.json:
        print(json.dumps(info))
        return 0
    print(f"implicitnet {__version__} (Python {info['python']}, {info['platform']})")
    print("backends:")
    for name, b in found.items():
        if b["available"]:
            print(f"  {name:<18} yes   devices: {', '.join(b['devices'])}")
        else:
            print(f"  {name:<18} no    ({b['reason']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="implicitnet", description="Implicit layers on the array API.")
    parser.add_argument("--version", action="version", version=f"implicitnet {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    p_info = sub.add_parser("info", help="version, backends found and their devices")
    p_info.add_argument("--json", action="store_true", help="print one JSON object")
    p_info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with `argv` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    if getattr(ns, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return ns.func(ns)


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
