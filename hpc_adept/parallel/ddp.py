"""Data-parallel DIP training over torch.distributed, and a collective stop flag.

:class:`DdpCommunicator` implements :class:`hpc_adept.dip.trainer.Communicator`: the
network is wrapped in ``DistributedDataParallel`` over the process group set up from MPI
(:func:`hpc_adept.parallel.torchdist.init_torch_distributed`: NCCL on GPU, gloo on CPU),
which *averages* gradients over ranks; the trainer scales its data term by the world size
so the applied gradient is that of the full loss with TV counted once.

:class:`StopFlag` turns SIGTERM (and SIGUSR1, which SLURM's ``--signal`` sends) into a flag
that the trainer polls every iteration; the trainer sums the flags over ranks with the
loss, so all ranks stop at the same iteration even when the signal reached only some.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import TYPE_CHECKING, Any

from hpc_adept.parallel.context import ParallelContext
from hpc_adept.parallel.torchdist import init_torch_distributed

if TYPE_CHECKING:  # torch is imported where it is used: `import hpc_adept.parallel` stays light
    import torch
    from torch import nn

log = logging.getLogger(__name__)


class WholeVolume:
    """The trainer's communicator methods when every rank computes the whole volume:
    nothing to add up beyond the gradients' own reduction."""

    def reduce_projections(self, projections: torch.Tensor) -> torch.Tensor:
        return projections

    def finish_gradients(self, model: nn.Module) -> None:
        return None

    def gather_volume(self, volume: torch.Tensor) -> torch.Tensor:
        return volume


class DdpCommunicator(WholeVolume):
    """Gradient all-reduce by DistributedDataParallel and scalar sums over the ranks.

    Parameters
    ----------
    ctx : ParallelContext
        The job's ranks; with one rank nothing is wrapped or reduced.
    device : torch.device
        This rank's device (selects NCCL or gloo).
    """

    splits_volume = False

    def __init__(self, ctx: ParallelContext, device: Any) -> None:
        self.world_size = ctx.size
        self.device = device
        self._distributed = ctx.is_parallel
        if self._distributed:
            init_torch_distributed(ctx, device)

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self._distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device] if getattr(self.device, "type", "cpu") == "cuda" else None
        # Every rank runs the same forward on the same input, so BatchNorm statistics are
        # identical everywhere: broadcasting buffers each step would be wasted traffic.
        import inspect

        params = inspect.signature(DistributedDataParallel).parameters
        sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
                else {"broadcast_buffers": False})
        return DistributedDataParallel(model, device_ids=ids, **sync)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if not self._distributed:
            return values
        import torch.distributed as dist

        out = values.clone()
        dist.all_reduce(out)
        return out



class StopFlag:
    """Set by SIGTERM/SIGUSR1 while installed (a context manager restoring the old handlers).

    Use ``flag()`` (or ``bool(flag)``) as the trainer's ``stop_requested``.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signum = signum

    def __call__(self) -> bool:
        return self.requested

    def __bool__(self) -> bool:
        return self.requested

    def __enter__(self) -> StopFlag:
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                log.debug("cannot install a handler for signal %d outside the main thread", sig)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
