"""Everything that talks MPI or torch.distributed lives in this package.

Kernels (lamino, phantom, sim, ptycho, ...) take arrays and return arrays; stages combine
them with the helpers here.
"""

from hpc_adept.parallel.collectives import (
    allreduce_sum,
    barrier,
    bcast,
    bcast_array,
    first_problem,
    gather_dict,
    gather_objects,
)
from hpc_adept.parallel.context import ParallelContext, get_context
from hpc_adept.parallel.ddp import DdpCommunicator, StopFlag
from hpc_adept.parallel.partition import block_range, cyclic_indices

__all__ = [
    "DdpCommunicator",
    "ParallelContext",
    "StopFlag",
    "allreduce_sum",
    "barrier",
    "bcast",
    "bcast_array",
    "block_range",
    "cyclic_indices",
    "first_problem",
    "gather_dict",
    "gather_objects",
    "get_context",
]
