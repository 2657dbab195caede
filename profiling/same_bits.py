"""The same run on 1, 2 and 3 ranks: are the outputs the same bits? (issue 21)

Simulates the demo's problem once (``jobs/configs/demo.yaml``: a 28 x 48 x 48 region of an
extended chip at 54.4 nm, 40 angles; projections written directly instead of ptychography,
with a drift for the alignment to find), then for each rank count runs ``adept align`` and
``adept recon`` (FBP and the DIP, ``--iterations`` iterations, one thread per rank) into its
own run directory and compares every output with the first rank count's: the alignment's
shifts and projections, ``volume_fbp.h5``, ``volume_dip.h5`` and the DIP's loss curve
(number of differing values and the largest relative difference).

    python profiling/same_bits.py --ranks 1 2 3 --iterations 200 --out runs/same_bits
    python profiling/same_bits.py --set dip.decomposition=volume    # the volume split
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from _args import output_dir, positive_int

REPO = Path(__file__).resolve().parents[1]
COMPARED = {"aligned.h5": ("shifts_px", "projections"), "volume_fbp.h5": ("volume",),
            "volume_dip.h5": ("volume",)}


def adept(args: list[str], ranks: int, log: Path) -> float:
    """Run ``adept ARGS`` on ``ranks`` ranks; its wall time (s). Raises on failure."""
    beside = Path(sys.executable).with_name("mpiexec")  # the venv's MPI first
    mpiexec = str(beside) if beside.exists() else "mpiexec"
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "hpc_adept", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPIEXEC_TIMEOUT": "3600"}
    t0 = time.perf_counter()
    with log.open("a") as out:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"adept {args[0]} on {ranks} rank(s) failed: see {log}")
    return time.perf_counter() - t0


def difference(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """Number of differing values and the largest difference relative to max |a|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return a.size, float("inf")
    scale = max(float(np.abs(a).max()), 1e-30)
    return int((a != b).sum()), float(np.abs(a - b).max() / scale)


def outputs(run: Path) -> dict[str, np.ndarray]:
    """The compared arrays of one run directory, by ``file:dataset``."""
    arrays = {}
    for name, keys in COMPARED.items():
        with h5py.File(run / name, "r") as f:
            arrays.update({f"{name}:{k}": f[k][...] for k in keys})
    history = json.loads((run / "dip_history.json").read_text())
    arrays["dip_history.json:loss"] = np.asarray(history["loss"])
    return arrays


def main() -> None:
    """Simulate once, run every rank count, print the differences and times."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=positive_int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--iterations", type=positive_int, default=200)
    ap.add_argument("--drift-px", type=float, default=1.0)
    ap.add_argument("--set", action="append", default=[], help="adept --set for align and recon")
    ap.add_argument("--out", type=output_dir, default=str(REPO / "runs/same_bits"))
    args = ap.parse_args()
    out = Path(args.out).resolve()
    config = REPO / "jobs/configs/demo.yaml"
    common = [f"data.path={out / 'dataset'}", "runtime.torch_threads=1"]
    sim = ["simulate.scans=false", "simulate.write_projections=true",
           f"simulate.drift_px={args.drift_px}", f"output.dir={out / 'sim'}"]
    log = out / "same_bits.log"
    adept(["simulate", "-c", str(config), *_sets(common + sim)], 1, log)
    runs, times = {}, {}
    for ranks in args.ranks:
        run = out / f"ranks{ranks}"
        run.mkdir(exist_ok=True)
        link = run / "projections.h5"
        if not (link.is_symlink() or link.exists()):
            link.symlink_to(out / "sim" / "projections.h5")
        sets = common + [f"output.dir={run}", "align.enabled=true",
                         f"dip.iterations={args.iterations}", "dip.checkpoint_every=0",
                         "dip.resume=false", *args.set]
        times[ranks] = (adept(["align", "-c", str(config), *_sets(sets)], ranks, log),
                        adept(["recon", "-c", str(config), *_sets(sets)], ranks, log))
        runs[ranks] = outputs(run)
    first = args.ranks[0]
    print(f"{'output':>34} " + " ".join(f"{r} vs {first} ranks (values differing, max rel)"
                                          for r in args.ranks[1:]))
    for key in runs[first]:
        cells = [difference(runs[first][key], runs[r][key]) for r in args.ranks[1:]]
        print(f"{key:>34} " + " ".join(f"{n:>12d} {rel:10.2e}" + " " * 14 for n, rel in cells))
    for r in args.ranks:
        print(f"{r} rank(s): align {times[r][0]:.1f} s, recon {times[r][1]:.1f} s")


def _sets(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


if __name__ == "__main__":
    main()
