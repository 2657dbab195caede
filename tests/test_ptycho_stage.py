"""The ptycho stage: dynamic scan assignment over ranks, per-scan restart files, output."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from hpc_adept.io import read_projections
from hpc_adept.stages.ptycho import _with_read_ahead

from .conftest import adept

CONFIG = {
    "data": {"path": "dataset"},
    "output": {"dir": "run"},
    # the projections-vs-truth thresholds are for the region alone in vacuum
    "simulate": {"phantom": "procedural", "sample": "isolated",
                 "volume_shape": [16, 20, 20], "n_angles": 5,
                 "frame_size": 32, "seed": 5, "write_projections": False},
    "ptycho": {"iterations": 8},
    "runtime": {"device": "cpu"},
}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("ptycho")
    (work / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    result = adept("simulate", "-c", "c.yaml", cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    return work


def run_ptycho(work: Path, run_dir: str, n_ranks: int = 1):
    return adept("ptycho", "-c", "c.yaml", "--set", f"output.dir={run_dir}", cwd=work,
                 n_ranks=n_ranks)


def test_serial_output_and_restart(dataset):
    result = run_ptycho(dataset, "serial")
    assert result.returncode == 0, result.stderr[-3000:]
    ps = read_projections(dataset / "serial" / "projections.h5")
    assert ps.projections.shape[0] == 5
    assert list(ps.angles_deg) == [0.0, 72.0, 144.0, 216.0, 288.0]
    assert ps.extra["iterations"].tolist() == [8.0] * 5
    assert ps.probes is not None and ps.probes.shape == (5, 32, 32)
    # A crash after three scans: only the missing two are recomputed.
    cache = dataset / "serial" / "ptycho"
    kept = {p.name: p.stat().st_mtime_ns for p in sorted(cache.glob("scan_*.h5"))[:3]}
    for p in sorted(cache.glob("scan_*.h5"))[3:]:
        p.unlink()
    first = digest(dataset / "serial" / "projections.h5")
    (dataset / "serial" / "projections.h5").unlink()
    result = run_ptycho(dataset, "serial")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reused 3 finished scan(s)" in result.stderr
    assert {n: (cache / n).stat().st_mtime_ns for n in kept} == kept
    assert digest(dataset / "serial" / "projections.h5") == first
    # Other settings invalidate the kept results.
    result = adept("ptycho", "-c", "c.yaml", "--set", "output.dir=serial",
                   "ptycho.iterations=4", cwd=dataset)
    assert result.returncode == 0 and "reused" not in result.stderr


def test_phase_reference_lands_in_projections(dataset):
    """``/phase_offset_arbitrary`` says per projection whether its offset and ramp carry
    information: 1 with ``plane`` (each projection's weighted mean and ramp removed), one
    value for the whole data set with ``auto`` (here an isolated crop in vacuum: the
    vacuum fit, 0), and the background statistics behind auto's choice beside it."""
    from hpc_adept.ptycho.phase import BackgroundLevel, trusts_background

    result = adept("ptycho", "-c", "c.yaml", "--set", "output.dir=plane",
                   "ptycho.phase_reference=plane", cwd=dataset)
    assert result.returncode == 0, result.stderr[-3000:]
    plane = read_projections(dataset / "plane" / "projections.h5")
    assert plane.extra["phase_offset_arbitrary"].tolist() == [1.0] * 5
    result = run_ptycho(dataset, "auto")  # the default: auto
    assert result.returncode == 0, result.stderr[-3000:]
    assert "phase reference vacuum (phase_reference auto: 5 of 5 scans" in result.stderr
    auto = read_projections(dataset / "auto" / "projections.h5")
    assert auto.extra["phase_offset_arbitrary"].tolist() == [0.0] * 5
    for i in range(5):
        level = BackgroundLevel(*(float(auto.extra[f"phase_background_{k}"][i])
                                  for k in ("level", "below", "sharpness")), 0.0)
        assert trusts_background(level)
    # the same reconstructions: the two references differ by a plane per projection
    yy, xx = np.mgrid[0:plane.projections.shape[1], 0:plane.projections.shape[2]]
    basis = np.stack([np.ones(yy.size), yy.ravel(), xx.ravel()], axis=1)
    for a, b in zip(auto.projections, plane.projections, strict=True):
        diff = (a - b).ravel().astype(np.float64)
        fit = basis @ np.linalg.lstsq(basis, diff, rcond=None)[0]
        assert np.abs(diff - fit).max() < 1e-4


def test_dataset_reference_is_one_for_all_scans():
    from hpc_adept.stages.ptycho import dataset_reference

    trusted = [{"background_trusted": 1.0}] * 3
    mixed = trusted + [{"background_trusted": 0.0}]
    assert dataset_reference("auto", trusted) == "vacuum"
    assert dataset_reference("auto", mixed) == "plane"
    assert dataset_reference("vacuum", mixed) == "vacuum"
    assert dataset_reference("plane", trusted) == "plane"


def test_read_ahead_gives_the_same_projections(dataset):
    result = run_ptycho(dataset, "ahead")
    assert result.returncode == 0, result.stderr[-3000:]
    result = adept("ptycho", "-c", "c.yaml", "--set", "output.dir=no_ahead",
                   "runtime.read_ahead=false", cwd=dataset)
    assert result.returncode == 0, result.stderr[-3000:]
    assert digest(dataset / "ahead" / "projections.h5") == \
        digest(dataset / "no_ahead" / "projections.h5")


class _ListQueue:
    """The items a DynamicQueue hands this rank, with a log of claims."""

    def __init__(self, items):
        self.items, self.log = list(items), []

    def take(self):
        item = self.items.pop(0) if self.items else None
        self.log.append(("take", item))
        return item


@pytest.mark.parametrize("ahead", [True, False])
def test_read_ahead_claims_the_next_scan_before_the_current_is_worked_on(ahead):
    queue = _ListQueue([0, 2, 3, 5])
    finished = {3}
    reads = []

    def start_read(index):
        queue.log.append(("read", index))
        reads.append(index)
        return f"future {index}"

    got = []
    for index, pending in _with_read_ahead(queue, lambda i: i not in finished,
                                           lambda: ahead and len(queue.items) > 0,
                                           start_read):
        queue.log.append(("work", index))
        got.append((index, pending))
    assert got == [(0, "future 0"), (2, "future 2"), (3, None), (5, "future 5")]
    assert reads == [0, 2, 5]  # a finished scan is not read
    if ahead:  # scan 2 is claimed and its read started before scan 0 is worked on
        assert queue.log[:4] == [("take", 0), ("read", 0), ("take", 2), ("read", 2)]
        assert queue.log.index(("read", 2)) < queue.log.index(("work", 0))
    else:
        assert queue.log.index(("take", 2)) > queue.log.index(("work", 0))
    assert queue.log[-1] == ("take", None)


@pytest.mark.mpi
def test_two_ranks_identical_to_one(dataset):
    result = run_ptycho(dataset, "one")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_ptycho(dataset, "two", n_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert digest(dataset / "two" / "projections.h5") == \
        digest(dataset / "one" / "projections.h5")


def test_missing_dataset_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    result = adept("ptycho", "-c", "c.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == \
        ["adept: error: data.path: directory not found: dataset"]
    assert not (tmp_path / "run").exists()


def test_killed_run_resumes_with_finished_scans(dataset):
    """SIGKILL the stage after two scans are kept; the rerun recomputes only the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from .conftest import REPO

    reference = run_ptycho(dataset, "clean")
    assert reference.returncode == 0, reference.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "hpc_adept", "ptycho", "-c", "c.yaml", "--set",
            "output.dir=killed"]
    proc = subprocess.Popen(args, cwd=dataset, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    cache = dataset / "killed" / "ptycho"
    deadline = time.monotonic() + 120
    while len(list(cache.glob("scan_*.h5"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "no scan finished in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    finished = len(list(cache.glob("scan_*.h5")))
    if finished == 5:
        pytest.skip("the stage finished before it could be killed")
    assert not (dataset / "killed" / "projections.h5").exists()
    result = run_ptycho(dataset, "killed")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"reused {finished} finished scan(s)" in result.stderr
    assert not list(cache.glob(".*.tmp"))  # temporaries of the killed writer are gone
    assert digest(dataset / "killed" / "projections.h5") == \
        digest(dataset / "clean" / "projections.h5")


def test_probe_estimated_when_the_files_have_none(tmp_path):
    """Scans without a stored probe: ``auto`` fits one on each scan and the projections
    still match the truth; ``file`` refuses the dataset before any work."""

    config = {**CONFIG, "simulate": {**CONFIG["simulate"], "store_probe": False,
                                     "n_angles": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = adept("simulate", "-c", "c.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    result = adept("ptycho", "-c", "c.yaml", "--set", "output.dir=strict",
                   "ptycho.initial_probe=file", cwd=tmp_path)
    assert result.returncode == 2
    assert "no probe stored" in result.stderr and "ptycho.initial_probe" in result.stderr
    assert not (tmp_path / "strict" / "projections.h5").exists()
    result = adept("ptycho", "-c", "c.yaml", "--set", "ptycho.iterations=40",
                   "ptycho.projection_shape=[32,32]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    # the back-propagated mean pattern gives 0.28-0.49 here
    assert_projections_match_truth(tmp_path / "run", tmp_path / "dataset", 0.97)


@pytest.mark.mpi
@pytest.mark.parametrize(("rank", "where"), [(1, "reconstruct"), (0, "reconstruct"),
                                             (1, "read")])
def test_a_rank_failing_in_its_first_scan_ends_the_job_at_once(dataset, rank, where):
    """The failing rank's error ends both ranks, not the queue running dry: with 3000
    LSQ-ML iterations the other rank's remaining scans would take minutes."""
    import time

    from .conftest import REPO, run_cmd

    run_dir = f"fail_{rank}_{where}"
    t0 = time.monotonic()
    result = run_cmd([str(REPO / "tests" / "mpi" / "fail_in_ptycho.py"), "ptycho", "-c",
                      "c.yaml", "--set", f"output.dir={run_dir}", "ptycho.iterations=3000"],
                     n_ranks=2, cwd=dataset,
                     env={"FAIL_RANK": str(rank), "FAIL_WHERE": where})
    wall = time.monotonic() - t0
    assert result.returncode != 0
    name = "reconstruct_scan" if where == "reconstruct" else "read_cxi"
    assert f"RuntimeError: injected fault in {name} on rank {rank}" in result.stderr, \
        result.stderr[-3000:]
    assert wall < 45, f"the job went on for {wall:.0f} s after the fault"
    assert len(list((dataset / run_dir / "ptycho").glob("scan_*.h5"))) < 2


@pytest.mark.mpi
@pytest.mark.parametrize(("where", "code", "message"), [
    ("plan", 2, " (rank 1): injected plan failure on rank 1"),
    ("device", 1, " (rank 1): RuntimeError: injected device failure on rank 1 (unexpected"),
    ("validate", 2, ": rank 1: RuntimeError: injected estimate failure on rank 1"),
])
def test_a_rank_failing_in_the_checks_alone_stops_both_before_work(dataset, where, code,
                                                                    message):
    """Before the work, one rank's failure (in the plan, the device, or inside the data
    checks before their collective) must reach the other rank, not leave it waiting."""
    import time

    from .conftest import REPO, run_cmd

    run_dir = f"checks_{where}"
    t0 = time.monotonic()
    result = run_cmd([str(REPO / "tests" / "mpi" / "fail_in_checks.py"), "ptycho", "-c",
                      "c.yaml", "--set", f"output.dir={run_dir}"],
                     n_ranks=2, cwd=dataset, env={"FAIL_WHERE": where})
    assert time.monotonic() - t0 < 60, result.stderr[-3000:]
    assert result.returncode == code, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("adept:")]
    assert len(lines) == 1 and lines[0].startswith(f"adept: error{message}"), \
        result.stderr[-3000:]
    assert not (dataset / run_dir).exists()


def assert_projections_match_truth(run: Path, dataset: Path, pcc_min: float) -> None:
    """Every phase projection of ``run`` correlates with the simulation's true one above
    ``pcc_min`` over the central half of the field (the edges are barely illuminated)."""
    found = read_projections(run / "projections.h5").projections
    truth = read_projections(dataset / "true_projections.h5").projections
    assert found.shape == truth.shape
    centre = tuple(slice(s // 4, s - s // 4) for s in found.shape[1:])
    for got, want in zip(found, truth, strict=True):
        pcc = np.corrcoef(got[centre].ravel(), want[centre].ravel())[0, 1]
        assert pcc > pcc_min, pcc
