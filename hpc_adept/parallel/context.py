"""MPI context of the process: rank, size, rank within the node; a serial fallback.

Rank, size and local rank come from MPI itself (not from SLURM variables), so mpiexec, srun
and a plain ``python`` behave the same. Without mpi4py, or with ``ADEPT_NO_MPI=1``, the
process runs as a single rank.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParallelContext:
    """Where this process stands in the job.

    Attributes
    ----------
    comm : mpi4py.MPI.Comm or None
        The job's communicator (None when serial without MPI).
    rank, size : int
        Rank in ``comm`` and number of ranks.
    local_rank, local_size : int
        Rank and number of ranks on this node (shared-memory split of ``comm``).
    """

    comm: Any
    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def is_parallel(self) -> bool:
        return self.size > 1

    def abort(self, code: int = 1) -> None:
        """Stop every rank of the job (a failing rank must not leave the others hanging)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.comm is not None and self.size > 1:
            self.comm.Abort(code)
        raise SystemExit(code)


SERIAL = ParallelContext(comm=None, rank=0, size=1, local_rank=0, local_size=1)


def from_comm(comm: Any) -> ParallelContext:
    """Context of an mpi4py communicator (local rank via a shared-memory split)."""
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        local_rank, local_size = node.Get_rank(), node.Get_size()
    finally:
        node.Free()
    return ParallelContext(comm, comm.Get_rank(), comm.Get_size(), local_rank, local_size)


@functools.lru_cache(maxsize=1)
def get_context() -> ParallelContext:
    """The process's context: MPI's COMM_WORLD, or :data:`SERIAL` without MPI."""
    if os.environ.get("ADEPT_NO_MPI"):
        return SERIAL
    try:
        from mpi4py import MPI
    except ImportError:
        log.debug("mpi4py not importable: running as one serial rank")
        return SERIAL
    return from_comm(MPI.COMM_WORLD)
