"""Scaling study: run an adept command at several rank counts, tabulate and plot timing.json.

    python profiling/scaling.py STUDY.yaml [--dry-run]

The study file (example: ``profiling/scaling_cpu.yaml``)::

    config: jobs/configs/scaling_cpu.yaml   # base config of every run
    command: run                  # the adept command timed (run, ptycho, recon, ...)
    prepare: [simulate]           # commands run once per dataset before timing (untimed)
    seed_files: [projections.h5]  # files of the prepare commands' output.dir linked into
                                  # every run directory (to time a later stage alone)
    ranks: [1, 2]
    mode: strong                  # strong: same problem; weak: `weak.key` = per_rank * ranks
    weak: {key: simulate.n_angles, per_rank: 8}
    problems:                     # problem sizes: a name and --set overrides each
      - {name: small, set: {dip.iterations: 20}}
    repeats: 2
    launcher: local               # local: mpiexec -n R; slurm: sbatch --wait jobs/stage.sbatch
    sbatch: "--gpus-per-node=0"   # extra sbatch options (slurm launcher)
    output: runs/scaling

Every run gets its own run directory ``OUTPUT/PROBLEM/rRANKS/repK`` (so nothing is reused
between repeats); weak-scaling datasets go to ``OUTPUT/data/PROBLEM-rRANKS``. The study
writes ``OUTPUT/scaling.md`` and ``scaling.csv`` (per problem, stage and rank count: median
and min time over repeats, speedup and parallel efficiency against the smallest rank count)
and ``scaling.png`` (log-log time per stage against ranks with the ideal line).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
KNOWN_KEYS = {"config", "command", "prepare", "seed_files", "ranks", "mode", "weak",
              "problems", "repeats", "launcher", "sbatch", "output", "timeout_s"}


@dataclass(frozen=True)
class Study:
    """A scaling study (see the module docstring for the file format)."""

    config: Path
    command: str = "run"
    prepare: tuple[str, ...] = ()
    seed_files: tuple[str, ...] = ()
    ranks: tuple[int, ...] = (1, 2)
    mode: str = "strong"
    weak_key: str | None = None
    weak_per_rank: int = 1
    problems: tuple[tuple[str, dict[str, Any]], ...] = (("default", {}),)
    repeats: int = 1
    launcher: str = "local"
    sbatch: str = ""
    output: Path = Path("runs/scaling")
    timeout_s: float = 3600.0


def load_study(path: Path) -> Study:
    """Read and check a study file; raises SystemExit with one line on a bad file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"scaling: cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise SystemExit(f"scaling: {path} must hold a mapping")
    unknown = set(raw) - KNOWN_KEYS
    if unknown:
        raise SystemExit(f"scaling: {path}: unknown keys {sorted(unknown)}")
    if "config" not in raw:
        raise SystemExit(f"scaling: {path}: 'config' is required")
    ranks = tuple(int(r) for r in raw.get("ranks", (1, 2)))
    if not ranks or min(ranks) < 1:
        raise SystemExit(f"scaling: {path}: ranks must be positive integers")
    mode = raw.get("mode", "strong")
    if mode not in ("strong", "weak"):
        raise SystemExit(f"scaling: {path}: mode must be strong or weak")
    weak = raw.get("weak") or {}
    if mode == "weak" and "key" not in weak:
        raise SystemExit(f"scaling: {path}: weak scaling needs weak.key")
    launcher = raw.get("launcher", "local")
    if launcher not in ("local", "slurm"):
        raise SystemExit(f"scaling: {path}: launcher must be local or slurm")
    problems = tuple((str(p["name"]), dict(p.get("set") or {}))
                     for p in raw.get("problems") or [{"name": "default"}])
    return Study(
        config=Path(raw["config"]), command=str(raw.get("command", "run")),
        prepare=tuple(raw.get("prepare") or ()),
        seed_files=tuple(raw.get("seed_files") or ()), ranks=tuple(sorted(set(ranks))), mode=mode,
        weak_key=weak.get("key"), weak_per_rank=int(weak.get("per_rank", 1)),
        problems=problems, repeats=int(raw.get("repeats", 1)), launcher=launcher,
        sbatch=str(raw.get("sbatch", "")), output=Path(raw.get("output", "runs/scaling")),
        timeout_s=float(raw.get("timeout_s", 3600.0)),
    )


def _sets(values: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]


def _launch(study: Study, ranks: int, args: list[str], log_path: Path) -> int:
    """Run ``adept ARGS`` on ``ranks`` ranks; output to ``log_path``; returns the exit code."""
    env = {**os.environ, "MPIEXEC_TIMEOUT": str(int(study.timeout_s))}
    if study.launcher == "local":
        cmd = ["mpiexec", "-n", str(ranks), "adept", *args] if ranks > 1 else ["adept", *args]
    else:
        cmd = ["sbatch", "--wait", "--ntasks", str(ranks), "--cpus-per-task", "1",
               f"--output={log_path}.slurm", *shlex.split(study.sbatch),
               str(REPO / "jobs" / "stage.sbatch"), args[0], *args[2:]]
        env["ADEPT_HOME"] = str(REPO)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                              timeout=study.timeout_s + 60, check=False)
    return done.returncode


def _seed(source: Path, run_dir: Path, names: tuple[str, ...]) -> None:
    """Link (or copy) the prepared files into a fresh run directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = run_dir / name
        target.unlink(missing_ok=True)
        try:
            os.link(source / name, target)
        except OSError as exc:
            if not (source / name).is_file():
                raise SystemExit(f"scaling: seed file {source / name} missing ({exc})") from None
            shutil.copyfile(source / name, target)


def run_study(study: Study, dry_run: bool = False) -> list[dict[str, Any]]:
    """Run every (problem, ranks, repeat) and return one record per run."""
    records = []
    prepared: set[tuple[str, ...]] = set()
    for name, overrides in study.problems:
        for ranks in study.ranks:
            sets = dict(overrides)
            if study.mode == "weak":
                sets[study.weak_key] = study.weak_per_rank * ranks
                sets["data.path"] = str(study.output / "data" / f"{name}-r{ranks}")
            prepared_dir = study.output / "prepared" / (
                f"{name}-r{ranks}" if study.mode == "weak" else name)
            for command in study.prepare:
                key = (command, json.dumps(sets, sort_keys=True))
                if key in prepared:
                    continue
                prepared.add(key)
                args = [command, "-c", str(study.config), "--set",
                        *_sets({**sets, "output.dir": str(prepared_dir)})]
                print(f"prepare {name} r{ranks}: adept {shlex.join(args)}", flush=True)
                if not dry_run and _launch(study, 1, args,
                                           study.output / "logs" / f"{command}-{name}-r{ranks}"
                                           ".log"):
                    raise SystemExit(f"scaling: 'adept {command}' failed (see "
                                     f"{study.output / 'logs'})")
            for repeat in range(study.repeats):
                run_dir = study.output / name / f"r{ranks}" / f"rep{repeat}"
                args = [study.command, "-c", str(study.config), "--set",
                        *_sets({**sets, "output.dir": str(run_dir)})]
                print(f"run {name} ranks={ranks} repeat={repeat}: adept {shlex.join(args)}",
                      flush=True)
                if dry_run:
                    continue
                _seed(prepared_dir, run_dir, study.seed_files)
                code = _launch(study, ranks, args, run_dir.parent / f"rep{repeat}.log")
                if code != 0:
                    raise SystemExit(f"scaling: run failed with exit code {code}: see "
                                     f"{run_dir.parent / f'rep{repeat}.log'}")
                timing = json.loads((run_dir / "timing.json").read_text())
                records.append({"problem": name, "ranks": ranks, "repeat": repeat,
                                "timing": timing})
    return records


def tabulate(records: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Per problem, stage and ranks: median/min over repeats, speedup and efficiency.

    A stage's time is its slowest rank (``max_s``): the work is done when that rank is.
    Speedup and efficiency are against the smallest rank count ``r0``: strong scaling
    ``S = t(r0) / t(r)``, ``E = S r0 / r``; weak scaling ``E = t(r0) / t(r)``.
    """
    rows = []
    problems = sorted({r["problem"] for r in records})
    for problem in problems:
        mine = [r for r in records if r["problem"] == problem]
        stages = sorted({s for r in mine for s in r["timing"]["stages"]} | {"total"})
        for stage in stages:
            per_ranks: dict[int, list[float]] = {}
            for rec in mine:
                t = rec["timing"]
                value = t["wall_s"] if stage == "total" else \
                    t["stages"].get(stage, {}).get("max_s")
                if value is not None:
                    per_ranks.setdefault(rec["ranks"], []).append(float(value))
            if not per_ranks:
                continue
            r0 = min(per_ranks)
            base = statistics.median(per_ranks[r0])
            for ranks in sorted(per_ranks):
                median = statistics.median(per_ranks[ranks])
                speedup = base / median if median > 0 else float("nan")
                efficiency = speedup * r0 / ranks if mode == "strong" else speedup
                rows.append({"problem": problem, "stage": stage, "ranks": ranks,
                             "median_s": median, "min_s": min(per_ranks[ranks]),
                             "repeats": len(per_ranks[ranks]), "speedup": speedup,
                             "efficiency": efficiency})
    return rows


def write_outputs(rows: list[dict[str, Any]], study: Study) -> None:
    out = study.output
    out.mkdir(parents=True, exist_ok=True)
    with (out / "scaling.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Scaling study ({study.mode}): adept {study.command}", "",
             f"Config `{study.config}`, launcher {study.launcher}, {study.repeats} repeat(s); "
             "time = slowest rank of the stage (timing.json `max_s`), total = wall time.", "",
             "| problem | stage | ranks | median s | min s | speedup | efficiency |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['stage']} | {r['ranks']} | {r['median_s']:.2f} | "
                     f"{r['min_s']:.2f} | {r['speedup']:.2f} | {100 * r['efficiency']:.0f}% |")
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    _plot(rows, study, out / "scaling.png")


def _plot(rows: list[dict[str, Any]], study: Study, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = sorted({r["problem"] for r in rows})
    fig, axes = plt.subplots(1, len(problems), figsize=(5.5 * len(problems), 4.2),
                             squeeze=False)
    for ax, problem in zip(axes[0], problems, strict=True):
        mine = [r for r in rows if r["problem"] == problem]
        for stage in sorted({r["stage"] for r in mine}):
            pts = sorted((r["ranks"], r["median_s"]) for r in mine if r["stage"] == stage)
            ranks = [p[0] for p in pts]
            times = [p[1] for p in pts]
            line, = ax.plot(ranks, times, "o-", label=stage)
            ideal = [times[0] * ranks[0] / r if study.mode == "strong" else times[0]
                     for r in ranks]
            ax.plot(ranks, ideal, ":", color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({r["ranks"] for r in mine}))
        ax.set_xticklabels([str(r) for r in sorted({r["ranks"] for r in mine})])
        ax.set_xlabel("ranks")
        ax.set_ylabel("time (s), slowest rank")
        ax.set_title(f"{problem} ({study.mode} scaling; dotted: ideal)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", type=Path, help="study YAML file")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    study = load_study(args.study)
    records = run_study(study, args.dry_run)
    if args.dry_run:
        return 0
    rows = tabulate(records, study.mode)
    write_outputs(rows, study)
    print((study.output / "scaling.md").read_text())
    print(f"wrote {study.output / 'scaling.md'}, scaling.csv, scaling.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
