"""Shared test helpers: running the CLI and scripts under mpiexec with a hang timeout."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Triton fixes its mode when first imported: without a GPU only its interpreter can run
# the fused projector kernels (tests/test_fused.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
IC_DIR = (REPO / ".." / "shared" / "data" / "ic").resolve()
IC_DEF = IC_DIR / "gcd_nangate45.def"
IC_LEF = IC_DIR / "Nangate45_tech.lef"
MPI_TIMEOUT_S = 240


@pytest.fixture(autouse=True)
def _restore_root_logger():
    """``adept``'s main() run in-process installs its own stderr handler on the root logger,
    bound to that test's captured stream: give the logger back as it was after every test,
    so no later test logs into a closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def mpiexec_path() -> str | None:
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


def run_cmd(args: list[str], n_ranks: int = 1, cwd: Path | None = None,
            timeout: float = MPI_TIMEOUT_S, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """Run ``args`` (a Python module/script command line without the interpreter) on
    ``n_ranks`` MPI ranks (plain subprocess for one rank without MPI)."""
    full_env = dict(os.environ)
    full_env["MPIEXEC_TIMEOUT"] = str(int(timeout))  # a hang fails instead of stalling CI
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    cmd = [sys.executable, *args]
    if n_ranks > 1:
        mpiexec = mpiexec_path()
        if mpiexec is None:
            pytest.skip("mpiexec not available")
        cmd = [mpiexec, "-n", str(n_ranks), *cmd]
    return subprocess.run(cmd, cwd=cwd or REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout + 30)


def adept(*args: str, n_ranks: int = 1, cwd: Path | None = None,
          env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the ``adept`` command line."""
    return run_cmd(["-m", "hpc_adept", *args], n_ranks=n_ranks, cwd=cwd, env=env)


@pytest.fixture
def ic_files() -> tuple[Path, Path]:
    """The real layout, or a skip with a one-line notice when it is not on this machine."""
    if not (IC_DEF.is_file() and IC_LEF.is_file()):
        pytest.skip(f"real IC layout not found in {IC_DIR}")
    return IC_DEF, IC_LEF
