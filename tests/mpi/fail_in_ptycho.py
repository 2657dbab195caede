"""``adept`` with a fault injected on one rank in the ptycho stage, on its first scan.

Run under mpiexec with ``FAIL_RANK`` (default 1) and ``FAIL_WHERE`` (``reconstruct``:
in the LSQ-ML of the rank's first scan; ``read``: in reading a scan file, which runs in
the read-ahead thread) in the environment, then the adept arguments. The fault wraps a
function the stage calls, so the production code runs unchanged.
"""

import os
import sys

import hpc_adept.stages.ptycho as ptycho
from hpc_adept.cli import main
from hpc_adept.parallel import get_context

ctx = get_context()
fail_rank = int(os.environ.get("FAIL_RANK", "1"))
where = os.environ.get("FAIL_WHERE", "reconstruct")
name = {"reconstruct": "reconstruct_scan", "read": "read_cxi"}[where]
original = getattr(ptycho, name)
calls = {"n": 0}


def failing(*args, **kwargs):
    calls["n"] += 1
    if ctx.rank == fail_rank and calls["n"] == 1:
        raise RuntimeError(f"injected fault in {name} on rank {ctx.rank}")
    return original(*args, **kwargs)


setattr(ptycho, name, failing)
sys.exit(main(sys.argv[1:]))
