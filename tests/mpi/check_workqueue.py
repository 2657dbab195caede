"""Run under mpiexec -n 2: the dynamic queue hands out every item exactly once, and
``remaining()`` counts what is still unclaimed, on every rank."""

import time

from hpc_adept.parallel import gather_dict, get_context
from hpc_adept.parallel.workqueue import DynamicQueue

ctx = get_context()
n_items = 23
taken = []
with DynamicQueue(ctx, n_items) as queue:
    assert queue.remaining() == n_items  # nothing taken before the barrier
    ctx.comm.Barrier()
    for index in queue:
        if not taken:  # (a round trip to rank 0: once, not to slow rank 1 down)
            left = queue.remaining()
            assert left <= n_items - (index + 1), (index, left)
        taken.append(index)
        time.sleep(0.02 if ctx.rank == 0 else 0.001)  # rank 0 is slow: rank 1 takes more
    assert queue.remaining() == 0
merged = gather_dict(ctx, {ctx.rank: taken})
if ctx.is_root:
    everything = sorted(i for part in merged.values() for i in part)
    assert everything == list(range(n_items)), everything
    assert len(merged[1]) > len(merged[0]), merged  # dynamic, not a static split
    print("workqueue ok", {r: len(v) for r, v in merged.items()})
