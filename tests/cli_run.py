"""Helpers of the command-line tests: run ``main(argv)`` and read what it printed."""

from __future__ import annotations

import json

from implicitnet.cli import main


def run(capsys, argv):
    """``(exit code, stdout, stderr)`` of ``implicitnet ARGV``."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out):
    """The JSON objects printed one per line in `out`."""
    return [json.loads(line) for line in out.strip().splitlines()]
