"""Run under mpiexec -n 2: the MPI context and the collectives agree with one process."""

import numpy as np

from hpc_adept.parallel import allreduce_sum, bcast_array, block_range, gather_dict, get_context

ctx = get_context()
assert ctx.size == 2, ctx
assert ctx.local_size == 2 and ctx.local_rank == ctx.rank  # one node
rng = np.random.default_rng(0)
full = rng.standard_normal((7, 3))
mine = block_range(len(full), ctx.size, ctx.rank)
partial = np.zeros_like(full)
partial[mine.start:mine.stop] = full[mine.start:mine.stop]
total = allreduce_sum(ctx, partial)
assert np.array_equal(total, full), "allreduce differs from the serial array"
merged = gather_dict(ctx, {i: full[i] for i in mine})
if ctx.is_root:
    assert sorted(merged) == list(range(7))
    assert np.array_equal(np.stack([merged[i] for i in range(7)]), full)
else:
    assert merged == {}
sent = bcast_array(ctx, full.astype(np.complex64) if ctx.is_root else None)
assert sent.dtype == np.complex64 and np.array_equal(sent, full.astype(np.complex64))
ctx.comm.Barrier()
if ctx.is_root:
    print("collectives ok on 2 ranks")
