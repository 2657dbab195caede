"""``adept recon`` (DIP) where rank 1 raises inside the training loop at its 4th projection.

Run under mpiexec -n 2 with the adept arguments: the fault is injected by wrapping the
trainer's projections (``hpc_adept.dip.trainer.default_projector``), so the production code
runs unchanged.
"""

import sys

import hpc_adept.dip.trainer as trainer
from hpc_adept.cli import main
from hpc_adept.parallel import get_context

ctx = get_context()
original = trainer.default_projector
calls = {"n": 0}


def failing_projector(geometry, **options):
    forward = original(geometry, **options)

    def failing_forward(volume):
        calls["n"] += 1
        if ctx.rank == 1 and calls["n"] == 4:
            raise RuntimeError("injected fault in the DIP loop on rank 1")
        return forward(volume)

    return failing_forward


trainer.default_projector = failing_projector
sys.exit(main(sys.argv[1:]))
