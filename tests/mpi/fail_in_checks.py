"""``adept`` with a fault on one rank in the checks before the work (phase 1).

Run under mpiexec with ``FAIL_RANK`` (default 1) and ``FAIL_WHERE`` in the environment, then
the adept arguments (a ptycho command):

- ``plan``: the stage's plan raises a DataError (one node seeing another file system);
- ``device``: taking the device raises (a GPU in exclusive mode on one node);
- ``validate``: the memory estimate inside the collective data checks raises, on that rank
  only, before the collective.

The fault wraps a function the CLI calls, so the production code runs unchanged.
"""

import os
import sys

import hpc_adept.backend as backend
import hpc_adept.stages.ptycho as ptycho
from hpc_adept.cli import main
from hpc_adept.errors import DataError
from hpc_adept.parallel import get_context

ctx = get_context()
fail_rank = int(os.environ.get("FAIL_RANK", "1"))
where = os.environ["FAIL_WHERE"]


def wrap(owner, name, error):
    original = getattr(owner, name)

    def failing(*args, **kwargs):
        if ctx.rank == fail_rank:
            raise error
        return original(*args, **kwargs)

    setattr(owner, name, failing)


if where == "plan":
    wrap(ptycho, "plan_ptycho", DataError(f"injected plan failure on rank {ctx.rank}"))
elif where == "device":
    wrap(backend, "select_torch_device", RuntimeError(f"injected device failure on rank "
                                                      f"{ctx.rank}"))
elif where == "validate":
    wrap(ptycho.PtychoPlan, "_memory_problem", RuntimeError(f"injected estimate failure on "
                                                            f"rank {ctx.rank}"))
else:
    raise SystemExit(f"unknown FAIL_WHERE {where!r}")
sys.exit(main(sys.argv[1:]))
