"""Benchmark: the ptycho stage with and without reading the next scan ahead.

Simulates a small dataset (procedural phantom) and runs ``adept ptycho`` with
``runtime.read_ahead`` false and true, alternately, ``--repeats`` times each, and prints
from each run's ``timing.json``: the stage's wall time, the read time left exposed on the
critical path (``ptycho/read``) and the LSQ-ML time. Large frames and few iterations make
the read matter, as on a GPU, where an LSQ-ML iteration is far cheaper than on this CPU.

    python profiling/bench_read_ahead.py [--frame 256] [--field 512] [--angles 8]
        [--iterations 3] [--repeats 2] [--ranks 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpc_adept.io import read_cxi  # noqa: E402


def _adept(args: list[str], cwd: Path, ranks: int) -> None:
    cmd = [sys.executable, "-m", "hpc_adept", *args]
    if ranks > 1:
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), *cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPIEXEC_TIMEOUT": "3600"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"adept {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def _regions(run_dir: Path) -> dict:
    return json.loads((run_dir / "timing.json").read_text())["regions"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame", type=int, default=256, help="diffraction frame size")
    parser.add_argument("--angles", type=int, default=8, help="scans")
    parser.add_argument("--shape", type=int, nargs=3, default=[24, 48, 48])
    parser.add_argument("--field", type=int, default=512,
                        help="projection (scan field) size: sets the frames per scan")
    parser.add_argument("--iterations", type=int, default=3, help="LSQ-ML iterations")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ranks", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="adept-read-ahead-") as tmp:
        work = Path(tmp)
        config = {
            "data": {"path": "dataset"},
            "simulate": {"phantom": "procedural", "volume_shape": args.shape,
                         "sample": "isolated",
                         "n_angles": args.angles, "frame_size": args.frame, "seed": 3,
                         "projection_shape": [args.field, args.field], "overlap": 0.7,
                         "write_projections": False},
            "ptycho": {"iterations": args.iterations, "initial_probe": "auto"},
            "runtime": {"device": "cpu", "log_level": "WARNING"},
        }
        (work / "c.yaml").write_text(yaml.safe_dump(config))
        _adept(["simulate", "-c", "c.yaml", "--set", "output.dir=sim"], work, 1)
        files = sorted((work / "dataset").glob("*.cxi"))
        size = sum(f.stat().st_size for f in files) / len(files)
        start = time.perf_counter()
        scan = read_cxi(files[0])
        read_s = time.perf_counter() - start
        print(f"# {len(files)} scans of {scan.counts.shape[0]} frames {args.frame}^2 "
              f"({size / 2**20:.0f} MiB per file, read_cxi {read_s:.2f} s from the page "
              f"cache), {args.iterations} LSQ-ML iterations, {args.ranks} rank(s)")
        rows: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
        for rep in range(args.repeats):
            for ahead in (False, True):
                out = f"run_{int(ahead)}_{rep}"
                _adept(["ptycho", "-c", "c.yaml", "--set", f"output.dir={out}",
                        f"runtime.read_ahead={str(ahead).lower()}"], work, args.ranks)
                reg = _regions(work / out)
                rows[ahead].append((reg["ptycho"]["max_s"], reg["ptycho/read"]["max_s"],
                                    reg["ptycho/lsqml"]["max_s"]))
        print("| read_ahead | stage [s] | exposed read [s] | LSQ-ML [s] |")
        print("|---|---:|---:|---:|")
        best = {}
        for ahead, runs in rows.items():
            stage, read, lsqml = (min(col) for col in zip(*runs, strict=True))
            best[ahead] = stage
            print(f"| {str(ahead).lower()} | {stage:.2f} | {read:.2f} | {lsqml:.2f} |")
        print(f"stage time, read-ahead off / on (best of {args.repeats}): "
              f"{best[False] / best[True]:.2f}x; each run: "
              f"{np.round([r[0] for r in rows[False]], 2).tolist()} vs "
              f"{np.round([r[0] for r in rows[True]], 2).tolist()} s")


if __name__ == "__main__":
    main()
