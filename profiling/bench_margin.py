"""The cost of an extended sample's lateral margin: time and peak memory per DIP step on
the widened volume, side by side with the region alone (issue 18).

Each case runs in its own process (clean peak memory) with the same network, angles and
detector window; the widened cases add the data term's ray mask and its plane fit:

    python profiling/bench_margin.py --region 40 56 56 --angles 32 --steps 6
    python profiling/bench_margin.py --device cuda --region 48 64 64 --angles 48 --steps 3 \
        --channels 32 64 96 96 96 --in-channels 48     # the paper's network on a GPU

On a GPU the memory is the peak of torch's allocator (``max_memory_allocated``), on the CPU
the process's peak RSS.

Margins: 0 (the region: an isolated sample), half the lateral run ``nz tan L / 2`` and the
whole run (``recon.lateral_margin: auto``).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from _args import device_arg, positive_int

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def one_case(region: list[int], margin: int, angles: int, steps: int, channels: list[int],
             in_channels: int, device_name: str = "cpu") -> dict:
    """Time per step (s) and peak memory (MiB) of DIP steps at this margin (in-process)."""
    import numpy as np
    import torch

    from hpc_adept.config import DipConfig
    from hpc_adept.dip import DipTrainer
    from hpc_adept.dip.network import input_from_config, network_from_config
    from hpc_adept.dip.sharding import build_shard, dip_layout
    from hpc_adept.io import ProjectionSet
    from hpc_adept.lamino import Geometry
    from hpc_adept.lamino.coverage import full_path_mask
    from hpc_adept.lamino.region import plan_region
    from hpc_adept.stages.simulate import auto_projection_shape

    d = replace(DipConfig(), iterations=steps, in_channels=in_channels,
                channels=tuple(channels), checkpoint_every=0)
    plan = plan_region(tuple(region), 61.0, margin > 0, margin, math.prod(d.strides))
    window = auto_projection_shape(tuple(region), 61.0)
    theta = np.arange(angles) * 360.0 / angles
    rng = np.random.default_rng(0)
    ps = ProjectionSet(rng.standard_normal((angles, *window)).astype(np.float32) * 0.01,
                       theta, 61.0, 27.2e-9)
    layout = dip_layout(angles, plan.shape[0], 1, 0)
    mask = full_path_mask(Geometry(theta, 61.0, plan.shape, window)) if margin else None
    device = torch.device(device_name)
    shard = build_shard(ps, d, plan.shape, layout, np.full(plan.shape[0], 3e-6), device,
                        mask, plan.extended)
    model = network_from_config(d, 0).to(device)
    noise = input_from_config(d, plan.shape, 0, layout.z).to(device)
    trainer = DipTrainer(model, noise, shard, d)
    trainer.prepare()
    trainer.advance()  # warm-up: allocations, the projector's tables
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.advance()
    sync()
    seconds = (time.perf_counter() - t0) / steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"margin": margin, "shape": list(plan.shape), "s_per_step": seconds,
            "peak_mib": peak}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--region", type=positive_int, nargs=3, default=[40, 56, 56])
    ap.add_argument("--angles", type=positive_int, default=32)
    ap.add_argument("--steps", type=positive_int, default=6)
    ap.add_argument("--channels", type=positive_int, nargs=5, default=[16, 32, 48, 48, 48])
    ap.add_argument("--in-channels", type=positive_int, default=16)
    ap.add_argument("--device", type=device_arg(), default="cpu")
    ap.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.case is not None:
        print(json.dumps(one_case(a.region, a.case, a.angles, a.steps, a.channels,
                                  a.in_channels, a.device)))
        return
    from hpc_adept.lamino.region import lateral_run_px

    run = lateral_run_px(a.region[0], 61.0)
    rows = []
    for margin in (0, math.ceil(run / 2), math.ceil(run)):
        cmd = [sys.executable, __file__, "--case", str(margin), "--region",
               *map(str, a.region), "--angles", str(a.angles), "--steps", str(a.steps),
               "--channels", *map(str, a.channels), "--in-channels", str(a.in_channels),
               "--device", a.device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    base = rows[0]
    memory = "peak alloc MiB" if a.device != "cpu" else "  peak RSS MiB"
    print(f"region {a.region}, {a.angles} angles, network {a.in_channels}/{a.channels}, "
          f"device {a.device}")
    print(f"margin  widened volume    ms/step  x region {memory}  x region")
    for r in rows:
        print(f"{r['margin']:>6}  {str(r['shape']):<16} {r['s_per_step'] * 1e3:>8.1f}  "
              f"{r['s_per_step'] / base['s_per_step']:>8.2f}  {r['peak_mib']:>14.0f}  "
              f"{r['peak_mib'] / base['peak_mib']:>8.2f}")


if __name__ == "__main__":
    main()
