"""Run under mpiexec -n 2.

1. The ranks agree on the torch.distributed backend whatever each one sees: identical
   GPU identities (a shared GPU) give gloo everywhere, distinct ones NCCL everywhere, one
   rank on the CPU gloo everywhere.
2. The torch.distributed halo transport exchanges planes larger than NCCL's internal
   buffer (48 x 160 x 160 float32 = 4.7 MiB, the paper-size first convolution's halo) in one
   batch (``batch_isend_irecv``), here over gloo, forwards and backwards through the
   autograd halo function, and gives what the MPI transport gives.
"""

import torch
import torch.distributed as dist

from hpc_adept.parallel import get_context
from hpc_adept.parallel.slabs import SlabExchange, _MpiTransport, _TorchTransport
from hpc_adept.parallel.torchdist import (
    agree_torch_backend,
    destroy_torch_distributed,
    init_torch_distributed,
)

ctx = get_context()
assert ctx.size == 2, "run with mpiexec -n 2"

assert agree_torch_backend(ctx, "GPU-same") == "gloo"
assert agree_torch_backend(ctx, f"GPU-{ctx.rank}") == "nccl"
assert agree_torch_backend(ctx, None if ctx.rank == 1 else "GPU-0") == "gloo"

assert init_torch_distributed(ctx, torch.device("cpu"), timeout_s=120, backend="gloo")
batches = []
original_batch = dist.batch_isend_irecv


def recording_batch(operations):
    batches.append(len(operations))
    return original_batch(operations)


dist.batch_isend_irecv = recording_batch

planes, nz = 1, 4
shape = (1, 48, nz, 160, 160)
assert 48 * 160 * 160 * 4 > 4 * 2**20
generator = torch.Generator().manual_seed(1234 + ctx.rank)
x = torch.randn(shape, generator=generator, dtype=torch.float32)
weights = torch.randn((1, 48, nz + 2 * planes, 160, 160),
                      generator=torch.Generator().manual_seed(99), dtype=torch.float32)

results = {}
for name, transport in (("torch", _TorchTransport()), ("mpi", _MpiTransport(ctx.comm))):
    exchange = SlabExchange(ctx.rank, ctx.size, ctx.rank * nz, (ctx.rank + 1) * nz, transport)
    leaf = x.clone().requires_grad_(True)
    padded = exchange.halo(leaf, planes)
    (padded * weights).sum().backward()
    results[name] = (padded.detach(), leaf.grad.detach())

assert batches and all(n == 2 for n in batches), batches  # one send + one receive per call
padded, grad = results["torch"]
assert torch.equal(padded, results["mpi"][0]) and torch.equal(grad, results["mpi"][1])

# the planes came from the neighbour: its first / last slice of x
other = torch.randn(shape, generator=torch.Generator().manual_seed(1234 + 1 - ctx.rank),
                    dtype=torch.float32)
if ctx.rank == 0:
    assert torch.equal(padded[:, :, -1], other[:, :, 0])
    assert torch.count_nonzero(padded[:, :, 0]) == 0
else:
    assert torch.equal(padded[:, :, 0], other[:, :, -1])
    assert torch.count_nonzero(padded[:, :, -1]) == 0
# backward: own weights plus the neighbour's weight on the plane it borrowed
expected = weights[:, :, planes:-planes].clone()
if ctx.rank == 0:
    expected[:, :, -1] += weights[:, :, 0]
else:
    expected[:, :, 0] += weights[:, :, -1]
assert torch.equal(grad, expected)

dist.batch_isend_irecv = original_batch
destroy_torch_distributed()
if ctx.is_root:
    print("backend agreement and halo exchange ok")
