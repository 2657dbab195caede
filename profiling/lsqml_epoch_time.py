"""LSQ-ML seconds per epoch of whichever ``hpc_adept`` is importable: for A/B runs of commits.

Times :func:`hpc_adept.ptycho.reconstruct` on the scans of ``bench_lsqml.simulate`` (one
warm-up epoch first), one thread, freed host memory kept as adept does, and prints one JSON
line ``{frame size: seconds per epoch}``. To compare two commits, alternate them::

    git worktree add /tmp/before <commit>
    for tree in /tmp/before . /tmp/before .; do
        (cd /tmp && PYTHONPATH=$tree OMP_NUM_THREADS=1 python $OLDPWD/profiling/lsqml_epoch_time.py)
    done

(``cd /tmp`` so that the checkout in the working directory does not shadow ``PYTHONPATH``.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--epochs", type=int, nargs="+", default=[20, 8],
                        help="epochs per size (one value for all, or one per size)")
    args = parser.parse_args(argv)
    epochs = args.epochs * len(args.sizes) if len(args.epochs) == 1 else args.epochs
    if len(epochs) != len(args.sizes) or min(args.sizes + epochs) < 1:
        parser.error("--sizes and --epochs: positive, and one epoch count per size (or one)")

    import bench_lsqml
    import torch

    from hpc_adept.backend import keep_freed_host_memory
    from hpc_adept.config import PtychoConfig
    from hpc_adept.ptycho import reconstruct

    torch.set_num_threads(1)
    keep_freed_host_memory()
    seconds = {}
    for frame, n_epochs in zip(args.sizes, epochs, strict=True):
        scan = bench_lsqml.simulate(frame)
        run = (scan["counts"], scan["positions"], scan["field"])
        reconstruct(*run, PtychoConfig(iterations=1), probe=scan["probe"])
        start = time.perf_counter()
        reconstruct(*run, PtychoConfig(iterations=n_epochs), probe=scan["probe"])
        seconds[frame] = (time.perf_counter() - start) / n_epochs
    print(json.dumps(seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
