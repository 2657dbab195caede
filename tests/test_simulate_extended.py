"""``simulate.sample``: an extended chip around the region, or the region alone (issue 18).

Small problems (an 8 x 16 x 16 region, 3 angles, 16 x 16 frames) run in-process; one
check runs ``adept simulate`` on 2 ranks and one (when git and the commit before
``simulate.sample`` are there) the code of that commit, for the isolated sample's files.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from hpc_adept import sim
from hpc_adept.cli import main
from hpc_adept.config import load_config
from hpc_adept.io import read_cxi, read_ground_truth, read_projections
from hpc_adept.lamino import Geometry, LaminoOperator
from hpc_adept.lamino.region import extended_shape, lateral_margin_px
from hpc_adept.phantom import ground_truth_volume, procedural_phantom
from hpc_adept.stages import simulate

from .conftest import REPO, adept

REGION = (8, 16, 16)
FRAME = 16
PAD = FRAME // 2 + 1 + 2  # simulate.scan_pad_px at a jitter of 1 px
PARENT = "8aaaff3"  # the commit before simulate.sample (today's isolated crop)
SIMULATE = {"phantom": "procedural", "volume_shape": list(REGION), "n_angles": 3,
            "frame_size": FRAME, "seed": 1, "poisson_noise": False}


def config(work: Path, **simulate_keys) -> dict:
    return {"data": {"path": str(work / "ds")}, "output": {"dir": str(work / "run")},
            "simulate": {**SIMULATE, **simulate_keys}, "runtime": {"device": "cpu"}}


def simulate_in(work: Path, **simulate_keys) -> Path:
    """``adept simulate`` in-process into ``work``; the dataset directory."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "c.yaml").write_text(yaml.safe_dump(config(work, **simulate_keys)))
    assert main(["simulate", "-c", str(work / "c.yaml")]) == 0
    return work / "ds"


def project(volume: np.ndarray, n_angles: int, window: tuple[int, int]) -> np.ndarray:
    """float64 projections of ``volume`` at the dataset's angles onto ``window``."""
    angles = np.arange(n_angles) * (360.0 / n_angles)
    op = LaminoOperator(Geometry(angles, 61.0, volume.shape, window), kernel="torch")
    with torch.no_grad():
        return op.forward(torch.from_numpy(volume.astype(np.float64))).numpy()


def wide_volume(margin: int) -> np.ndarray:
    """The widened procedural phantom's phase per voxel, float32, drawn independently."""
    occupancy = procedural_phantom(extended_shape(REGION, margin), 27.2e-9, seed=1)
    return ground_truth_volume(occupancy, 6200.0, 27.2e-9).astype(np.float32)


@pytest.fixture(scope="module")
def extended(tmp_path_factory) -> Path:
    """An extended sample with phase offsets and ramps (no drift): its work directory."""
    work = tmp_path_factory.mktemp("extended")
    simulate_in(work, phase_offset_rad=0.4, phase_ramp_rad=0.3)
    return work


def test_true_projections_are_the_widened_phantom_in_the_region_window(extended):
    truth = read_projections(extended / "ds" / "true_projections.h5")
    gt = read_ground_truth(extended / "ds" / "ground_truth.h5")
    window = simulate.auto_projection_shape(REGION, 61.0)
    margin = lateral_margin_px(REGION, (window[0] + 2 * PAD, window[1] + 2 * PAD), 61.0)
    assert gt.attrs["sample"] == "extended" and gt.attrs["lateral_margin_px"] == margin
    assert truth.projections.shape == (3, *window)
    expected = project(wide_volume(margin), 3, window)
    np.testing.assert_allclose(truth.projections, expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())


def test_ground_truth_is_the_centre_of_the_widened_phantom(extended):
    gt = read_ground_truth(extended / "ds" / "ground_truth.h5")
    m = int(gt.attrs["lateral_margin_px"])
    wide = wide_volume(m)
    assert gt.volume.shape == REGION and gt.circuit.nets.shape == REGION
    np.testing.assert_array_equal(gt.volume, wide[:, m:m + 16, m:m + 16])
    with h5py.File(extended / "ds" / "ground_truth.h5", "r") as f:
        widened = f[simulate.EXTENDED_OCCUPANCY][()]
    assert widened.dtype == np.uint8 and widened.shape == wide.shape
    np.testing.assert_array_equal(widened[:, m:m + 16, m:m + 16], gt.occupancy)
    assert widened.sum() > 10 * gt.occupancy.sum()  # the chip around the region is there
    assert set(np.unique(gt.circuit.nets[gt.occupancy == 0])) == {0}
    # the ids of the wires and vias the region holds, numbered 1..k, with their names
    for labels, names in ((gt.circuit.nets, gt.circuit.net_names),
                          (gt.circuit.vias, gt.circuit.via_layers)):
        assert set(np.unique(labels).tolist()) == set(range(len(names) + 1))


def test_material_outside_the_region_contributes(extended):
    """The extended projections minus the region's own: the surroundings, here more than
    the region's own signal in its window."""
    truth = read_projections(extended / "ds" / "true_projections.h5").projections
    gt = read_ground_truth(extended / "ds" / "ground_truth.h5")
    own = project(gt.volume, 3, truth.shape[1:])
    outside = np.linalg.norm(truth - own) / np.linalg.norm(own)
    assert outside > 1.0, outside


def test_offsets_and_ramps_are_recorded_within_bounds(extended):
    truth = read_projections(extended / "ds" / "true_projections.h5")
    measured = read_projections(extended / "run" / "projections.h5").projections
    offsets, ramps = truth.extra["phase_offset_rad"], truth.extra["phase_ramp_rad"]
    assert offsets.shape == (3,) and ramps.shape == (3, 2)
    assert np.abs(offsets).max() <= 0.4 and np.abs(ramps).max() <= 0.3
    assert np.abs(offsets).min() > 0 and np.abs(ramps).min() > 0
    expected_o, expected_r = simulate.phase_errors(3, 0.4, 0.3, seed=1)
    np.testing.assert_array_equal(offsets, expected_o)
    np.testing.assert_array_equal(ramps, expected_r)
    window = truth.projections.shape[1:]
    for k in range(3):  # projections.h5 = truth + offset + ramp; the truth has none
        np.testing.assert_allclose(measured[k] - truth.projections[k],
                                   sim.linear_phase(window, offsets[k], ramps[k]), atol=1e-5)
    edge = sim.linear_phase((4, 6), 0.0, (0.5, -0.25))  # centre-to-edge change
    np.testing.assert_allclose(edge[-1, 0] - edge[0, 0], 0.5 * 3 / 2)  # 3 px of 2
    np.testing.assert_allclose(edge[0, -1] - edge[0, 0], -0.25 * 5 / 3)
    assert abs(edge.mean()) < 1e-12  # zero at the centre


@pytest.mark.mpi
def test_two_ranks_write_the_same_extended_dataset(extended, tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        config(tmp_path, phase_offset_rad=0.4, phase_ramp_rad=0.3)))
    result = adept("simulate", "-c", "c.yaml", cwd=tmp_path, n_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("true_projections.h5", "ground_truth.h5", "scan_0000.cxi", "scan_0002.cxi"):
        one = (extended / "ds" / name).read_bytes()
        assert (tmp_path / "ds" / name).read_bytes() == one, name


@pytest.mark.mpi
def test_two_ranks_write_the_same_drifted_projections(tmp_path):
    """``projections.h5`` with the drift (``scans: false``): each rank moves its own angles,
    rank 0 gathers them; the values match one rank's."""
    keys = dict(drift_px=1.5, scans=False, write_projections=True, projection_noise=0.02)
    one = simulate_in(tmp_path / "one", **keys).parent / "run" / "projections.h5"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(tmp_path, **keys)))
    result = adept("simulate", "-c", "c.yaml", cwd=tmp_path, n_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(read_projections(tmp_path / "run" / "projections.h5")
                                  .projections, read_projections(one).projections)


def test_scan_object_beyond_the_field_is_chip(tmp_path, monkeypatch, capsys):
    """The object a scan sees around the scanned field: chip (extended), vacuum
    (isolated); the ramp continues into it."""
    seen = {}

    def record(obj, pad, field_shape, probe, positions):
        seen.setdefault("obj", obj)
        return np.ones((len(positions), *probe.shape))

    monkeypatch.setattr(simulate.sim, "diffraction_patterns", record)
    for sample in ("extended", "isolated"):
        seen.clear()
        simulate_in(tmp_path / sample, sample=sample, n_angles=1)
        assert f"{sample} sample, lateral margin" in capsys.readouterr().err
        obj = seen["obj"]
        window = simulate.auto_projection_shape(REGION, 61.0)
        assert obj.shape == (window[0] + 2 * PAD, window[1] + 2 * PAD)
        ring = np.ones(obj.shape, bool)
        ring[PAD:-PAD, PAD:-PAD] = False
        phase = np.angle(obj[ring])
        if sample == "isolated":
            np.testing.assert_array_equal(obj[ring], 1.0)
        else:
            assert (np.abs(phase) > 1e-3).mean() > 0.5


def test_extended_scans_see_the_drift_and_the_pad(tmp_path):
    """Drift on an extended sample: the drift guard is cut off before the scan."""
    ds = simulate_in(tmp_path, drift_px=1.0, position_jitter_px=1.0)
    truth = read_projections(ds / "true_projections.h5")
    assert truth.extra["drift_px"].shape == (3, 2)
    assert read_cxi(ds / "scan_0001.cxi").counts.shape[1:] == (FRAME, FRAME)


@pytest.mark.parametrize("sample", ["extended", "isolated"])
def test_projections_file_holds_the_drift_without_scans(tmp_path, sample):
    """``scans: false`` with ``write_projections``: ``projections.h5`` is what the
    ptychography of the drifted scans would give, so ``adept align`` can be studied without
    ptychography: for a chip its material moved in from beyond the window (a window padded
    by 3 sigma of the drift, shifted, cut), for an isolated sample vacuum (zeros) moved in,
    not the window's far edge; ``true_projections.h5`` stays unshifted."""
    sigma = 1.5
    ds = simulate_in(tmp_path, drift_px=sigma, scans=False, write_projections=True,
                     sample=sample)
    truth = read_projections(ds / "true_projections.h5")
    measured = read_projections(tmp_path / "run" / "projections.h5").projections
    drift = truth.extra["drift_px"]
    window = simulate.auto_projection_shape(REGION, 61.0)
    pad = int(np.ceil(3 * sigma))
    padded = (window[0] + 2 * pad, window[1] + 2 * pad)
    if sample == "extended":
        wide = project(wide_volume(lateral_margin_px(REGION, padded, 61.0)), 3, padded)
    else:
        gt = read_ground_truth(ds / "ground_truth.h5")
        wide = np.pad(project(gt.volume, 3, window), ((0, 0), (pad, pad), (pad, pad)))
    expected = np.stack([np.real(sim.shift_image(p, tuple(d)))
                         for p, d in zip(wide, drift, strict=True)])
    expected = expected[:, pad:pad + window[0], pad:pad + window[1]]
    assert np.abs(drift).max() > 0.5
    np.testing.assert_allclose(measured, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    unshifted = wide[:, pad:pad + window[0], pad:pad + window[1]]
    np.testing.assert_allclose(truth.projections, unshifted, rtol=0,
                               atol=1e-5 * np.abs(unshifted).max())
    assert np.abs(measured - truth.projections).max() > 0.1 * np.abs(unshifted).max()


def test_isolated_is_the_region_alone(tmp_path):
    """The explicit old path: the region's own phantom, projected onto its window."""
    ds = simulate_in(tmp_path, sample="isolated", phase_offset_rad=0.0)
    gt = read_ground_truth(ds / "ground_truth.h5")
    assert "sample" not in gt.attrs
    occupancy = procedural_phantom(REGION, 27.2e-9, seed=1)
    np.testing.assert_array_equal(gt.volume, ground_truth_volume(occupancy, 6200.0, 27.2e-9)
                                  .astype(np.float32))
    truth = read_projections(ds / "true_projections.h5")
    expected = project(gt.volume, 3, simulate.auto_projection_shape(REGION, 61.0))
    np.testing.assert_array_equal(truth.projections, expected.astype(np.float32))
    assert not truth.extra
    with h5py.File(ds / "ground_truth.h5", "r") as f:
        assert simulate.EXTENDED_OCCUPANCY not in f


def _parent_tree(tmp_path: Path) -> Path | None:
    """The code of the commit before ``simulate.sample``, or None without git or it."""
    try:
        subprocess.run(["git", "cat-file", "-e", PARENT], cwd=REPO, check=True,
                       capture_output=True, timeout=30)
        archive = subprocess.run(["git", "archive", PARENT, "hpc_adept"], cwd=REPO,
                                 check=True, capture_output=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    tree = tmp_path / "parent"
    tree.mkdir()
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def test_isolated_files_are_todays_bit_for_bit(tmp_path):
    """``sample: isolated`` without drift writes the files the parent commit wrote without
    the key, the run directory's ``projections.h5`` too. (With drift they differ since
    2026-12-05: an isolated sample's drift now moves vacuum in, not the window's far edge;
    test_projections_file_holds_the_drift_without_scans.)"""
    tree = _parent_tree(tmp_path)
    if tree is None:
        pytest.skip(f"commit {PARENT} not available")
    keys = {"projection_noise": 0.02, "poisson_noise": True}
    old = tmp_path / "old"
    old.mkdir()
    (old / "c.yaml").write_text(yaml.safe_dump(config(old, **keys)))
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "hpc_adept", "simulate", "-c", "c.yaml"],
                            cwd=old, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    new = simulate_in(tmp_path / "new", sample="isolated", **keys)
    names = sorted(p.name for p in (old / "ds").iterdir())
    assert names == sorted(p.name for p in new.iterdir())
    for name in names:
        assert (new / name).read_bytes() == (old / "ds" / name).read_bytes(), name
    projections = "run/projections.h5"
    assert ((tmp_path / "new" / projections).read_bytes()
            == (old / projections).read_bytes())


TINY_LEF = """VERSION 5.8 ;
UNITS
  DATABASE MICRONS 1000 ;
END UNITS
LAYER metal1
  TYPE ROUTING ;
  DIRECTION HORIZONTAL ;
  WIDTH 0.07 ;
  THICKNESS 0.13 ;
  HEIGHT 0.37 ;
END metal1
END LIBRARY
"""
TINY_DEF = """VERSION 5.8 ;
DESIGN tiny ;
UNITS DISTANCE MICRONS 1000 ;
DIEAREA ( 0 0 ) ( {size} {size} ) ;
NETS 1 ;
- n1 + ROUTED metal1 ( 0 {half} ) ( {size} {half} ) ;
END NETS
END DESIGN
"""


@pytest.mark.parametrize("die_nm, warnings", [(2000, 1), (40000, 0)])
def test_layout_crop_whose_widened_slab_leaves_the_die_warns(tmp_path, caplog, die_nm,
                                                             warnings):
    (tmp_path / "tiny.def").write_text(TINY_DEF.format(size=die_nm, half=die_nm // 2))
    (tmp_path / "tiny.lef").write_text(TINY_LEF)
    origin = (die_nm / 2000 - 0.4, die_nm / 2000 - 0.4)
    keys = {"phantom": "layout", "layout_def": str(tmp_path / "tiny.def"),
            "layout_lef": str(tmp_path / "tiny.lef"), "voxel_size_m": 5.44e-8,
            "crop_origin_um": list(origin), "supersample": 1, "scans": False,
            "write_projections": True}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(tmp_path, **keys)))
    cfg = load_config(tmp_path / "c.yaml")
    with caplog.at_level(logging.WARNING, logger="hpc_adept.stages.simulate"):
        plan = simulate.plan_simulate(cfg)
    found = [r for r in caplog.records if "leaves the die" in r.getMessage()]
    assert len(found) == warnings, caplog.text
    assert plan.margin_px == lateral_margin_px(REGION, plan.projection_shape, 61.0)
    occupancy, _ = simulate.build_ground_truth(cfg, plan)
    m = plan.margin_px
    # the region where crop_origin_um says: the wire at the die's middle, y = 0.4 um into it
    row = int(0.4 / 0.0544)
    assert occupancy[:, m + row, m:m + 16].max() > 0
    centres = origin[0] - m * 0.0544 + (np.arange(occupancy.shape[2]) + 0.5) * 0.0544  # um
    metal = occupancy.any(axis=(0, 1))
    die_um = die_nm / 1000
    assert metal[(centres > 0.05) & (centres < die_um - 0.05)].all()  # the wire, on the die
    assert not metal[(centres < -0.05) | (centres > die_um + 0.05)].any()  # vacuum beyond
    assert ((centres < 0) | (centres > die_um)).any() == bool(warnings)


def test_memory_guard_counts_the_widened_phantom(tmp_path):
    """The phantom's part grows with the widened slab; the log line names sample and
    margin."""
    parts = {}
    for sample in ("isolated", "extended"):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(tmp_path, sample=sample)))
        cfg = load_config(tmp_path / "c.yaml")
        plan = simulate.plan_simulate(cfg)
        key = next(k for k in simulate.simulation_memory_parts(cfg, plan, 1)
                   if k.startswith("the phantom"))
        parts[sample] = (simulate.simulation_memory_parts(cfg, plan, 1)[key], plan)
    (iso, _), (ext, plan) = parts["isolated"], parts["extended"]
    nz, ny, nx = plan.phantom_shape
    assert ext / iso == pytest.approx(ny * nx / (REGION[1] * REGION[2]), rel=1e-6)
    assert plan.window_shape == tuple(n + 2 * PAD for n in plan.projection_shape)
