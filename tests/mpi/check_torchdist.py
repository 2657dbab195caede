"""Run under mpiexec -n 2: torch.distributed (gloo) set up from MPI works."""

import torch
import torch.distributed as dist

from hpc_adept.parallel import get_context
from hpc_adept.parallel.torchdist import destroy_torch_distributed, init_torch_distributed

ctx = get_context()
assert init_torch_distributed(ctx, torch.device("cpu"), timeout_s=60)
assert dist.get_rank() == ctx.rank and dist.get_world_size() == ctx.size
value = torch.tensor([float(ctx.rank + 1)])
dist.all_reduce(value)
assert value.item() == 3.0, value
destroy_torch_distributed()
if ctx.is_root:
    print("gloo allreduce ok")
