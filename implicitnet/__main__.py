"""``python -m implicitnet``: the command line (see :mod:`implicitnet.cli`)."""

from .cli import main_entry

main_entry()
