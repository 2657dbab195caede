"""The scripts around the package: jobs/chain.sh, launch/env.sh and launch/job.sh with stub
SLURM commands on PATH (no cluster needed), and the argument checks of profiling/*.py
(each refused in one argparse line, exit 2, before any work)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO

BASH = "/bin/bash"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# sbatch stub: one argument per line, a blank line after each call; job ids from 101.
SBATCH = """#!/usr/bin/env bash
n=$(( $(cat "$STUB_DIR/sbatch.n" 2>/dev/null || echo 100) + 1 ))
echo "$n" > "$STUB_DIR/sbatch.n"
printf '%s\\n' "$@" "" >> "$STUB_DIR/sbatch.log"
echo "$n;cluster"
"""
# srun stub: drop the options, run the rest (launch/rank.sh adept ...).
SRUN = """#!/usr/bin/env bash
while [[ $1 == -* ]]; do shift; done
exec "$@"
"""
SCONTROL = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$STUB_DIR/scontrol.log"
"""
# scancel --signal=TERM JOB: signal the (stub) ranks.
SCANCEL = """#!/usr/bin/env bash
kill -TERM "$(cat "$STUB_DIR/adept.pid")"
"""
# adept stub: exit STUB_STATUS, or with STUB_WAIT=1 wait for SIGTERM and exit STUB_STATUS.
ADEPT = """#!/usr/bin/env bash
if [[ ${STUB_WAIT:-0} == 1 ]]; then
    trap 'exit "$STUB_STATUS"' TERM
    echo $$ > "$STUB_DIR/adept.pid.tmp"
    mv "$STUB_DIR/adept.pid.tmp" "$STUB_DIR/adept.pid"
    while true; do sleep 0.05; done
fi
exit "$STUB_STATUS"
"""


def _stubs(tmp_path: Path, **scripts: str) -> dict[str, str]:
    """Write executable stubs into tmp_path/bin; the environment that finds them first."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "ADEPT_"))}
    env.update(PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent),
                                     env.get("PATH", "")]),
               PYTHONPATH=str(REPO), STUB_DIR=str(tmp_path), ADEPT_HOME=str(REPO),
               ADEPT_SITE_FILE=str(tmp_path / "no-site.env"))
    return env


# ---------------------------------------------------------------- jobs/chain.sh


def _sbatch_calls(tmp_path: Path) -> list[list[str]]:
    text = (tmp_path / "sbatch.log").read_text()
    return [call.split("\n") for call in text.split("\n\n") if call]


def _chain(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "c.yaml").write_text("data: {path: dataset}\noutput: {dir: run}\n")
    env = _stubs(tmp_path, sbatch=SBATCH)
    return subprocess.run([BASH, str(REPO / "jobs" / "chain.sh"), "c.yaml", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_chain_run_dir_with_space_and_no_reference(tmp_path):
    done = _chain(tmp_path, "--set", "output.dir=my run", "evaluate.reference=null")
    assert done.returncode == 0, done.stderr
    calls = _sbatch_calls(tmp_path)
    names = [next(a for a in call if a.startswith("--job-name=")) for call in calls]
    assert names == ["--job-name=adept-ptycho", "--job-name=adept-align",
                     "--job-name=adept-recon", "--job-name=adept-report"]
    assert calls[-1][-2:] == ["report", "my run"]
    assert calls[0][-4:] == ["c.yaml", "--set", "output.dir=my run", "evaluate.reference=null"]
    assert "--dependency=afterok:103" in calls[-1]


def test_chain_repeated_set_and_reference(tmp_path):
    done = _chain(tmp_path, "--set", "output.dir=out", "--set", "evaluate.reference=ref.h5")
    assert done.returncode == 0, done.stderr
    calls = _sbatch_calls(tmp_path)
    assert [c[-1] for c in calls[:4]] == ["evaluate.reference=ref.h5"] * 4
    assert calls[3][-5:] == ["evaluate", "c.yaml", "--set", "output.dir=out",
                             "evaluate.reference=ref.h5"]
    assert calls[-1][-2:] == ["report", "out"]
    assert "evaluate: job 104" in done.stdout


@pytest.mark.parametrize("args, message", [
    (("--set",), "--set expects at least one key=value"),
    (("stray",), "unexpected argument 'stray'"),
    (("--set", "nosuch.key=1"), "unknown config key"),
])
def test_chain_bad_arguments(tmp_path, args, message):
    done = _chain(tmp_path, *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "sbatch.log").exists()


# ---------------------------------------------------------------- launch/env.sh


def _source_env(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {**_stubs(tmp_path), **extra}
    script = f'set -euo pipefail; source "{REPO}/launch/env.sh"; echo "adept=$(command -v adept)"'
    return subprocess.run([BASH, "-c", script], env=env, capture_output=True, text=True,
                          timeout=30)


def test_env_missing_venv_is_an_error(tmp_path):
    done = _source_env(tmp_path, ADEPT_VENV=str(tmp_path / "no-venv"))
    assert done.returncode == 2 and "adept=" not in done.stdout
    assert done.stderr.strip().splitlines() == [
        f"launch/env.sh: ADEPT_VENV={tmp_path / 'no-venv'} is not a virtual environment "
        "(no bin/activate)"]


def test_env_modules_without_module_command(tmp_path):
    done = _source_env(tmp_path, ADEPT_MODULES="cuda/12.4")
    assert done.returncode == 2 and "adept=" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "ADEPT_MODULES" in lines[0] and "no module command" in lines[0]


def test_env_venv_is_activated(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
    (venv / "bin" / "adept").write_text("#!/bin/sh\n")
    (venv / "bin" / "adept").chmod(0o755)
    done = _source_env(tmp_path, ADEPT_VENV=str(venv))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"adept={venv}/bin/adept"


# ---------------------------------------------------------------- launch/job.sh


def _job_env(tmp_path: Path, status: int, **extra: str) -> dict[str, str]:
    env = _stubs(tmp_path, srun=SRUN, scontrol=SCONTROL, scancel=SCANCEL, adept=ADEPT)
    env.update(SLURM_JOB_ID="42", STUB_STATUS=str(status), **extra)
    return env


def _requeued(tmp_path: Path) -> bool:
    log = tmp_path / "scontrol.log"
    return log.exists() and "requeue 42" in log.read_text()


@pytest.mark.parametrize("status, requeue, env_extra", [
    (75, True, {}),
    (75, False, {"ADEPT_REQUEUE": "0"}),
    (0, False, {}),
    (1, False, {}),
    (143, False, {}),
])
def test_job_requeues_only_a_checkpointed_stop(tmp_path, status, requeue, env_extra):
    done = subprocess.run([BASH, str(REPO / "launch" / "job.sh"), "recon", "-c", "c.yaml"],
                          env=_job_env(tmp_path, status, **env_extra), capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == status, done.stderr
    assert _requeued(tmp_path) == requeue


@pytest.mark.parametrize("status, requeue", [(75, True), (143, False)])
def test_job_signal_requeues_only_a_checkpointed_stop(tmp_path, status, requeue):
    job = subprocess.Popen([BASH, str(REPO / "launch" / "job.sh"), "ptycho", "-c", "c.yaml"],
                           env=_job_env(tmp_path, status, STUB_WAIT="1"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "adept.pid").exists():
            assert time.monotonic() < deadline and job.poll() is None, "adept stub not started"
            time.sleep(0.05)
        job.send_signal(signal.SIGUSR1)
        _, err = job.communicate(timeout=20)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == status, err
    assert "USR1 received" in err
    assert _requeued(tmp_path) == requeue
    if not requeue:
        assert "not requeued" in err


# ---------------------------------------------------------------- profiling/*.py arguments

BAD_ARGUMENTS = [
    ("bench_lsqml.py", ["--sizes", "0"], "argument --sizes: must be a positive integer"),
    ("bench_lsqml.py", ["--threads", "0"], "argument --threads: must be a positive integer"),
    ("bench_lsqml.py", ["--json", "/nonexistent/x.json"],
     "argument --json: /nonexistent/x.json: the directory /nonexistent does not exist"),
    ("bench_lsqml.py", ["--sizes", "8", "16", "--iterations", "1", "2", "3"],
     "--iterations: one value, or one per size (2), got 3"),
    ("roofline.py", ["--repeats", "0"], "argument --repeats: must be a positive integer"),
    ("roofline.py", ["--device", "gpu"], "argument --device: unknown device 'gpu'"),
    ("bench_align.py", ["--angles", "0"], "argument --angles: must be a positive integer"),
    ("bench_align.py", ["--shape", "8", "-8", "8"], "argument --shape: must be a positive"),
    ("bench_projector.py", ["--angles", "-1"], "argument --angles: must be a positive"),
    ("bench_projector.py", ["--device", "nosuch"], "argument --device: unknown device"),
    ("fbp_missing_cone.py", ["--shape", "0", "8", "8"], "argument --shape: must be a positive"),
    ("fbp_missing_cone.py", ["--out", "/nonexistent/a.png"], "argument --out:"),
    ("bench_dip.py", ["speed", "--iterations", "-1"], "argument --iterations: must be a positive"),
    ("bench_dip.py", ["speed", "--angles", "0"], "argument --angles: must be a positive"),
    ("bench_dip.py", ["speed", "--device", "xpu:0"], "argument --device: unsupported device"),
    ("bench_dip.py", ["quality", "--variants", "{"], "argument --variants: not valid JSON"),
    ("bench_dip.py", ["speed", "--channels", "4", "--strides", "2", "2"],
     "--channels and --strides need one value per level"),
    ("paper_scale.py", ["--config", "/missing.yaml"],
     "argument --config: /missing.yaml: no such file"),
    ("paper_scale.py", ["--scale", "2"], "argument --scale: must lie in (0, 1]"),
    ("paper_scale.py", ["--dip-iterations", "0"], "argument --dip-iterations: must be a positive"),
    ("ablation.py", ["study.yaml", "--ranks", "0"], "argument --ranks: must be a positive"),
    ("phase_reference.py", ["--angles", "0"], "argument --angles: must be a positive"),
    ("phase_reference.py", ["--ptycho", "-1"], "argument --ptycho: must be"),
    ("extended_recon.py", ["--angles", "0"], "argument --angles: must be a positive"),
    ("extended_recon.py", ["--config", "/missing.yaml"], "argument --config: /missing.yaml"),
    ("bench_margin.py", ["--steps", "0"], "argument --steps: must be a positive"),
]
if not _cuda_available():
    BAD_ARGUMENTS.append(("bench_align.py", ["--device", "cuda"],
                          "argument --device: cuda: no CUDA device is available here"))


def _profiling(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "profiling" / script), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


def _assert_usage_error(done: subprocess.CompletedProcess, script: str, message: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(f"{script}: error: ") and message in errors[0], errors[0]


@pytest.mark.parametrize("script, args, message", BAD_ARGUMENTS,
                         ids=[f"{s}{' '.join(a)}" for s, a, _ in BAD_ARGUMENTS])
def test_profiling_refuses_bad_arguments(tmp_path, script, args, message):
    done = _profiling(script, ["--workdir", str(tmp_path / "w"), *args]
                      if script == "paper_scale.py" else args, tmp_path)
    _assert_usage_error(done, script, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_paper_scale_refuses_a_config_that_is_not_one(tmp_path):
    (tmp_path / "c.yaml").write_text("- a list\n")
    done = _profiling("paper_scale.py", ["--config", "c.yaml", "--workdir", "w"], tmp_path)
    _assert_usage_error(done, "paper_scale.py", "--config: c.yaml is not a YAML mapping")
    (tmp_path / "c.yaml").write_text("simulate: {n_angles: 4}\n")
    done = _profiling("paper_scale.py", ["--config", "c.yaml", "--workdir", "w"], tmp_path)
    _assert_usage_error(done, "paper_scale.py", "needs a 'recon' section")
    assert not (tmp_path / "w").exists()


def test_ablation_only_refuses_unknown_variants(tmp_path):
    (tmp_path / "study.yaml").write_text(
        "config: base.yaml\noutput: abl\nvariants:\n  - {name: dense FBP}\n  - {name: sparse}\n")
    done = _profiling("ablation.py", ["study.yaml", "--only", "sparse", "nosuch"], tmp_path)
    _assert_usage_error(done, "ablation.py",
                        "--only: no variant 'nosuch' in study.yaml; its variants: "
                        "'dense FBP', 'sparse'")
    assert not (tmp_path / "abl").exists()


def test_compare_runs_adds_the_circuit_figures(tmp_path):
    """profiling/compare_runs.py: via recall, opens and shorts per method below the timing."""
    import json

    stages = {"recon": {"max_s": 2.0}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "timing.json").write_text(json.dumps(
        {"stages": stages, "wall_s": 4.0, "n_ranks": 1}))
    (tmp_path / "b" / "timing.json").write_text(json.dumps(
        {"stages": stages, "wall_s": 8.0, "n_ranks": 2}))
    (tmp_path / "a" / "metrics.json").write_text(json.dumps({
        "fbp": {"ber": 0.1, "circuit": {"via_recall": 0.9, "opens": 4, "shorts": 1}},
        "dip": {"ber": 0.1, "circuit": {"via_recall": None, "opens": 1, "shorts": 0}}}))
    done = _profiling("compare_runs.py", [f"A={tmp_path / 'a'}", f"B={tmp_path / 'b'}"],
                      tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "| stage | A | B |"
    assert lines[-6:] == ["| via recall FBP | 0.900 | - |", "| opens FBP | 4 | - |",
                          "| shorts FBP | 1 | - |", "| via recall DIP | - | - |",
                          "| opens DIP | 1 | - |", "| shorts DIP | 0 | - |"]
