"""``adept run``: every stage in order, skipping up-to-date stages, timing that adds up."""

from __future__ import annotations

import json

import pytest
import yaml

from .conftest import adept

CONFIG = {
    "data": {"path": "dataset"},
    "output": {"dir": "run"},
    "simulate": {"phantom": "procedural", "volume_shape": [16, 24, 24], "n_angles": 8,
                 "frame_size": 32, "seed": 6, "write_projections": False},
    "ptycho": {"iterations": 4},
    "align": {"crop_shape": [24, 24], "max_iterations": 3, "binning": [2, 1]},
    "recon": {"methods": ["fbp", "dip"], "volume_shape": [16, 24, 24]},
    "dip": {"iterations": 4, "channels": [4, 8], "strides": [2, 1], "in_channels": 4,
            "checkpoint_every": 2},
    "evaluate": {"reference": "dataset/ground_truth.h5"},
    "runtime": {"device": "cpu"},
}
OUTPUTS = ("projections.h5", "aligned.h5", "volume_fbp.h5", "volume_dip.h5", "metrics.json",
           "timing.json", "report.html", "report.md", "adept.log", "pipeline_state.json")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    (work / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    result = adept("simulate", "-c", "c.yaml", cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    return work


@pytest.mark.mpi
def test_run_all_stages_then_skip_and_continue(work):
    result = adept("run", "-c", "c.yaml", cwd=work, n_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    run = work / "run"
    for name in OUTPUTS:
        assert (run / name).is_file(), name
    timing = json.loads((run / "timing.json").read_text())
    assert set(timing["stages"]) == {"ptycho", "align", "recon", "evaluate"}
    assert timing["n_ranks"] == 2
    stage_sum = sum(s["max_s"] for s in timing["stages"].values())
    assert abs(stage_sum - timing["wall_s"]) <= 0.05 * timing["wall_s"], (stage_sum, timing)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"fbp", "dip"}
    # A second run finds everything up to date and redoes nothing.
    stamps = {n: (run / n).stat().st_mtime_ns for n in OUTPUTS[:5]}
    result = adept("run", "-c", "c.yaml", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("ptycho", "align", "recon", "evaluate"):
        assert f"run: {stage} skipped" in result.stderr
    assert {n: (run / n).stat().st_mtime_ns for n in OUTPUTS[:5]} == stamps
    # New DIP settings: recon and evaluate run again, the earlier stages are kept.
    result = adept("run", "-c", "c.yaml", "--set", "dip.iterations=5", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run: ptycho skipped" in result.stderr and "run: align skipped" in result.stderr
    assert "run: recon (settings changed)" in result.stderr
    assert "run: evaluate (inputs changed)" in result.stderr
    assert (run / "projections.h5").stat().st_mtime_ns == stamps["projections.h5"]
    assert (run / "metrics.json").stat().st_mtime_ns > stamps["metrics.json"]


def _stage_files(tmp_path):
    """A config whose ptycho stage reads two tiny 'scans' and writes one 'projection'."""
    from hpc_adept.config import load_config
    from hpc_adept.stages.registry import run_stages

    (tmp_path / "dataset").mkdir()
    for name in ("scan_0000.cxi", "scan_0001.cxi"):
        (tmp_path / "dataset" / name).write_bytes(name.encode())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "projections.h5").write_bytes(b"made from both scans")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    cfg = load_config(str(tmp_path / "c.yaml"),
                      [f"data.path={tmp_path / 'dataset'}", f"output.dir={tmp_path / 'run'}"])
    return cfg, next(s for s in run_stages() if s.name == "ptycho")


@pytest.mark.parametrize("change", ["none", "scan removed", "scan added", "scan replaced by "
                                    "an old copy", "output replaced", "settings"])
def test_a_stage_is_skipped_only_with_the_same_settings_inputs_and_outputs(tmp_path, change):
    import os
    import shutil

    from hpc_adept.config import load_config
    from hpc_adept.pipeline import _read_state, _record, up_to_date

    cfg, stage = _stage_files(tmp_path)
    _record(tmp_path / "run", stage, cfg)
    scans = tmp_path / "dataset"
    if change == "scan removed":
        (scans / "scan_0001.cxi").unlink()
    elif change == "scan added":
        (scans / "scan_0002.cxi").write_bytes(b"late")
    elif change == "scan replaced by an old copy":  # same name and size, older time stamp
        (tmp_path / "old.cxi").write_bytes(b"scan_0001.cxi")
        os.utime(tmp_path / "old.cxi", ns=(10**18, 10**18))
        shutil.copy2(tmp_path / "old.cxi", scans / "scan_0001.cxi")
    elif change == "output replaced":
        shutil.copy2(scans / "scan_0000.cxi", tmp_path / "run" / "projections.h5")
    elif change == "settings":
        cfg = load_config(str(tmp_path / "c.yaml"), [f"data.path={scans}",
                          f"output.dir={tmp_path / 'run'}", "ptycho.iterations=5"])
    skip, reason = up_to_date(stage, cfg, _read_state(tmp_path / "run"))
    expected = {"none": "same settings", "settings": "settings changed",
                "output replaced": "outputs changed since"}.get(change, "inputs changed")
    assert skip == (change == "none") and reason.startswith(expected), reason


def test_a_stage_command_run_alone_is_recorded_for_adept_run(work, tmp_path, monkeypatch):
    """`adept align` on its own (e.g. from the SLURM chain): `adept run` then knows its
    settings (here: other than the run's) and what it read."""
    import shutil

    from hpc_adept.config import load_config
    from hpc_adept.pipeline import _read_state, up_to_date
    from hpc_adept.stages.registry import run_stages

    shutil.copytree(work / "dataset", tmp_path / "dataset")  # copy2: time stamps kept
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    for command in ("ptycho", "align"):
        overrides = ["--set", "align.enabled=false"] if command == "align" else []
        result = adept(command, "-c", "c.yaml", *overrides, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    cfg = load_config(str(tmp_path / "c.yaml"), [])
    state = _read_state(tmp_path / "run")
    stages = {s.name: s for s in run_stages()}
    monkeypatch.chdir(tmp_path)  # the config's paths are relative
    assert up_to_date(stages["ptycho"], cfg, state)[0]
    assert up_to_date(stages["align"], cfg, state) == (False, "settings changed")
    off = load_config(str(tmp_path / "c.yaml"), ["align.enabled=false"])
    assert up_to_date(stages["align"], off, state)[0]
    wider = load_config(str(tmp_path / "c.yaml"), ["align.enabled=false",
                                                    "recon.volume_shape=[16,16,16]"])
    assert up_to_date(stages["align"], wider, state) == (False, "settings changed")


def _terminate_during(work, stage: str, out: str):
    """Start ``adept run``, SIGTERM it once the log says ``stage`` started, wait."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from .conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hpc_adept", "run", "-c", "c.yaml", "--set",
           f"output.dir={out}", "dip.iterations=60", "dip.checkpoint_every=5"]
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        seen.append(line)
        if f"run: {stage} (" in line or (stage == "dip" and "dip iterations" in line):
            time.sleep(0.2)  # inside the stage
            proc.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline, "".join(seen[-20:])
    proc.communicate(timeout=300)
    return proc.returncode


def _all_outputs_readable(run_dir) -> None:
    import h5py

    for path in run_dir.rglob("*.h5"):
        if path.name.startswith("."):
            continue  # an unfinished temporary, never a final name
        with h5py.File(path, "r") as f:  # a final name is always a complete file
            assert len(f.keys()) > 0, path


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["ptycho", "align", "recon", "dip", "evaluate"])
def test_sigterm_in_any_stage_then_rerun_gives_the_same_volumes(work, stage):
    import numpy as np

    from hpc_adept.io import read_volume

    reference = work / "reference"
    if not (reference / "volume_dip.h5").is_file():
        result = adept("run", "-c", "c.yaml", "--set", "output.dir=reference",
                       "dip.iterations=60", "dip.checkpoint_every=5", cwd=work)
        assert result.returncode == 0, result.stderr[-3000:]
    out = f"term_{stage}"
    code = _terminate_during(work, stage, out)
    assert code != 0  # killed (or stopped with a checkpoint) before the end
    _all_outputs_readable(work / out)
    result = adept("run", "-c", "c.yaml", "--set", f"output.dir={out}",
                   "dip.iterations=60", "dip.checkpoint_every=5", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    for method in ("fbp", "dip"):
        got, _ = read_volume(work / out / f"volume_{method}.h5")
        want, _ = read_volume(reference / f"volume_{method}.h5")
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
