"""Cost of the exact, partition-independent sums of issue 21, per DIP step, side by side.

Under ``mpiexec -n N`` (N = 1, 2, ...) one run times, on the same problem and network, the
DIP step of the angles split three ways, interleaved round by round so that the machine's
load drifts equally over all of them:

- ``ddp``: today's float path (DistributedDataParallel averages the weight gradients;
  ``runtime.deterministic: false``);
- ``exact``: angle-by-angle data term, fixed-point volume gradient, the same network
  backward on every rank (``runtime.deterministic: true``, torch's deterministic algorithms
  off, to isolate the sums);
- ``exact+det``: the same with torch's deterministic algorithms on
  (:func:`hpc_adept.backend.configure_determinism`), the default.

    mpiexec -n 1 python profiling/determinism.py --shape 40 56 56 --angles 40
    mpiexec -n 2 python profiling/determinism.py --shape 40 56 56 --angles 40 --threads 1

Prints one JSON line per mode on rank 0: the median and minimum seconds per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _args import positive_int

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpc_adept.backend import configure_determinism  # noqa: E402
from hpc_adept.config import DipConfig  # noqa: E402
from hpc_adept.dip import DipNetwork, DipTrainer, ShardData, make_input_noise  # noqa: E402
from hpc_adept.lamino import Geometry, project  # noqa: E402
from hpc_adept.parallel import block_range, get_context  # noqa: E402
from hpc_adept.parallel.ddp import DdpCommunicator  # noqa: E402
from hpc_adept.parallel.replica import ReplicaCommunicator  # noqa: E402

#: the demo's network (jobs/configs/demo.yaml)
DEMO_NET = {"in_channels": 16, "channels": (16, 32, 48, 48, 48)}


def _trainer(ctx, comm, shape, n_angles, dip):
    geometry = Geometry(np.arange(n_angles) * 360.0 / n_angles, 61.0, shape,
                        (shape[1] + 8, shape[2] + 16))
    truth = torch.zeros(shape)
    truth[shape[0] // 3: shape[0] // 2, 4:-4, 6:-6] = 0.02
    mine = block_range(n_angles, ctx.size, ctx.rank)
    with torch.no_grad():
        targets = project(truth, geometry.subset(slice(mine.start, mine.stop)))
    shard = ShardData(targets, geometry.subset(slice(mine.start, mine.stop)),
                      np.arange(mine.start, mine.stop), n_angles,
                      torch.full((shape[0],), 1e-6), 2.0 / (n_angles * 40 * 72))
    torch.manual_seed(0)
    model = DipNetwork(dip.in_channels, dip.channels, dip.strides, dip.skip_channels)
    noise = make_input_noise(dip.in_channels, shape, 0.1, torch.Generator().manual_seed(1))
    trainer = DipTrainer(model, noise, shard, dip, comm)
    trainer.prepare()
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=positive_int, nargs=3, default=[40, 56, 56])
    parser.add_argument("--angles", type=positive_int, default=40)
    parser.add_argument("--steps", type=positive_int, default=4, help="timed steps per round")
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads per rank (default: 2 / ranks, at least 1)")
    args = parser.parse_args()
    ctx = get_context()
    torch.set_num_threads(args.threads or max(1, 2 // ctx.size))
    dip = replace(DipConfig(), iterations=10**6, checkpoint_every=0, guard=False, **DEMO_NET)
    shape = tuple(args.shape)
    trainers = {"ddp": _trainer(ctx, DdpCommunicator(ctx, torch.device("cpu")), shape,
                                args.angles, dip),
                "exact": _trainer(ctx, ReplicaCommunicator(ctx, torch.device("cpu")), shape,
                                  args.angles, dip)}
    modes = [("ddp", False), ("exact", False), ("exact+det", True)]
    times: dict[str, list[float]] = {name: [] for name, _ in modes}
    for _ in range(args.rounds):
        for name, deterministic in modes:
            configure_determinism(deterministic)
            trainer = trainers[name.split("+")[0]]
            trainer.advance()  # untimed: caches, the exact path's one-time gains
            for _ in range(args.steps):
                ctx.comm.Barrier() if ctx.is_parallel else None
                start = time.perf_counter()
                trainer.advance()
                times[name].append(time.perf_counter() - start)
    if ctx.is_root:
        for name, values in times.items():
            print(json.dumps({"mode": name, "ranks": ctx.size, "threads": torch.get_num_threads(),
                              "shape": list(shape), "angles": args.angles,
                              "median_s": round(statistics.median(values), 4),
                              "min_s": round(min(values), 4), "steps": len(values)}))


if __name__ == "__main__":
    main()
