"""Everything that talks MPI or torch.distributed lives in this package.

Kernels (lamino, phantom, sim, ptycho, ...) take arrays and return arrays; stages combine
them with the helpers here. :class:`DistributedLaminoOperator` (:mod:`.distops`) is the
laminography operator with its angles shared between ranks.
"""

from hpc_adept.parallel.collectives import (
    allreduce_sum,
    barrier,
    bcast,
    bcast_array,
    first_failure,
    first_problem,
    gather_dict,
    gather_objects,
)
from hpc_adept.parallel.context import ParallelContext, get_context
from hpc_adept.parallel.ddp import DdpCommunicator, StopFlag
from hpc_adept.parallel.partition import aligned_block_range, block_range, cyclic_indices

__all__ = [
    "DdpCommunicator",
    "DistributedLaminoOperator",
    "ParallelContext",
    "StopFlag",
    "aligned_block_range",
    "allgather_blocks",
    "allreduce_sum",
    "barrier",
    "bcast",
    "bcast_array",
    "block_range",
    "cyclic_indices",
    "first_failure",
    "first_problem",
    "gather_dict",
    "gather_objects",
    "get_context",
]


def __getattr__(name: str):
    # distops imports torch: loaded on first use, so `adept --help` and config errors stay fast
    if name in ("DistributedLaminoOperator", "allgather_blocks"):
        from hpc_adept.parallel import distops

        return getattr(distops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
