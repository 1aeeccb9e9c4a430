"""Helpers of the command-line tests: run ``implicitnet`` in-process, read its JSON lines."""

from __future__ import annotations

import json

from implicitnet.cli import main


def run(capsys, argv):
    """``(exit code, stdout, stderr)`` of ``implicitnet *argv``, through ``main(argv)``."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out):
    """The records of output written with ``--json`` (one JSON object a line)."""
    return [json.loads(line) for line in out.strip().splitlines()]
