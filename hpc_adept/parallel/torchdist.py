"""torch.distributed set up from MPI: NCCL on GPUs, gloo on CPUs (and on GPUs that ranks
share: NCCL refuses two ranks on one device).

Rank 0 picks its host address and a free TCP port and broadcasts them over MPI, so the
process group forms the same way under mpiexec, srun and in CI, without relying on
launcher-specific environment variables.
"""

from __future__ import annotations

import datetime
import logging
import socket
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


def torch_backend(device: Any, local_size: int) -> str:
    """``nccl`` when ``device`` is a GPU and every rank of the node has its own, else ``gloo``.

    NCCL cannot put two ranks of a communicator on one GPU; with more ranks than GPUs on a
    node (``make demo``'s 2 ranks on a one-GPU workstation) gloo, which moves CUDA tensors
    through the host for all-reduce and broadcast, still works.
    """
    if getattr(device, "type", "cpu") != "cuda":
        return "gloo"
    from hpc_adept.backend import cuda_device_count

    return "nccl" if local_size <= cuda_device_count() else "gloo"


def init_torch_distributed(ctx: ParallelContext, device: Any,
                           timeout_s: float = 300.0) -> bool:
    """Initialise the default torch.distributed process group over the MPI ranks.

    Parameters
    ----------
    ctx : ParallelContext
        The job's ranks; a serial context initialises nothing.
    device : torch.device
        This rank's device: :func:`torch_backend` picks NCCL or gloo.
    timeout_s : float
        Collective timeout, so a dead peer ends the job instead of hanging it.

    Returns
    -------
    bool
        True when a process group was created by this call.
    """
    import torch.distributed as dist

    if not ctx.is_parallel or (dist.is_available() and dist.is_initialized()):
        return False
    address = (_host_address(), _free_port()) if ctx.is_root else None
    host, port = ctx.comm.bcast(address, root=0)
    backend = torch_backend(device, ctx.local_size)
    log.info("torch.distributed: backend %s, rendezvous tcp://%s:%d", backend, host, port)
    if backend == "gloo" and getattr(device, "type", "cpu") == "cuda":
        log.warning("%d ranks share this node's GPU(s): torch.distributed uses gloo (through "
                    "host memory), not NCCL", ctx.local_size)
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
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
