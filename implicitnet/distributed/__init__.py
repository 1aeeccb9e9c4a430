"""Beyond one machine, on existing engines: batched solves on Dask, training over MPI.

Dask (``pip install 'implicitnet[distributed]'``) runs :func:`fixed_point` and
:func:`root` on every chunk of a Dask array along its batch axis, where the chunk
lives. MPI (mpi4py) runs data-parallel training: :class:`DataParallel` splits each
batch across ranks and all-reduces the gradients. Both libraries are imported only
when used.
"""

from ._dask import STATUSES as STATUSES
from ._dask import DaskResult as DaskResult
from ._dask import fixed_point as fixed_point
from ._dask import root as root
from ._mpi import CommStats as CommStats
from ._mpi import DataParallel as DataParallel
from ._mpi import ReplicaMismatchError as ReplicaMismatchError
from ._mpi import data_parallel_epoch as data_parallel_epoch

__all__ = [
    "STATUSES",
    "CommStats",
    "DaskResult",
    "DataParallel",
    "ReplicaMismatchError",
    "data_parallel_epoch",
    "fixed_point",
    "root",
]
