"""The paper's problem end to end, with the time per stage next to the paper's Table 1.

    python profiling/paper_scale.py                       # the paper's size (needs a GPU)
    python profiling/paper_scale.py --ranks 2             # 2 ranks (mpiexec, or srun in a job)
    python profiling/paper_scale.py --scale 0.25 --angles 16 --dip-iterations 50   # smoke run
    python profiling/paper_scale.py --simulate-only      # the dataset alone (reused later)
    sbatch jobs/paper_scale.sbatch                        # the same as a batch job (1 GPU)

The problem (jobs/configs/paper.yaml): 125 angles at 61 deg, 512 x 512 diffraction patterns
(probe 56 px, 65 % overlap) giving 256 x 256 projections, a 144 x 160 x 160 volume of
27.2 nm voxels cut from the real IC layout; LSQ-ML 100 iterations per scan, projection
matching, FBP and the DIP (1500 iterations), evaluation and the report. ``--scale s``
multiplies every pixel and voxel count by s (for smoke runs; such a run is not comparable
with the paper, and the table says so).

Steps: ``adept simulate`` (timed on its own: the paper's Table 1 starts from measured
data), then ``adept run`` through launch/job.sh (srun inside a SLURM job, mpiexec
otherwise), then the stage times from the run's timing.json (slowest rank) are printed
beside the paper's 2 x V100 figures (ADePt, 125 angles: LSQ-ML 0.0445 h, "data I/O,
alignment, synthesis" 0.869 h, total 0.914 h) with the ratio paper / this run, and saved
to ``WORKDIR/paper_scale.md`` and ``.json``.

Every run times the whole work: ``WORKDIR/run`` is deleted and made afresh before ``adept
run`` (an earlier run's per-scan ptycho results and DIP checkpoints there would otherwise be
reused and the stages timed at a fraction of their cost). Only the simulated dataset
(``WORKDIR/dataset``) is kept between runs, and reused when it was simulated from the same
settings (``--simulate-only`` makes it once).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from _args import device_arg, existing_file, positive_int

REPO = Path(__file__).resolve().parents[1]

#: ADePt with 125 angles, 2 x V100 (paper, Table 1), seconds.
PAPER_S = {"lsqml": 0.0445 * 3600, "reconstruction": 0.869 * 3600, "total": 0.914 * 3600}
#: Issue 9's goal: the whole problem on one H100 in at most this long.
TARGET_S = 600.0


def _round(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def scaled_config(base: dict[str, Any], scale: float, angles: int | None,
                  lsqml_iterations: int, dip_iterations: int, workdir: Path,
                  device: str, decomposition: str) -> dict[str, Any]:
    """The paper config with every pixel/voxel count times ``scale`` and the run's paths."""
    cfg = json.loads(json.dumps(base))  # deep copy
    sim, rec = cfg["simulate"], cfg["recon"]
    if scale != 1.0:
        shape = [_round(sim["volume_shape"][0] * scale, 4)] + [
            _round(n * scale, 8) for n in sim["volume_shape"][1:]]
        sim["volume_shape"] = rec["volume_shape"] = shape
        sim["frame_size"] = _round(sim["frame_size"] * scale, 16)
        sim["probe_diameter_px"] = max(8, int(round(sim["probe_diameter_px"] * scale)))
        sim["projection_shape"] = [_round(n * scale, 8) for n in sim["projection_shape"]]
        cfg.setdefault("align", {})["crop_shape"] = list(sim["projection_shape"])
    if angles:
        sim["n_angles"] = angles
    cfg.setdefault("ptycho", {})["iterations"] = lsqml_iterations
    cfg.setdefault("dip", {})["iterations"] = dip_iterations
    cfg["dip"]["decomposition"] = decomposition
    cfg["data"] = {"path": str(workdir / "dataset")}
    cfg["output"] = {"dir": str(workdir / "run")}
    cfg["evaluate"] = {**cfg.get("evaluate", {}),
                       "reference": str(workdir / "dataset" / "ground_truth.h5")}
    cfg.setdefault("runtime", {})["device"] = device
    for key in ("layout_def", "layout_lef"):  # the base config's paths are repo-relative
        if key in sim and not Path(sim[key]).is_absolute():
            sim[key] = str((REPO / sim[key]).resolve())
    return cfg


def _job(args: list[str], ranks: int, log: Path) -> float:
    """Run ``launch/job.sh ARGS`` on ``ranks`` ranks; its wall time (s)."""
    # this interpreter's environment first on PATH: its adept and mpiexec
    env = dict(os.environ, ADEPT_RANKS=str(ranks), ADEPT_HOME=str(REPO),
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("MPIEXEC_TIMEOUT", "86400")
    cmd = [str(REPO / "launch" / "job.sh"), *args]
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"paper_scale: {shlex.join(cmd)} failed (exit {done.returncode}); "
                         f"see {log}")
    return time.perf_counter() - t0


def stage_times(timing: dict[str, Any]) -> dict[str, float]:
    """Slowest-rank seconds per stage and part from a timing.json document."""
    out = {}
    for name, entry in {**timing.get("stages", {}), **timing.get("regions", {})}.items():
        out[name] = float(entry.get("max_s") or 0.0)
    return out


def breakdown(times: dict[str, float], wall_s: float) -> list[tuple[str, float | None,
                                                                     float]]:
    """(row, paper seconds or None, this run's seconds), Table-1 rows first."""
    recon = times.get("align", 0.0) + times.get("recon", 0.0)
    rows: list[tuple[str, float | None, float]] = [
        ("(1) iterative update: LSQ-ML", PAPER_S["lsqml"], times.get("ptycho", 0.0)),
        ("(2) reconstruction: I/O, alignment, synthesis", PAPER_S["reconstruction"], recon),
        ("data computation (1) + (2)", PAPER_S["total"], times.get("ptycho", 0.0) + recon),
    ]
    for part in ("align", "recon/fbp", "recon/dip", "evaluate", "report"):
        if part in times:
            rows.append((f"  {part}", None, times[part]))
    rows.append(("whole `adept run` (incl. evaluate, report)", None, wall_s))
    return rows


def render(rows: list[tuple[str, float | None, float]], meta: dict[str, Any]) -> str:
    simulated = ("dataset reused" if meta["simulate_s"] is None
                 else f"{meta['simulate_s']:.1f} s")
    lines = [f"Paper-scale benchmark: {meta['problem']}",
             f"device {meta['device']}, {meta['ranks']} rank(s), DIP decomposition "
             f"{meta['decomposition']}; simulate (not in Table 1) {simulated}",
             ""]
    if not meta["comparable"]:
        lines += ["NOTE: a scaled or reduced problem: the ratios below are NOT a comparison "
                  "with the paper.", ""]
    lines += ["| stage | paper, 2 x V100 (s) | this run (s) | paper / this run |",
              "|---|---:|---:|---:|"]
    for name, paper, mine in rows:
        ratio = f"{paper / mine:.1f}x" if paper and mine > 0 and meta["comparable"] else "-"
        lines.append(f"| {name} | {paper:.0f} | {mine:.1f} | {ratio} |" if paper
                     else f"| {name} | - | {mine:.1f} | - |")
    if meta["comparable"] and meta["device"].startswith("cuda"):
        total = rows[2][2]
        verdict = "met" if total <= TARGET_S else "NOT met"
        lines += ["", f"goal: data computation <= {TARGET_S:.0f} s on one GPU: {verdict} "
                      f"({total:.0f} s)"]
    return "\n".join(lines)


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def _base_config(parser: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """The base config, or argparse's one-line error when it cannot serve as one."""
    try:
        base = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        parser.error(f"--config: cannot read {path}: {' '.join(str(exc).split())}")
    if not isinstance(base, dict):
        parser.error(f"--config: {path} is not a YAML mapping")
    sim = base.get("simulate")
    needed = ("volume_shape", "frame_size", "probe_diameter_px", "projection_shape",
              "n_angles")
    if not isinstance(sim, dict) or not isinstance(base.get("recon"), dict) or any(
            key not in sim for key in needed):
        parser.error(f"--config: {path} needs a 'recon' section and a 'simulate' section "
                     f"with {', '.join(needed)} (like jobs/configs/paper.yaml)")
    return base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=existing_file,
                        default=str(REPO / "jobs" / "configs" / "paper.yaml"))
    parser.add_argument("--workdir", default="runs/paper_scale",
                        help="the dataset, the run (deleted and made afresh every run), "
                             "the log and the results")
    parser.add_argument("--scale", type=_scale, default=1.0,
                        help="multiply every pixel/voxel count (smoke runs)")
    parser.add_argument("--angles", type=positive_int, default=None,
                        help="override the 125 angles")
    parser.add_argument("--lsqml-iterations", type=positive_int, default=100)
    parser.add_argument("--dip-iterations", type=positive_int, default=1500)
    parser.add_argument("--ranks", type=positive_int, default=1)
    parser.add_argument("--device", type=device_arg(allow_auto=True), default="auto")
    parser.add_argument("--decomposition", choices=["angles", "volume"], default="angles")
    parser.add_argument("--simulate-only", action="store_true",
                        help="only simulate the dataset (a later run reuses it)")
    args = parser.parse_args()
    base = _base_config(parser, args.config)
    workdir = Path(args.workdir).resolve()
    if workdir.exists() and not workdir.is_dir():
        parser.error(f"--workdir: {workdir} is not a directory")

    (workdir / "run").mkdir(parents=True, exist_ok=True)
    cfg = scaled_config(base, args.scale, args.angles, args.lsqml_iterations,
                        args.dip_iterations, workdir, args.device, args.decomposition)
    config_path = workdir / "paper_scale.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = workdir / "paper_scale.log"
    sim = cfg["simulate"]
    problem = (f"{sim['n_angles']} angles, frames {sim['frame_size']}^2, projections "
               f"{sim['projection_shape']}, volume {sim['volume_shape']}, LSQ-ML "
               f"{args.lsqml_iterations} it, DIP {args.dip_iterations} it")
    print(f"paper_scale: {problem}; log {log}", flush=True)

    # the stored dataset is reused when it was simulated from the same settings
    stamp = workdir / "dataset" / "paper_scale_simulate.json"
    wanted = json.dumps(sim, sort_keys=True)
    simulate_s: float | None = None  # None: the stored dataset was reused
    if not (stamp.is_file() and stamp.read_text() == wanted):
        stamp.unlink(missing_ok=True)  # an interrupted simulation must not count as done
        simulate_s = _job(["simulate", "-c", str(config_path)], args.ranks, log)
        stamp.write_text(wanted)
        print(f"paper_scale: simulated the dataset in {simulate_s:.1f} s", flush=True)
    else:
        print(f"paper_scale: reusing the dataset in {workdir / 'dataset'}", flush=True)
    if args.simulate_only:
        return 0
    # a clean run directory: nothing of an earlier run (finished stages, per-scan ptycho
    # results, DIP checkpoints) may shorten the work being timed
    run_dir = workdir / "run"
    if run_dir.is_symlink() or run_dir.is_file():
        run_dir.unlink()
    elif run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir()
    wall_s = _job(["run", "-c", str(config_path)], args.ranks, log)

    timing = json.loads((workdir / "run" / "timing.json").read_text())
    devices = timing.get("devices") or ["?"]
    comparable = (args.scale == 1.0 and sim["n_angles"] == 125 and args.lsqml_iterations == 100
                  and args.dip_iterations == 1500)
    meta = {"problem": problem, "device": str(devices[0]), "ranks": args.ranks,
            "decomposition": args.decomposition, "simulate_s": simulate_s,
            "comparable": comparable}
    rows = breakdown(stage_times(timing), wall_s)
    text = render(rows, meta)
    print(text)
    (workdir / "paper_scale.md").write_text(text + "\n")
    (workdir / "paper_scale.json").write_text(json.dumps(
        {**meta, "rows": [{"stage": n, "paper_s": p, "this_s": m} for n, p, m in rows],
         "timing": timing}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
