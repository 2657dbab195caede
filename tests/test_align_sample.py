"""``align.sample``: which projection-matching method the data get (issue 18).

An extended sample (a region of a chip) gets the widened volume, the plane fit and the
eigenvalue floor; an isolated one the region only. ``auto`` decides from the border of the
eight projections ``recon.sample: auto`` reads, in the library and in the stage alike.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from hpc_adept.align.sample import (
    EXTENDED_COARSE_EIGEN_FLOOR,
    EXTENDED_EIGEN_FLOOR,
    method_for,
    resolve_sample,
)
from hpc_adept.config import AlignConfig, ConfigError, load_config
from hpc_adept.io import ProjectionSet, read_projections, write_projections
from hpc_adept.lamino.region import sample_indices

from .extended_sample import TILT, Sample, extended_sample

REGION = (12, 16, 16)


@pytest.fixture(scope="module")
def samples():
    # 1 px RMS shifts: the isolated window leaves 2 px around the region's shadow, and a
    # sample that drifts further moves material into the border (it then looks extended:
    # with 2 px RMS on the denser procedural phantom it does)
    return {kind: extended_sample(REGION, 16, 3, extended=kind == "extended", noise=0.02,
                                  shift_sigma_px=1.0,
                                  plane_rad=0.5 if kind == "extended" else 0.0)
            for kind in ("extended", "isolated")}


def _looked_at(sample) -> np.ndarray:
    projections = np.asarray(sample.measured)
    return projections[sample_indices(len(projections))]


def test_auto_tells_a_chip_from_a_crop_in_vacuum(samples):
    for kind, sample in samples.items():
        assert resolve_sample(AlignConfig(), _looked_at(sample)).sample == kind


def test_each_kind_resolves_the_settings_it_governs():
    extended = method_for(AlignConfig(), True)
    assert (extended.sample, extended.lateral_margin, extended.fit_phase_plane,
            extended.flow_eigen_floor) == ("extended", "auto", True, EXTENDED_EIGEN_FLOOR)
    isolated = method_for(AlignConfig(lateral_margin=12), False)
    assert (isolated.sample, isolated.lateral_margin, isolated.fit_phase_plane,
            isolated.flow_eigen_floor) == ("isolated", 0, False, 0.0)
    # the coarser levels' floor: higher for a chip, at least the last level's
    assert (extended.coarse_flow_eigen_floor, isolated.coarse_flow_eigen_floor) == (
        EXTENDED_COARSE_EIGEN_FLOOR, 0.0)
    assert EXTENDED_COARSE_EIGEN_FLOOR > EXTENDED_EIGEN_FLOOR
    assert method_for(AlignConfig(flow_eigen_floor=0.5), True).coarse_flow_eigen_floor == 0.5
    assert method_for(AlignConfig(flow_eigen_floor=0.2), False).coarse_flow_eigen_floor == 0.2
    # settings given are kept
    own = method_for(AlignConfig(lateral_margin=6, fit_phase_plane=False,
                                 flow_eigen_floor=0.3, coarse_flow_eigen_floor=0.05), True)
    assert (own.lateral_margin, own.fit_phase_plane, own.flow_eigen_floor,
            own.coarse_flow_eigen_floor) == (6, False, 0.3, 0.05)
    assert method_for(AlignConfig(fit_phase_plane=True), False).fit_phase_plane is True
    # a kind that is set wins over what the data look like; auto needs the data
    assert resolve_sample(AlignConfig(sample="isolated")).sample == "isolated"
    with pytest.raises(ValueError, match="no projections"):
        resolve_sample(AlignConfig())


def test_fewer_angles_than_folds(samples):
    """Six angles and ``cross_folds`` 8 on a chip: one angle held out per fold."""
    import torch

    from hpc_adept.align import projection_matching

    sample = samples["extended"]
    options = AlignConfig(volume_shape=REGION, binning=(2, 1), max_iterations=2,
                          highpass_sigma_px=2.0, coarse_lowpass_px=4.0)
    picks = np.arange(0, 16, 3)[:6]
    result = projection_matching(torch.as_tensor(np.asarray(sample.measured)[picks]),
                                 sample.angles[picks], TILT, options)
    assert result.shifts_px.shape == (6, 2) and np.isfinite(result.shifts_px).all()


def test_config_checks_the_new_keys():
    cfg = load_config(None, ["align.sample=extended", "align.fit_phase_plane=auto",
                             "align.flow_eigen_floor=0.2"])
    assert (cfg.align.sample, cfg.align.fit_phase_plane, cfg.align.flow_eigen_floor) == \
        ("extended", "auto", 0.2)
    assert load_config(None, ["align.coarse_flow_eigen_floor=0.25"]).align \
        .coarse_flow_eigen_floor == 0.25
    for bad, key in (("align.sample=chip", "align.sample"),
                     ("align.fit_phase_plane=maybe", "align.fit_phase_plane"),
                     ("align.flow_eigen_floor=1.5", "align.flow_eigen_floor"),
                     ("align.coarse_flow_eigen_floor=-0.1", "align.coarse_flow_eigen_floor"),
                     ("align.coarse_flow_eigen_floor=high", "align.coarse_flow_eigen_floor"),
                     ("align.lateral_margin=-2", "align.lateral_margin")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])
    with pytest.raises(ConfigError, match="align.fit_phase_plane"):
        AlignConfig(fit_phase_plane="yes").check()


@pytest.mark.parametrize("kind", ["extended", "isolated"])
def test_the_stage_plans_the_method_the_data_need(samples, kind, tmp_path):
    """The plan (and so the memory guard) widens the volume for a chip only, and the
    options passed to projection matching carry the kind the plan found."""
    from hpc_adept.stages.align import align_options, plan_align

    sample = samples[kind]
    run = tmp_path / "run"
    write_projections(run / "projections.h5", ProjectionSet(
        np.asarray(sample.measured, np.float32), sample.angles, TILT, 2.72e-8))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "output": {"dir": str(run)}, "recon": {"volume_shape": list(REGION)},
        "align": {"binning": [2, 1]}}))
    cfg = load_config(tmp_path / "c.yaml")
    plan = plan_align(cfg)
    assert plan.extended == (kind == "extended")
    assert (plan.widened_shape != REGION) == (kind == "extended")
    assert plan.volumes == (cfg.align.cross_folds if kind == "extended" else 1)
    assert align_options(cfg, plan).sample == kind
    off = plan_align(load_config(tmp_path / "c.yaml", ["align.enabled=false"]))
    assert not off.extended


def _align_the_chip_crop(directory: Path, n_ranks: int = 1, **align
                         ) -> tuple[Sample, dict, str]:
    """``adept align`` on a 24 x 32 x 32 crop of the simulated chip at (30, 20) um (32
    angles, 2 px RMS shifts, 2 % noise, +-0.5 rad offsets and ramps), the small window's
    filters and ``align`` besides; returns the sample, ``align_history.json`` and stderr."""
    import json

    from .conftest import adept

    region = (24, 32, 32)
    sample = extended_sample(region, 32, 2, corner_um=(30.0, 20.0), plane_rad=0.5)
    run = directory / "run"
    write_projections(run / "projections.h5", ProjectionSet(
        np.asarray(sample.measured, np.float32), sample.angles, TILT, 2.72e-8))
    (directory / "c.yaml").write_text(yaml.safe_dump({
        "output": {"dir": "run"}, "recon": {"volume_shape": list(region)},
        "align": {"binning": [2, 1], "highpass_sigma_px": 3.0, "coarse_lowpass_px": 4.0,
                  **align},
        "runtime": {"device": "cpu"}}))
    result = adept("align", "-c", "c.yaml", cwd=directory, n_ranks=n_ranks)
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((run / "align_history.json").read_text())
    return sample, history, result.stderr


@pytest.mark.slow
def test_adept_align_on_a_chip_runs_the_extended_method(tmp_path):
    """As a user runs it: ``adept align`` with ``align.sample`` left at ``auto`` on a
    region of a chip (the test crop of tests/test_align_extended.py: 24 x 32 x 32, 32
    angles, 2 px RMS shifts, 2 % noise, +-0.5 rad offsets and ramps) finds the chip, widens
    the volume, fits the planes and recovers the shifts to < 0.15 px RMS."""
    from .extended_sample import shift_error_px

    sample, history, stderr = _align_the_chip_crop(tmp_path)
    assert "extended sample (align.sample: auto)" in stderr
    assert history["options"]["sample"] == "extended"
    assert history["options"]["fit_phase_plane"] is True
    assert history["widened_shape"][1] > 32  # the region's width
    assert read_projections(tmp_path / "run" / "aligned.h5").sample_kind == "extended"
    found = np.asarray(history["shifts_px"])
    before = shift_error_px(np.zeros_like(sample.shifts), sample.shifts, sample.angles)
    assert before > 1.5
    assert shift_error_px(found, sample.shifts, sample.angles) < 0.15


def _stored(tmp_path, sample, decided: str | None):
    path = tmp_path / "aligned.h5"
    write_projections(path, ProjectionSet(np.asarray(sample.measured, np.float32),
                                          sample.angles, TILT, 2.72e-8, sample_kind=decided))
    return path


@pytest.mark.parametrize("decided", ["extended", "isolated"])
def test_recon_auto_follows_the_kind_align_stored(samples, decided, tmp_path, caplog):
    """``adept align`` looked at the whole window and stores its decision in
    ``aligned.h5``; ``recon.sample: auto`` follows it (in the plan and in the run) even
    where the border of these projections says otherwise, an explicit setting wins, and
    without a stored decision the border decides."""
    from hpc_adept.io.runfiles import read_sample_kind
    from hpc_adept.stages.recon import planned_region, recon_region

    other = "isolated" if decided == "extended" else "extended"
    path = _stored(tmp_path, samples[other], decided)  # data that look like the other kind
    assert read_sample_kind(path) == decided
    ps = read_projections(path)
    assert ps.sample_kind == decided

    def config(sample: str):
        return load_config(None, [f"recon.volume_shape={list(REGION)}",
                                  f"recon.sample={sample}"])

    with caplog.at_level(logging.INFO, logger="hpc_adept.stages.recon"):
        for plan in (planned_region(config("auto"), path), recon_region(config("auto"), ps)):
            assert plan.extended == (decided == "extended")
    assert any(f"looks {other}, adept align decided {decided}" in r.getMessage()
               for r in caplog.records)
    assert recon_region(config(other), ps).extended == (other == "extended")
    undecided = read_projections(_stored(tmp_path, samples[other], None))
    assert undecided.sample_kind is None
    assert recon_region(config("auto"), undecided).extended == (other == "extended")


def test_a_bad_stored_kind_is_a_clear_error(samples, tmp_path):
    import h5py

    from hpc_adept.errors import DataError
    from hpc_adept.io.runfiles import read_sample_kind

    path = _stored(tmp_path, samples["extended"], "extended")
    for stored, read_back in ((np.bytes_(b"isolated"), "isolated"),
                              (np.bytes_(b"extended   "), "extended")):  # space-padded
        with h5py.File(path, "r+") as f:
            f.attrs["sample"] = stored
        assert read_sample_kind(path) == read_projections(path).sample_kind == read_back
    for bad in ("wide", np.array([b"extended", b"isolated"]), 3.0):
        with h5py.File(path, "r+") as f:
            f.attrs["sample"] = bad
        for read in (read_projections, read_sample_kind):
            with pytest.raises(DataError, match="sample.*expected one of"):
                read(path)
    with pytest.raises(ValueError, match="sample_kind must be one of"):
        ProjectionSet(np.zeros((2, 4, 4), np.float32), np.zeros(2), TILT, 1e-8, sample_kind="wide")


@pytest.mark.slow
def test_adept_align_with_the_chip_lef_writes_where_its_layers_sit(tmp_path, ic_files):
    """``adept align`` given the chip's LEF (``align.layer_lef``) fits the stack on its last
    level, aligns the crop and writes ``stack_offset_um``: the shifts' own z translation
    (0.38 voxels of 27.2 nm here) within 0.1 voxel, which the shifts written keep."""
    from hpc_adept.align import fit_rigid_drift

    from .extended_sample import shift_error_px

    sample, history, _ = _align_the_chip_crop(tmp_path, layer_lef=str(ic_files[1]))
    height_um = fit_rigid_drift(sample.shifts, sample.angles, TILT)[2] * 2.72e-2
    assert abs(history["stack_offset_um"] - height_um) < 0.1 * 2.72e-2, history["stack_offset_um"]
    # the written shifts keep that height (align.place_on_stack, the default)
    assert history["placed_on_stack"] is True
    kept = fit_rigid_drift(np.asarray(history["shifts_px"]), sample.angles, TILT)
    assert kept[2] * 2.72e-2 == pytest.approx(history["stack_offset_um"], abs=1e-9)
    assert len(history["layer_interfaces_um"]) > 0
    assert shift_error_px(np.asarray(history["shifts_px"]), sample.shifts, sample.angles) < 0.15


@pytest.mark.mpi
@pytest.mark.slow
def test_the_stack_level_gives_the_same_shifts_on_three_ranks(tmp_path, ic_files):
    """The layered last level (its least-squares fit of the layers through the distributed
    operator, the drift kept in z, the height at its end) on 1 and 3 ranks, 32 angles
    shared 11 / 11 / 10."""
    short = dict(max_iterations=6, smooth_check_px=0.0)
    one, three = (_align_the_chip_crop(tmp_path / f"ranks{n}", n, layer_lef=str(ic_files[1]),
                                       **short)[1] for n in (1, 3))
    assert [one["n_ranks"], three["n_ranks"]] == [1, 3]
    shifts = np.asarray(one["shifts_px"])
    assert one["stack_offset_um"] is not None, "the stack's level did not run"
    assert np.abs(shifts).max() > 0.5 and abs(one["stack_offset_um"]) > 0.0  # it moved
    # the alignment's operator adds the per-angle volumes exactly: the same bits
    np.testing.assert_array_equal(three["shifts_px"], shifts)
    assert three["stack_offset_um"] == one["stack_offset_um"]
    assert three["layer_interfaces_um"] == one["layer_interfaces_um"]
