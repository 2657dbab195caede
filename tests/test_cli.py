"""The adept command end to end on a tiny problem: simulate -> recon (FBP), 1 and 2 ranks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hpc_adept.io import read_cxi, read_ground_truth, read_projections, read_volume

from .conftest import adept

TINY = {
    "data": {"path": "dataset"},
    "output": {"dir": "run"},
    "simulate": {
        "phantom": "procedural",
        "volume_shape": [20, 24, 24],
        "voxel_size_m": 2.72e-8,
        "n_angles": 6,
        "frame_size": 32,
        "photons_per_pattern": 1.0e5,
        "seed": 3,
        "sample": "isolated",  # the FBP's quality threshold is for the region alone
    },
    "recon": {"methods": ["fbp"], "volume_shape": [20, 24, 24]},
    "runtime": {"device": "cpu"},
}


def write_config(directory: Path, **sections) -> Path:
    cfg = {k: dict(v) for k, v in TINY.items()}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("serial")
    config = write_config(work)
    result = adept("simulate", "-c", str(config), cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    result = adept("recon", "-c", str(config), cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work


def test_simulate_writes_a_valid_dataset(serial_run):
    scans = sorted((serial_run / "dataset").glob("scan_*.cxi"))
    assert len(scans) == 6
    scan = read_cxi(scans[1])
    assert scan.rotation_angle_deg == pytest.approx(60.0)
    assert scan.laminography_angle_deg == pytest.approx(61.0)
    assert scan.counts.shape[1:] == (32, 32)
    assert scan.object_pixel_size_m == pytest.approx((2.72e-8, 2.72e-8), rel=1e-9)
    # Poisson counts: integers, mean total near the requested dose.
    assert np.array_equal(scan.counts, np.round(scan.counts))
    assert scan.counts.sum(axis=(1, 2)).mean() == pytest.approx(1e5, rel=0.05)
    truth = read_ground_truth(serial_run / "dataset" / "ground_truth.h5")
    assert truth.volume.shape == truth.occupancy.shape == (20, 24, 24)
    assert truth.voxel_size_m == pytest.approx(2.72e-8)
    config = yaml.safe_load((serial_run / "run" / "config.yaml").read_text())
    assert config["simulate"]["n_angles"] == 6 and config["dip"]["iterations"] == 1500


def test_recon_fbp_correlates_with_truth(serial_run):
    volume, attrs = read_volume(serial_run / "run" / "volume_fbp.h5")
    truth = read_ground_truth(serial_run / "dataset" / "ground_truth.h5").volume
    assert volume.shape == truth.shape
    assert float(attrs["voxel_size_m"]) == pytest.approx(2.72e-8)
    pcc = np.corrcoef(volume.ravel(), truth.ravel())[0, 1]
    assert pcc > 0.5  # 6 angles only: a rough but clearly related volume
    assert (serial_run / "run" / "figures" / "fbp_slices.png").stat().st_size > 1000


def test_evaluate_fbp_against_the_ground_truth(serial_run):
    config = write_config(serial_run)
    result = adept("evaluate", "-c", str(config), "--set",
                   "evaluate.reference=dataset/ground_truth.h5", cwd=serial_run)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((serial_run / "run" / "metrics.json").read_text())
    fbp = metrics["fbp"]
    assert 0.0 <= fbp["ber"] < 0.5 and fbp["pcc"] > 0.5
    assert len(fbp["layers"]["ber"]) == len(fbp["layers"]["z_um"]) >= 18
    assert max(abs(s) for s in fbp["registration"]["shift_voxels"]) < 1.0
    assert (serial_run / "run" / "figures" / "psd_cuts.png").is_file()


@pytest.mark.mpi
def test_two_ranks_give_identical_scans_and_fbp(serial_run, tmp_path):
    config = write_config(tmp_path)
    result = adept("simulate", "-c", str(config), cwd=tmp_path, n_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in (serial_run / "dataset").glob("*.h5")) + \
        sorted(p.name for p in (serial_run / "dataset").glob("*.cxi"))
    for name in names:
        assert digest(tmp_path / "dataset" / name) == digest(serial_run / "dataset" / name), name
    result = adept("recon", "-c", str(config), cwd=tmp_path, n_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    one = read_volume(serial_run / "run" / "volume_fbp.h5")[0]
    two = read_volume(tmp_path / "run" / "volume_fbp.h5")[0]
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-5 * np.abs(one).max())
    projections = read_projections(tmp_path / "run" / "projections.h5")
    assert projections.projections.shape[0] == 6


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "simulate.n_angels=3"], "unknown config key simulate.n_angels"),
        (["--set", "simulate.n_angles=-1"], "simulate.n_angles must be > 0"),
        (["--set", "simulate.phantom=layout", "simulate.layout_def=missing.def"],
         "simulate.layout_def: file not found: missing.def"),
        (["--set", "runtime.device=cuda"], None),
        (["--set", "runtime.device=auto", "--set", "runtime.projector=triton"], "triton"),
    ],
)
def test_bad_simulate_input_one_line_exit_2_no_output(tmp_path, args, needle):
    config = write_config(tmp_path)
    result = adept("simulate", "-c", str(config), *args, cwd=tmp_path)
    if needle is None:  # cuda: fine on a GPU machine, a clear error without one
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        needle = "no CUDA device is usable"
    if needle == "triton":  # device auto: a GPU runs it, a CPU-only machine refuses
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        needle = "runtime.projector: triton runs on GPUs only, and this rank's device is cpu"
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "dataset").exists() and not (tmp_path / "run").exists()


def test_recon_without_projections_is_a_clear_error(tmp_path):
    config = write_config(tmp_path)
    result = adept("recon", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "projections.h5 not found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_recon_dip_writes_volume_dip_beside_volume_fbp(serial_run, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "projections.h5").write_bytes((serial_run / "run" / "projections.h5").read_bytes())
    config = write_config(tmp_path)
    result = adept("recon", "-c", str(config), "--set", "recon.methods=[fbp,dip]",
                   "--set", "dip.iterations=3", "--set", "dip.channels=[4,8]",
                   "--set", "dip.strides=[2,1]", "--set", "dip.in_channels=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    fbp_volume, _ = read_volume(run_dir / "volume_fbp.h5")
    dip_volume, attrs = read_volume(run_dir / "volume_dip.h5")
    assert dip_volume.shape == fbp_volume.shape and attrs["method"] == "dip"
    assert np.abs(dip_volume).max() <= 0.03 and np.ptp(dip_volume) > 0


def test_bad_dip_key_is_a_clear_error(tmp_path):
    config = write_config(tmp_path)
    result = adept("recon", "-c", str(config), "--set", "recon.methods=[fbp,dip]",
                   "--set", "dip.tv_weights=[1.0e-6]", cwd=tmp_path)
    assert result.returncode == 2
    assert "dip.tv_weights needs one more value" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.mpi
def test_a_problem_found_by_rank_1_alone_stops_both_ranks(serial_run, tmp_path):
    """Rank 1 gets no z slab (2 slices, 2 ranks, strides 2): rank 0 must not start alone."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "projections.h5").write_bytes((serial_run / "run" / "projections.h5").read_bytes())
    config = write_config(tmp_path, recon={"methods": ["dip"], "volume_shape": [2, 24, 24]},
                          dip={"decomposition": "volume", "memory_guard": False,
                               "channels": [4, 8], "strides": [2, 1], "in_channels": 4})
    result = adept("recon", "-c", str(config), cwd=tmp_path, n_ranks=2)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adept: error (rank 1): dip.decomposition")
    assert not (run_dir / "volume_dip.h5").exists() and not (run_dir / "adept.log").exists()


def _run_main(monkeypatch, capsys, tmp_path, *args) -> tuple[int, list[str]]:
    """``adept`` in this process (so a failure can be injected); exit code, stderr lines."""
    from hpc_adept import cli

    monkeypatch.chdir(tmp_path)  # (conftest gives the root logger back after the test)
    try:
        code = cli.main(list(args))
    except SystemExit as exc:  # ctx.abort in a serial run
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


def test_disk_full_during_the_work_is_one_line_with_the_file(serial_run, tmp_path,
                                                             monkeypatch, capsys):
    import errno

    import h5py

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "projections.h5").write_bytes((serial_run / "run" / "projections.h5").read_bytes())
    config = write_config(tmp_path)

    def full_disk(self, data):  # what a write to a full file system raises
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("hpc_adept.io.atomic.open",
                        lambda path, mode: _FullFile(path, mode, full_disk), raising=False)
    code, lines = _run_main(monkeypatch, capsys, tmp_path, "recon", "-c", str(config))
    errors = [line for line in lines if line.startswith("adept:")]
    assert code == 1 and "Traceback" not in "\n".join(lines)
    assert errors == ["adept: error: No space left on device: run/volume_fbp.h5"]
    assert not (run_dir / "volume_fbp.h5").exists()
    assert not any(p.name.endswith(".tmp") for p in run_dir.iterdir())
    assert h5py.is_hdf5(run_dir / "projections.h5")


class _FullFile:
    """A file whose writes fail as on a full disk."""

    def __init__(self, path, mode, write):
        self._file = open(path, mode)  # noqa: SIM115 - closed in __exit__
        self._write = write

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def write(self, data):
        return self._write(self, data)


@pytest.mark.parametrize("phase", ["checks", "work"])
def test_an_unexpected_error_is_one_line_and_a_crash_report(serial_run, tmp_path, monkeypatch,
                                                            capsys, phase):
    from hpc_adept.stages import recon

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "projections.h5").write_bytes((serial_run / "run" / "projections.h5").read_bytes())
    config = write_config(tmp_path)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(recon, "plan_recon" if phase == "checks" else "run_recon", broken)
    code, lines = _run_main(monkeypatch, capsys, tmp_path, "recon", "-c", str(config))
    errors = [line for line in lines if line.startswith("adept:")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in "\n".join(lines), lines
    assert errors[0].startswith("adept: error: ZeroDivisionError: a bug (unexpected")
    crash = run_dir / "crash_rank0.txt"
    if phase == "work":
        assert errors[0].endswith("the traceback is in run/crash_rank0.txt)")
        assert "ZeroDivisionError: a bug" in crash.read_text()
    else:  # nothing is written before the work starts
        assert errors[0].endswith("--debug shows the traceback)")
        assert not crash.exists()


def test_ctrl_c_during_the_checks_is_one_line_exit_130(tmp_path, monkeypatch, capsys):
    from hpc_adept.stages import recon

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recon, "plan_recon", interrupted)
    code, lines = _run_main(monkeypatch, capsys, tmp_path, "recon", "-c",
                            str(write_config(tmp_path)))
    assert code == 130 and lines == ["adept: interrupted (rank 0)"]


def test_every_stage_follows_the_one_protocol():
    """The subcommands are the stage table; each stage's plan(cfg), run(cfg, ctx, plan,
    device) and plan.validate(ctx, device) have the protocol's signatures."""
    import argparse
    import inspect

    from hpc_adept import cli
    from hpc_adept.pipeline import RunPlan
    from hpc_adept.stages import align, evaluate, ptycho, recon, simulate
    from hpc_adept.stages.registry import TABLE, run_stages

    sub = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == [*TABLE, *cli.TOOLS]  # the stages, then report, export, inspect
    assert [s.name for s in run_stages()] == ["ptycho", "align", "recon", "evaluate"]
    for stage in TABLE.values():
        plan, run = stage.functions()
        assert list(inspect.signature(plan).parameters) == ["cfg"], stage.name
        assert list(inspect.signature(run).parameters) == ["cfg", "ctx", "plan", "device"]
    for plan_type in (simulate.SimulationPlan, ptycho.PtychoPlan, align.AlignPlan,
                      recon.ReconPlan, evaluate.EvaluatePlan, RunPlan):
        assert list(inspect.signature(plan_type.validate).parameters) == ["self", "ctx",
                                                                         "device"]


def test_help_imports_no_stage():
    """``adept --help`` stays fast: the stage table imports neither torch nor MPI."""
    import subprocess
    import sys

    code = ("import sys; from hpc_adept.cli import _parser; _parser().format_help(); "
            "print(sorted(m for m in ('torch', 'mpi4py', 'numpy', 'hpc_adept.stages.ptycho') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
