"""Whole ``adept recon`` (FBP + DIP) on 1 and on N ranks, side by side in one run.

Simulates a procedural dataset once (projections written directly), then runs the same
``adept recon`` on each rank count in turn, ``--repeats`` rounds (interleaved, so that the
machine's load drifts equally over the rank counts), and prints the command's wall time
(process start to end, as a user sees it) and the DIP's and FBP's stage times from
``timing.json``, with the speed-up of the medians. Defaults: the issue 21 problem (40 x 56
x 56 voxels, 40 angles, 30 DIP iterations, the demo's network), default settings otherwise.

    python profiling/recon_ranks.py                       # 1 vs 2 ranks, defaults
    python profiling/recon_ranks.py --ranks 1 2 3 --set dip.decomposition=angles
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _args import positive_int

REPO = Path(__file__).resolve().parents[1]


def _config(shape: list[int], angles: int, iterations: int) -> dict:
    return {
        "data": {"path": "dataset"}, "output": {"dir": "run"},
        "simulate": {"phantom": "procedural", "volume_shape": shape, "voxel_size_m": 2.72e-8,
                     "n_angles": angles, "frame_size": 32, "photons_per_pattern": 1.0e5,
                     "seed": 3, "write_projections": True},
        "recon": {"methods": ["fbp", "dip"], "volume_shape": shape},
        "dip": {"iterations": iterations, "checkpoint_every": 0, "in_channels": 16,
                "channels": [16, 32, 48, 48, 48], "output_range": [-0.06, 0.06]},
        "runtime": {"device": "cpu"},
    }


def _run(args: list[str], n_ranks: int, cwd: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO), MPIEXEC_TIMEOUT="1800")
    cmd = [sys.executable, "-m", "hpc_adept", *args]
    if n_ranks > 1 or args[0] == "recon":
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(n_ranks), *cmd]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def _stage(run_dir: Path, region: str) -> float:
    regions = json.loads((run_dir / "timing.json").read_text())["regions"]
    return round(regions[region]["max_s"], 2) if region in regions else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=positive_int, nargs=3, default=[40, 56, 56])
    parser.add_argument("--angles", type=positive_int, default=40)
    parser.add_argument("--iterations", type=positive_int, default=30)
    parser.add_argument("--ranks", type=positive_int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=positive_int, default=2)
    parser.add_argument("--set", nargs="*", default=[], help="extra adept --set overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recon_ranks_") as tmp:
        work = Path(tmp)
        (work / "c.yaml").write_text(yaml.safe_dump(_config(args.shape, args.angles,
                                                            args.iterations)))
        _run(["simulate", "-c", "c.yaml"], 1, work)
        walls: dict[int, list[float]] = {n: [] for n in args.ranks}
        for repeat in range(args.repeats):
            for n in args.ranks:
                out = f"r{n}_{repeat}"
                (work / out).mkdir()
                (work / out / "projections.h5").write_bytes(
                    (work / "run" / "projections.h5").read_bytes())
                wall = _run(["recon", "-c", "c.yaml", "--set", f"output.dir={out}",
                             *args.set], n, work)
                walls[n].append(wall)
                print(json.dumps({"ranks": n, "repeat": repeat, "wall_s": round(wall, 2),
                                  "dip_s": _stage(work / out, "recon/dip"),
                                  "fbp_s": _stage(work / out, "recon/fbp")}), flush=True)
        base = statistics.median(walls[args.ranks[0]])
        for n in args.ranks:
            print(json.dumps({"ranks": n, "median_wall_s": round(statistics.median(walls[n]), 2),
                              "speedup_vs_first": round(base / statistics.median(walls[n]), 2)}))


if __name__ == "__main__":
    main()
