"""The angles split with exact sums: every rank a replica of the network, no DDP.

:class:`ReplicaCommunicator` implements the trainer's communicator for
:mod:`hpc_adept.dip.exact`: every rank runs the same network on the same input, scores its
angles one by one, and the ranks add up a float64 vector of per-angle slots (each slot
written by one rank, so the sum is exact) and the volume gradient in fixed point (int64,
exact). Every rank then runs the same network backward and takes the same Adam step, so
the weights never need an all-reduce and the result has the same bits on any number of
ranks.

Transport: host tensors over MPI (the job's communicator; no torch.distributed at all),
device tensors over torch.distributed (NCCL) when every rank has a GPU of its own, else
over MPI through host memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpc_adept.parallel.context import ParallelContext
from hpc_adept.parallel.ddp import WholeVolume
from hpc_adept.parallel.slabs import _host, _MpiTransport, _TorchTransport
from hpc_adept.parallel.torchdist import init_torch_distributed, torch_backend

if TYPE_CHECKING:
    import torch
    from torch import nn


class ReplicaCommunicator(WholeVolume):
    """:class:`hpc_adept.dip.trainer.Communicator` with ``exact_sums`` (angles split).

    Parameters
    ----------
    ctx : ParallelContext
        The job's ranks (one rank works too: then nothing is sent).
    device : torch.device
        This rank's device.
    """

    splits_volume = False
    exact_sums = True

    def __init__(self, ctx: ParallelContext, device: Any) -> None:
        self.world_size = ctx.size
        self.device = device
        self.transport: Any = None
        if ctx.is_parallel:
            if torch_backend(ctx, device) == "nccl":  # agreed by all ranks
                init_torch_distributed(ctx, device, backend="nccl")
                self.transport = _TorchTransport()
            else:  # every call is made from the main thread: any MPI thread level works
                self.transport = _MpiTransport(ctx.comm, "cpu")

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model itself: every rank computes the same weight gradients."""
        return model

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of a small 1-D tensor over ranks (over MPI: left in host memory, where
        the caller reads it)."""
        if self.transport is None:
            return values
        if isinstance(self.transport, _MpiTransport):
            staged = _host(values)
            host = staged.clone() if staged is values else staged
            return self.transport.host_all_reduce_(host)
        return self.transport.all_reduce_(values.clone())

    def sum_exact_(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of an int64 tensor over ranks, in place (integer addition: exact)."""
        return values if self.transport is None else self.transport.all_reduce_(values)

