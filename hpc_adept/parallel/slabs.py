"""Volume decomposition of the DIP: every rank owns a z slab of the volume.

With the angles split over ranks (:mod:`hpc_adept.parallel.ddp`) every rank still runs the
whole network, so its cost does not shrink with more ranks. Here the network itself is
split: rank r computes the slices ``[start_r, stop_r)`` of every feature map, projects its
slab of the output for all angles, and

- a 3x3x3 convolution reads one plane of its neighbours' slabs: :meth:`SlabExchange.halo`
  exchanges those planes (zeros at the volume's ends, as the convolution's zero padding),
  and in the backward pass sends the gradients of the borrowed planes back to their owners;
- BatchNorm needs the statistics of the whole feature map: :meth:`SlabExchange.all_reduce`
  is a sum over ranks whose backward is again a sum over ranks;
- the projections of the volume are the sum of the slabs' projections (the projector
  honours ``Geometry.z_offset``), one differentiable all-reduce per step;
- the weight gradients are partial sums: :meth:`SlabCommunicator.finish_gradients` adds
  them up (one flat all-reduce), so every rank applies the same Adam step.

Transport: host tensors go over MPI (the job's communicator; shared memory within a node,
~10 us per small all-reduce where torch's gloo takes ~1.5 ms, 10x faster for halo planes),
device tensors over torch.distributed (NCCL), so a CPU run needs no gloo at all.

Slab boundaries lie on multiples of the network's total stride, so every level's slabs
line up (see :func:`hpc_adept.parallel.partition.aligned_block_range`). The result equals
the one-process training up to float rounding (tests/mpi/check_dip_slabs.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpc_adept.parallel.context import ParallelContext
from hpc_adept.parallel.partition import aligned_block_range
from hpc_adept.parallel.torchdist import init_torch_distributed, torch_backend

if TYPE_CHECKING:
    import torch
    from torch import nn


def _host(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in host memory (itself when it is there: no copy, no call to wait on)."""
    return tensor if tensor.device.type == "cpu" else tensor.cpu()


def mpi_thread_problem(mpi: Any, device_type: str) -> str | None:
    """Why MPI may not carry ``device_type`` tensors of the volume split, or None.

    The backward of CUDA tensors runs on autograd's device thread, not the main thread,
    and it calls the transport there (halo planes, BatchNorm sums). MPI allows calls from
    another thread than the main one from ``MPI_THREAD_SERIALIZED`` on (the main thread
    waits inside ``backward()`` meanwhile, so calls never overlap); mpi4py asks for
    ``MPI_THREAD_MULTIPLE`` unless ``mpi4py.rc.thread_level`` says otherwise.
    """
    if device_type == "cpu":  # CPU backward runs on the calling (main) thread
        return None
    provided = mpi.Query_thread()
    if provided >= mpi.THREAD_SERIALIZED:
        return None
    names = {mpi.THREAD_SINGLE: "MPI_THREAD_SINGLE", mpi.THREAD_FUNNELED: "MPI_THREAD_FUNNELED"}
    return (f"dip.decomposition: volume with {device_type} tensors over MPI calls MPI from "
            f"autograd's device thread, which needs MPI_THREAD_SERIALIZED or "
            f"MPI_THREAD_MULTIPLE, but this MPI provides {names.get(provided, provided)}; "
            f"use an MPI built with thread support (and mpi4py.rc.thread_level "
            f"'multiple'), one GPU per rank (NCCL), or dip.decomposition: angles")


class _MpiTransport:
    """Sums and neighbour exchanges over an mpi4py communicator (host memory; device
    tensors are staged through it).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
    device_type : str
        Type of the device the tensors live on (``cpu`` or ``cuda``): ConfigError when
        MPI's thread level does not allow the calls that autograd makes off the main
        thread for that device (see :func:`mpi_thread_problem`).
    """

    def __init__(self, comm: Any, device_type: str = "cpu") -> None:
        from mpi4py import MPI

        problem = mpi_thread_problem(MPI, device_type)
        if problem:  # the MPI library's setting, not a bug: one line, exit 2
            from hpc_adept.errors import ConfigError

            raise ConfigError(problem)
        # a private duplicate: these messages never match anyone else's (collective call)
        self._comm, self._mpi = comm.Dup(), MPI

    @staticmethod
    def _buffer(tensor: torch.Tensor, exact: bool = False) -> Any:
        import torch

        if tensor.dtype == torch.bfloat16:  # no NumPy dtype: move the bits
            if exact:
                raise TypeError("bfloat16 tensors cannot be summed over MPI")
            tensor = tensor.view(torch.int16)
        return tensor.detach().numpy()

    def exchange(self, transfers: list[tuple[torch.Tensor, torch.Tensor, int]]) -> None:
        """For each (send, receive, peer): send ``send`` to ``peer`` and fill ``receive``
        from it (contiguous tensors; device tensors go through host copies)."""
        requests, staged = [], []
        for send, receive, peer in transfers:
            host = _host(receive)
            staged.append((receive, host))
            requests.append(self._comm.Irecv(self._buffer(host), source=peer, tag=17))
            requests.append(self._comm.Isend(self._buffer(_host(send)), dest=peer, tag=17))
        self._mpi.Request.Waitall(requests)
        for receive, host in staged:
            if host is not receive:
                receive.copy_(host)

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place (``tensor`` contiguous)."""
        host = self.host_all_reduce_(_host(tensor))
        if host is not tensor:
            tensor.copy_(host)
        return tensor

    def host_all_reduce_(self, host: torch.Tensor) -> torch.Tensor:
        """Sum of a host tensor over ranks, in place; returns it."""
        self._comm.Allreduce(self._mpi.IN_PLACE, self._buffer(host, exact=True),
                             op=self._mpi.SUM)
        return host

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same shape on every rank), in rank order."""
        import torch

        out = torch.empty((self._comm.Get_size(), *tensor.shape), dtype=tensor.dtype)
        self._comm.Allgather(self._buffer(_host(tensor.contiguous())), self._buffer(out))
        return list(out.to(tensor.device))


class _TorchTransport:
    """The same over torch.distributed (NCCL for CUDA tensors)."""

    def exchange(self, transfers: list[tuple[torch.Tensor, torch.Tensor, int]]) -> None:
        """As :meth:`_MpiTransport.exchange`, in one batch: paired ``isend``/``irecv`` to one
        neighbour can block on NCCL once a plane exceeds its internal buffer (a few MiB),
        a batch cannot."""
        import torch.distributed as dist

        if not transfers:
            return
        operations = []
        for send, receive, peer in transfers:
            operations += [dist.P2POp(dist.isend, send, peer),
                           dist.P2POp(dist.irecv, receive, peer)]
        for request in dist.batch_isend_irecv(operations):
            request.wait()

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(tensor)
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        import torch
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return parts


def _autograd_functions(transport: Any) -> tuple[type, type]:
    """The two autograd Functions over ``transport``, defined on first use (torch imported
    lazily)."""
    import torch

    def exchange(send_prev: torch.Tensor, recv_prev: torch.Tensor, prev: int | None,
                 send_next: torch.Tensor, recv_next: torch.Tensor, next_: int | None) -> None:
        transfers = []
        if prev is not None:
            transfers.append((send_prev.contiguous(), recv_prev, prev))
        if next_ is not None:
            transfers.append((send_next.contiguous(), recv_next, next_))
        if transfers:  # one slab: no neighbour, and no transport either
            transport.exchange(transfers)

    class HaloExchange(torch.autograd.Function):
        """``[N, C, L, H, W]`` -> ``[N, C, L + 2w, H, W]`` with the neighbours' planes."""

        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, width: int, prev: int | None,
                    next_: int | None) -> torch.Tensor:
            ctx.width, ctx.prev, ctx.next = width, prev, next_
            below = x.new_zeros((*x.shape[:2], width, *x.shape[3:]))
            above = torch.zeros_like(below)
            exchange(x[:, :, :width], below, prev, x[:, :, -width:], above, next_)
            return torch.cat([below, x, above], dim=2)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple:
            w = ctx.width
            out = grad[:, :, w:-w].clone()
            from_prev = torch.zeros_like(grad[:, :, :w], memory_format=torch.contiguous_format)
            from_next = torch.zeros_like(from_prev)
            # the gradient of a borrowed plane belongs to the rank that owns it
            exchange(grad[:, :, :w], from_prev, ctx.prev, grad[:, :, -w:], from_next, ctx.next)
            out[:, :, :w] += from_prev
            out[:, :, -w:] += from_next
            return out, None, None, None

    class AllReduceSum(torch.autograd.Function):
        """Sum over ranks; the backward of a sum-to-everyone is again a sum over ranks."""

        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            return transport.all_reduce_(x.clone(memory_format=torch.contiguous_format))

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            return transport.all_reduce_(grad.clone(memory_format=torch.contiguous_format))

    return HaloExchange, AllReduceSum


class SlabExchange:
    """What the network needs from the other ranks' slabs (halo planes, global sums).

    Parameters
    ----------
    rank, size : int
        This rank and the number of ranks.
    start, stop : int
        This rank's z slices of the full-resolution volume.
    transport : object
        Moves the tensors: MPI for host tensors, torch.distributed for device tensors.
    """

    def __init__(self, rank: int, size: int, start: int, stop: int, transport: Any) -> None:
        self.rank, self.size, self.start, self.stop = rank, size, start, stop
        self._prev = rank - 1 if rank > 0 else None
        self._next = rank + 1 if rank < size - 1 else None
        self._halo_fn, self._sum_fn = _autograd_functions(transport)

    def halo(self, x: torch.Tensor, width: int) -> torch.Tensor:
        """``x`` [N, C, L, H, W] with ``width`` planes of each neighbour on each side."""
        return self._halo_fn.apply(x, width, self._prev, self._next)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks, differentiable."""
        return self._sum_fn.apply(x) if self.size > 1 else x


class SlabCommunicator:
    """:class:`hpc_adept.dip.trainer.Communicator` for the volume decomposition.

    Parameters
    ----------
    ctx : ParallelContext
    device : torch.device
        CPU: the tensors go over ``ctx.comm`` (MPI); CUDA: over torch.distributed (NCCL),
        or MPI through host memory where ranks share a GPU.
    nz : int
        Slices of the full volume.
    multiple : int
        Slab boundaries lie on multiples of this (the network's total stride along z).
    """

    splits_volume = True

    def __init__(self, ctx: ParallelContext, device: Any, nz: int, multiple: int) -> None:
        self.world_size = ctx.size
        self.device = device
        self.nz = nz
        self.bounds = [aligned_block_range(nz, ctx.size, r, multiple) for r in range(ctx.size)]
        mine = self.bounds[ctx.rank]
        if not len(mine):
            raise ValueError(f"rank {ctx.rank} has no z slices: {nz} slices in blocks of "
                             f"{multiple} for {ctx.size} ranks")
        self.start, self.stop = mine.start, mine.stop
        self.transport: Any = None
        if ctx.is_parallel:
            if torch_backend(ctx, device) == "nccl":  # agreed by all ranks
                init_torch_distributed(ctx, device, backend="nccl")
                self.transport = _TorchTransport()
            else:  # host tensors, or GPUs shared by ranks (NCCL refuses those)
                self.transport = _MpiTransport(ctx.comm, getattr(device, "type", "cpu"))
        self.exchange = SlabExchange(ctx.rank, ctx.size, self.start, self.stop, self.transport)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model, set to compute this rank's slab (see ``DipNetwork.split_over``)."""
        model.split_over(self.exchange)
        return model

    def local_slab(self, volume: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """This rank's slices of a full-volume tensor along ``dim``."""
        return volume.narrow(dim, self.start, self.stop - self.start)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a small 1-D tensor; over MPI it stays in host memory
        (the caller reads it there: one device-to-host copy, not two)."""
        import torch

        if self.world_size > 1 and isinstance(self.transport, _MpiTransport):
            staged = _host(values)
            host = staged.clone() if staged is values else staged
            return self.transport.host_all_reduce_(host)
        out = values.clone(memory_format=torch.contiguous_format)
        return self.transport.all_reduce_(out) if self.world_size > 1 else out

    def reduce_projections(self, projections: torch.Tensor) -> torch.Tensor:
        """The projections of the whole volume from this slab's part (differentiable)."""
        return self.exchange.all_reduce(projections)

    def finish_gradients(self, model: nn.Module) -> None:
        """Sum the partial weight gradients over ranks (one flat all-reduce)."""
        if self.world_size == 1:
            return
        import torch

        params = [p for p in model.parameters() if p.grad is not None]
        flat = self.transport.all_reduce_(torch.cat([p.grad.reshape(-1) for p in params]))
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def gather_volume(self, slab: torch.Tensor) -> torch.Tensor:
        """The full volume [nz, ny, nx] on every rank from the slabs [L_r, ny, nx]."""
        if self.world_size == 1:
            return slab
        import torch

        longest = max(len(b) for b in self.bounds)
        padded = slab.new_zeros((longest, *slab.shape[1:]))
        padded[: slab.shape[0]] = slab.detach()
        parts = self.transport.all_gather(padded)
        return torch.cat([part[: len(b)] for part, b in zip(parts, self.bounds, strict=True)])
