"""torch.distributed set up from MPI: NCCL on GPUs, gloo on CPUs (and on GPUs that ranks
share: NCCL refuses two ranks on one device).

Rank 0 picks its host address and a free TCP port and broadcasts them over MPI, so the
process group forms the same way under mpiexec, srun and in CI, without relying on
launcher-specific environment variables.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

from hpc_adept.parallel.context import ParallelContext

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _host_address() -> str:
    host = socket.gethostname()
    try:
        return socket.gethostbyname(host)
    except OSError:
        return "127.0.0.1"


def device_identity(device: Any) -> str | None:
    """The physical identity of this rank's GPU (its UUID), or None on the CPU.

    Two ranks share a GPU exactly when their identities are equal on the same host. Indices
    cannot tell: a scheduler that shows each task one GPU gives every rank ``cuda:0``.
    """
    if getattr(device, "type", "cpu") != "cuda":
        return None
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        return str(uuid)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return f"visible={visible}/index={index}"


def backend_for(placements: Sequence[tuple[str, str | None]]) -> str:
    """``nccl`` when every rank has a GPU of its own, else ``gloo``.

    Parameters
    ----------
    placements : sequence of (host, gpu identity or None)
        Every rank's host name and :func:`device_identity`, in rank order.

    Notes
    -----
    NCCL cannot put two ranks of a communicator on one GPU; with more ranks than GPUs on a
    node (``make demo``'s 2 ranks on a one-GPU workstation) gloo, which moves CUDA tensors
    through the host, still works. The choice is made from every rank's placement, so all
    ranks take the same backend even where nodes differ.
    """
    if any(identity is None for _, identity in placements):
        return "gloo"
    return "nccl" if len(set(placements)) == len(placements) else "gloo"


def agree_torch_backend(ctx: ParallelContext, identity: str | None) -> str:
    """The backend every rank uses, agreed over MPI before any process group exists
    (collective): :func:`backend_for` of every rank's (host, ``identity``)."""
    mine = (socket.gethostname(), identity)
    placements = ctx.comm.allgather(mine) if ctx.is_parallel else [mine]
    return backend_for(placements)


def torch_backend(ctx: ParallelContext, device: Any) -> str:
    """:func:`agree_torch_backend` for this rank's ``device`` (collective)."""
    return agree_torch_backend(ctx, device_identity(device))


def init_torch_distributed(ctx: ParallelContext, device: Any, timeout_s: float = 300.0,
                           backend: str | None = None) -> bool:
    """Initialise the default torch.distributed process group over the MPI ranks.

    Parameters
    ----------
    ctx : ParallelContext
        The job's ranks; a serial context initialises nothing.
    device : torch.device
        This rank's device.
    timeout_s : float
        Collective timeout, so a dead peer ends the job instead of hanging it.
    backend : {'nccl', 'gloo'} or None
        The backend agreed by :func:`torch_backend` (None: agree on it here).

    Returns
    -------
    bool
        True when a process group was created by this call.
    """
    import torch.distributed as dist

    if not ctx.is_parallel or (dist.is_available() and dist.is_initialized()):
        return False
    backend = backend or torch_backend(ctx, device)
    address = (_host_address(), _free_port()) if ctx.is_root else None
    host, port = ctx.comm.bcast(address, root=0)
    log.info("torch.distributed: backend %s, rendezvous tcp://%s:%d", backend, host, port)
    if backend == "gloo" and getattr(device, "type", "cpu") == "cuda":
        log.warning("some ranks share a GPU: torch.distributed uses gloo (through host "
                    "memory), not NCCL, on every rank")
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = device
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{host}:{port}",
        rank=ctx.rank,
        world_size=ctx.size,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    return True


def destroy_torch_distributed() -> None:
    """Tear the default process group down (collective in effect: every rank calls it).

    Objects that still hold the group (a DDP wrapper's reducer kept by a reference cycle)
    are collected first: freed only at interpreter exit, after the group, they ended the
    process with "terminate called without an active exception" (seen in CI)."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
