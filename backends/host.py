"""Host-side NumPy helpers used by the backend-neutral core.

The core never imports NumPy; where it must work on the host (seeded permutations, data
and checkpoint files, dtype names, a readable comparison of two arrays), it calls these
functions, which take and return NumPy arrays. The backend modules move the results to
the library in use (``from_numpy``).

Examples
--------
>>> from implicitnet.backends import host
>>> host.dtype_name("float32"), host.permutation(4, seed=0, epoch=1).shape
('float32', (4,))
"""

from __future__ import annotations

from ._check import allclose_report as allclose_report
from ._common import check_shape as check_shape
from ._common import dtype_name as dtype_name
from ._common import generator as generator
from ._common import solve as solve
from ._data import astype as astype
from ._data import digits as digits
from ._data import permutation as permutation
from ._data import read_idx as read_idx
from ._data import split_indices as split_indices
from ._io import check_writable as check_writable
from ._io import load_arrays as load_arrays
from ._io import save_arrays as save_arrays

__all__ = [
    "allclose_report",
    "astype",
    "check_shape",
    "check_writable",
    "digits",
    "dtype_name",
    "generator",
    "load_arrays",
    "permutation",
    "read_idx",
    "save_arrays",
    "solve",
    "split_indices",
]
