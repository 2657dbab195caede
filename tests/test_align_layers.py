"""The chip's layer stack as the alignment's volume prior (hpc_adept.align.layers)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from hpc_adept.align.layers import LayeredOperator, layer_profiles, lef_interfaces_um
from hpc_adept.config import AlignConfig, Config
from hpc_adept.errors import ConfigError, DataError
from hpc_adept.lamino import Geometry, LaminoOperator
from hpc_adept.linop import dottest
from tests.test_phantom import SMALL_LEF as TWO_METALS_LEF  # m1 0.2-0.3 um, m2 0.5-0.7


def test_profiles_hold_each_slice_in_its_layers():
    """Interfaces at 2.5 and 6 voxels of 8 slices: three layers; a slice cut by an
    interface is shared by the two layers in proportion; binned by 2 the same heights."""
    full = layer_profiles([-1.0, 2.5, 6.0, 9.0], 8)
    np.testing.assert_allclose(full, [[1, 1, 0.5, 0, 0, 0, 0, 0],
                                      [0, 0, 0.5, 1, 1, 1, 0, 0],
                                      [0, 0, 0, 0, 0, 0, 1, 1]])
    binned = layer_profiles([2.5, 6.0], 8, 4)
    np.testing.assert_allclose(binned, [[1, 0.25, 0, 0], [0, 0.75, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(binned.sum(axis=0), 1.0)
    odd = layer_profiles([4.5], 9, 5)  # 9 slices binned by 2, rounded up: heights scaled
    np.testing.assert_allclose(odd, [[1, 1, 0.5, 0, 0], [0, 0, 0.5, 1, 1]])
    assert layer_profiles([-2.0, 12.0], 8).shape == (1, 8)  # none inside: one layer
    for bad in ([3.0, 3.0], [4.0, 2.0], [np.nan]):
        with pytest.raises(ValueError, match="strictly increasing"):
            layer_profiles(bad, 8)


def _layered(shape=(8, 12, 14)):
    geometry = Geometry(np.linspace(0.0, 330.0, 12), 61.0, shape, (14, 16))
    op = LaminoOperator(geometry, kernel="torch")
    profiles = torch.from_numpy(layer_profiles([2.5, 6.0], shape[0]))
    support = torch.ones(shape, dtype=torch.float64)
    support[:, :, 0] = 0.0  # a column outside the support
    return LayeredOperator(op, profiles, support), op


def test_layered_operator_adjoint_and_round_trip():
    """The dot-product test in float64; a stack's volume gives back its layer maps; a
    volume of voxels is replaced by its nearest stack (a fixed point after one pass)."""
    layered, _ = _layered()
    layered.domain_shape = (3, 12, 14)
    layered.range_shape = (12, 14, 16)
    dottest(layered, rtol=1e-10)
    gen = torch.Generator().manual_seed(1)
    maps = torch.randn(3, 12, 14, generator=gen, dtype=torch.float64)
    maps[:, :, 0] = 0.0
    np.testing.assert_allclose(layered.layers_of(layered.volume(maps)), maps, atol=1e-12)
    voxels = torch.randn(8, 12, 14, generator=gen, dtype=torch.float64)
    once = layered.volume(layered.layers_of(voxels))
    np.testing.assert_allclose(layered.volume(layered.layers_of(once)), once, atol=1e-12)
    assert not layered.layer_support()[:, :, 0].any() and layered.layer_support()[:, :, 1:].all()
    # two layers inside one slice have proportional profiles: still a least-squares split
    thin = LayeredOperator(layered.op, torch.from_numpy(layer_profiles([2.2, 2.6, 6.0], 8)),
                           layered.mask)
    once = thin.volume(thin.layers_of(voxels))
    np.testing.assert_allclose(thin.volume(thin.layers_of(once)), once, atol=1e-10)


def test_layer_fit_explains_data_of_a_stack():
    """CGLS on the layer maps fits projections of a stacked volume (the matching's own
    least squares, through the layered operator)."""
    from hpc_adept.align.matching import least_squares

    layered, op = _layered()
    gen = torch.Generator().manual_seed(2)
    maps = torch.randn(3, 12, 14, generator=gen, dtype=torch.float64) * layered.layer_support()
    data = layered.forward(maps)
    start = torch.zeros_like(maps)
    fitted, reprojection = least_squares(layered, data, start, layered.layer_support(), 400)
    assert float((reprojection - data).norm() / data.norm()) < 1e-4
    np.testing.assert_allclose(layered.volume(fitted).shape, (8, 12, 14))
    assert op.forward(layered.volume(fitted)).shape == data.shape


def test_lef_interfaces(tmp_path):
    """A LEF's routing layers give their bottoms and tops (the cut layers fill the gaps),
    measured from the volume's bottom face; a missing or broken file is a DataError."""
    lef = tmp_path / "two.lef"
    lef.write_text(TWO_METALS_LEF)
    assert lef_interfaces_um(lef) == pytest.approx((0.2, 0.3, 0.5, 0.7))
    assert lef_interfaces_um(lef, base_um=0.1) == pytest.approx((0.1, 0.2, 0.4, 0.6))
    with pytest.raises(DataError, match="not a file"):
        lef_interfaces_um(tmp_path / "missing.lef")
    broken = tmp_path / "broken.lef"
    broken.write_text("LAYER m1\n  TYPE ROUTING ;\n")
    with pytest.raises(DataError):
        lef_interfaces_um(broken)


def test_layer_config_and_stage_resolution(tmp_path):
    """Interfaces given win; ``none`` is off; ``auto`` (the default) takes the simulate
    section's LEF only for a dataset that ``adept simulate`` made of a layout; bad values
    are config errors."""
    import h5py

    from hpc_adept.stages.align import layer_interfaces

    def layer_interfaces_of(config):
        return layer_interfaces(config, config.simulate.volume_shape[0])

    lef = tmp_path / "two.lef"
    lef.write_text(TWO_METALS_LEF)
    data = tmp_path / "data"
    data.mkdir()
    base = Config()
    cfg = dataclasses.replace(
        base, data=dataclasses.replace(base.data, path=str(data)),
        simulate=dataclasses.replace(base.simulate, layout_lef=str(lef)))

    def with_align(**kw):
        return dataclasses.replace(cfg, align=dataclasses.replace(cfg.align, **kw))

    assert layer_interfaces_of(with_align(layer_interfaces_um=(0.1, 0.4))) == (0.1, 0.4)
    assert layer_interfaces_of(with_align(layer_lef="none")) == ()
    assert layer_interfaces_of(with_align(layer_lef=str(lef))) == \
        pytest.approx((0.2, 0.3, 0.5, 0.7))
    assert cfg.align.layer_lef == "auto"
    auto = cfg
    assert layer_interfaces_of(auto) == ()  # no simulated ground truth there
    with h5py.File(data / "ground_truth.h5", "w") as f:
        f.attrs["phantom"] = "procedural"
    assert layer_interfaces_of(auto) == ()
    with h5py.File(data / "ground_truth.h5", "w") as f:
        f.attrs["phantom"] = np.array(["layout", "layout"], dtype=object)
    assert layer_interfaces_of(auto) == ()  # not one name
    with h5py.File(data / "ground_truth.h5", "w") as f:
        f.attrs["phantom"] = np.bytes_(b"layout")
    assert layer_interfaces_of(auto) == pytest.approx((0.2, 0.3, 0.5, 0.7))
    assert layer_interfaces_of(with_align(layer_lef="none")) == ()
    # a volume 10 slices lower than the simulated slab: its bottom face 5 voxels up
    lower = layer_interfaces(auto, cfg.simulate.volume_shape[0] - 10)
    step_um = 5 * cfg.simulate.voxel_size_m * 1e6
    assert lower == pytest.approx(tuple(h - step_um for h in (0.2, 0.3, 0.5, 0.7)))
    for bad, key in (({"layer_interfaces_um": (0.3, 0.2)}, "layer_interfaces_um"),
                     ({"layer_interfaces_um": (0.1, float("inf"))}, "layer_interfaces_um"),
                     ({"layer_base_um": float("nan")}, "layer_base_um"),
                     ({"layer_lef": " "}, "layer_lef"),
                     ({"layer_momentum": 1.0}, "layer_momentum")):
        with pytest.raises(ConfigError, match=key):
            AlignConfig(**bad).check()


def test_only_the_joint_last_level_fits_a_stack(caplog):
    """Given a stack, the joint last level of a widened volume fits layer maps (its volume
    is a stack after every fit); the fold level before it keeps voxels."""
    from hpc_adept.align import fit_rigid_drift, projection_matching
    from hpc_adept.align.matching import (
        LocalLamino,
        _fit,
        _Frame,
        _make_level,
        _resolved,
        _with_voxels,
    )
    from tests.extended_sample import METAL_SLICE, TILT, extended_sample

    sample = extended_sample((12, 16, 16), 16, 4, corner_um=(40.0, 28.0),
                             bottom_slice=METAL_SLICE)
    options = _resolved(AlignConfig(binning=(2, 1), max_iterations=3, highpass_sigma_px=2.0,
                                    coarse_lowpass_px=4.0, volume_shape=(12, 16, 16),
                                    sample="extended"), sample.measured)
    frame = _Frame.of(sample.measured, options, float(np.abs(sample.shifts).max()))
    edges = (3.5, 6.0, 9.25)
    coarse = _make_level(LocalLamino(), options, 0, 2, frame, TILT, sample.angles, edges)
    joint = _make_level(LocalLamino(), options, 1, 1, frame, TILT, sample.angles, edges)
    assert coarse.layers is None and joint.layers.shape == (4, 12)
    # the stack's fit has its own momentum; the smooth check's voxels get the folds' again
    assert options.layer_momentum != options.momentum
    assert coarse.momentum == options.momentum and joint.momentum == options.layer_momentum
    assert _with_voxels(joint, options).momentum == options.momentum
    assert _with_voxels(joint, options).layers is None
    # without the coverage weights the joint level takes plain steps, stack or voxels
    plain = dataclasses.replace(options, coverage_power=0.0)
    joint = _make_level(LocalLamino(), plain, 1, 1, frame, TILT, sample.angles, edges)
    assert joint.layers is not None and joint.momentum == 0.0
    assert _with_voxels(joint, plain).momentum == 0.0
    data = frame.aligned(np.zeros((16, 2)), 1)
    fold = joint.folds[0]
    volume = fold.op.fbp(data) * joint.support
    fitted, reprojection = _fit(joint, fold.op, data, volume, 3, joint.trust, None)
    layered = LayeredOperator(fold.op, joint.layers.to(fitted.dtype),
                              joint.support.to(fitted.dtype))
    torch.testing.assert_close(layered.volume(layered.layers_of(fitted)), fitted)
    torch.testing.assert_close(reprojection, fold.op.forward(fitted), rtol=1e-4, atol=1e-5)
    with caplog.at_level(logging.INFO, logger="hpc_adept"):
        result = projection_matching(sample.measured, sample.angles, TILT, options,
                                     layer_edges_px=edges)
    assert np.all(np.isfinite(result.shifts_px))
    assert result.stack_offset_px is not None  # the stack's level measured the height
    assert result.placed_on_stack
    assert fit_rigid_drift(result.shifts_px, sample.angles, TILT)[2] == pytest.approx(
        result.stack_offset_px, abs=1e-6)  # placed on the stack (the default)
    stacks = [r.getMessage() for r in caplog.records if "stack of" in r.getMessage()]
    assert len(stacks) == 1 and "binning 1 fits a stack of 4 layers" in stacks[0], stacks


@pytest.mark.slow
def test_a_stack_takes_back_the_smooth_pattern_that_voxels_keep(ic_files, caplog):
    """The crop of one-way wiring where the voxel volume keeps a 0.5 px smooth pattern
    (tests/test_align_extended.py, the smooth check's test: most of it stays after 20
    iterations): with the layout's stack the joint last level takes it back (the check
    holds the stack's height where the estimate has it)."""
    from hpc_adept.align import matching
    from hpc_adept.align.drift import remove_rigid_drift
    from tests.extended_sample import TILT, VOXEL_M, extended_sample
    from tests.test_align_extended import OPTIONS, REGION

    sample = extended_sample(REGION, 32, 14, corner_um=(50.0, 25.0), plane_rad=0.5)
    options = matching._resolved(
        dataclasses.replace(OPTIONS, max_iterations=20, smooth_check_px=0.5), sample.measured)
    truth = remove_rigid_drift(sample.shifts, sample.angles, TILT)[0]
    frame = matching._Frame.of(sample.measured, options, float(np.abs(sample.shifts).max()))
    # as a stack's level leaves it: the height fitted (here the truth's, drift free)
    track = matching._Track(truth.copy(), sample.angles, TILT,
                            torch.zeros(32, 3, dtype=torch.float64), np.zeros((32, 2)),
                            start=truth, reach_px=options.coarse_search_px,
                            drift_axes=(0, 1))
    edges = tuple(h * 1e-6 / VOXEL_M for h in lef_interfaces_um(ic_files[1]))
    levels = [matching._make_level(matching.LocalLamino(), options, 1, 1, frame, TILT,
                                   sample.angles, stack) for stack in (None, edges)]
    with caplog.at_level(logging.WARNING, logger="hpc_adept"):
        checks = [matching._smooth_check(options, level, frame, track) for level in levels]
    voxels, layers = checks
    assert not voxels.determined and voxels.smooth_distance > 0.65, voxels
    assert layers.determined and layers.iterations < voxels.iterations, layers
    # the estimate had the stack's height: the warning says that voxels were rerun
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "with a volume of voxels" in warned[0], warned


def test_a_stack_needs_a_joint_widened_level(caplog):
    """The plan keeps the stack only where a joint last level of a widened volume will fit
    it, and warns where one was set for nothing; a stack with no interface inside the
    volume warns too."""
    from hpc_adept.align.matching import _layer_profiles
    from hpc_adept.stages.align import _joint_level

    stack = AlignConfig(layer_interfaces_um=(0.4, 0.5))
    wide, region = (24, 80, 80), (24, 32, 32)
    with caplog.at_level(logging.WARNING, logger="hpc_adept"):
        assert _joint_level(stack, wide, region)
        assert not caplog.records
        assert not _joint_level(dataclasses.replace(stack, joint_last_level=False), wide,
                                region)
        assert not _joint_level(dataclasses.replace(stack, binning=(1,)), wide, region)
        assert not _joint_level(stack, region, region)
        assert len([r for r in caplog.records if "not used" in r.getMessage()]) == 3
        caplog.clear()
        one = _layer_profiles((50.0,), AlignConfig(volume_shape=region), 1, 24,
                              torch.zeros(1))
        assert one.shape == (1, 24) and "no layer interface" in caplog.text


def test_the_stage_plans_the_stack_and_converts_it_to_voxels(tmp_path, caplog):
    """``adept align``'s plan keeps the interfaces given for an extended sample (a widened
    joint last level) and drops them, with a warning, where no such level runs; the run
    hands them to projection matching in voxels of the projections' pixel."""
    import yaml

    from hpc_adept.config import load_config
    from hpc_adept.io import ProjectionSet, write_projections
    from hpc_adept.parallel.context import SERIAL
    from hpc_adept.stages.align import _layer_edges_px, plan_align
    from tests.extended_sample import TILT, extended_sample

    region = (12, 16, 16)
    sample = extended_sample(region, 16, 3, noise=0.02, shift_sigma_px=1.0, plane_rad=0.5)
    run = tmp_path / "run"
    ps = ProjectionSet(np.asarray(sample.measured, np.float32), sample.angles, TILT, 2.72e-8)
    write_projections(run / "projections.h5", ps)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "output": {"dir": str(run)}, "recon": {"volume_shape": list(region)},
        "align": {"binning": [2, 1], "sample": "extended",
                  "layer_interfaces_um": [0.1088, 0.2176]}}))
    plan = plan_align(load_config(tmp_path / "c.yaml"))
    assert plan.layer_interfaces_um == pytest.approx((0.1088, 0.2176))
    np.testing.assert_allclose(_layer_edges_px(plan, SERIAL, ps), (4.0, 8.0))
    with caplog.at_level(logging.WARNING, logger="hpc_adept"):
        alone = plan_align(load_config(tmp_path / "c.yaml", ["align.binning=[1]"]))
    assert alone.layer_interfaces_um == () and "not used" in caplog.text


@pytest.mark.slow
def test_a_stack_measures_where_the_data_layers_sit(ic_files):
    """The stack is fixed in height, so the layered level observes the z translation that
    voxels cannot: the data's height against the stack comes back (the shifts' own z
    translation, up on one crop and down on another), and the returned shifts keep it
    (``align.place_on_stack``, the default: the data shifted by them have the truth's
    height), are otherwise drift free, and aligned."""
    from hpc_adept.align import projection_matching
    from hpc_adept.align.drift import fit_rigid_drift
    from tests.extended_sample import TILT, VOXEL_M, extended_sample, shift_error_px
    from tests.test_align_extended import OPTIONS, REGION

    edges = tuple(h * 1e-6 / VOXEL_M for h in lef_interfaces_um(ic_files[1]))
    for seed, corner in ((2, (30.0, 20.0)), (8, (55.0, 55.0))):
        sample = extended_sample(REGION, 32, seed, corner_um=corner, plane_rad=0.5)
        height = fit_rigid_drift(sample.shifts, sample.angles, TILT)[2]  # 0.38, -0.64
        result = projection_matching(sample.measured, sample.angles, TILT, OPTIONS,
                                     layer_edges_px=edges)
        assert abs(result.stack_offset_px - height) < 0.1, (seed, result.stack_offset_px,
                                                            height)
        np.testing.assert_allclose(fit_rigid_drift(result.shifts_px, sample.angles, TILT),
                                   [0.0, 0.0, result.stack_offset_px], atol=1e-9)
        assert shift_error_px(result.shifts_px, sample.shifts, sample.angles) < 0.15


def test_the_height_a_stack_kept_leaves_the_result(caplog):
    """The z translation a stack's level kept is returned as the stack's offset and removed
    from the shifts, which stay within the searched range of their start (the bound wins);
    an offset of more than half that range warns that the stack's height is off, and is
    then not kept even where ``place`` asks for it (clipping would keep part of it)."""
    from hpc_adept.align import fit_rigid_drift, rigid_drift_basis
    from hpc_adept.align.matching import _Track

    angles = np.arange(16) * 22.5
    basis = rigid_drift_basis(angles, 61.0)
    rng = np.random.default_rng(2)
    for height, reach, warned in ((0.4, 3.0, False), (1.5, 1.0, True)):
        lateral = rng.uniform(-0.5, 0.5, (16, 2))
        for place in (False, True):
            track = _Track(lateral + basis @ np.array([0.0, 0.0, height]), angles, 61.0,
                           torch.zeros(16, 3), np.zeros((16, 2)), reach_px=reach,
                           drift_axes=(0, 1))
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="hpc_adept"):
                offset, placed = track.end_stack_level(place)
            assert offset == pytest.approx(height + fit_rigid_drift(lateral, angles, 61.0)[2])
            assert placed == (place and not warned)
            assert track.drift_axes == (0, 1, 2) and track.end_stack_level(place) == (None,
                                                                                    False)
            assert np.abs(track.shifts).max() <= reach + 1e-12
            assert ("likely off" in caplog.text) == warned, caplog.text
            assert ("not placed on the stack" in caplog.text) == (warned and place)
            if not warned and not place:  # nothing clipped: drift free
                assert np.abs(fit_rigid_drift(track.shifts, angles, 61.0)).max() < 1e-9


def test_placed_on_the_stack_the_shifts_keep_its_height(monkeypatch):
    """With ``align.place_on_stack`` the z translation a stack's level measured stays in the
    shifts (the aligned data's layers sit at the stack's heights) while their x and y
    translations are removed; the offset returned is the same as without it, and
    :func:`projection_matching` passes the option on (the default places)."""
    from hpc_adept.align import fit_rigid_drift, matching, projection_matching, rigid_drift_basis
    from hpc_adept.align.matching import _Track

    angles = np.arange(16) * 22.5
    basis = rigid_drift_basis(angles, 61.0)
    lateral = np.random.default_rng(3).uniform(-0.5, 0.5, (16, 2))
    shifts = lateral + basis @ np.array([0.3, -0.2, 0.4])

    def track() -> _Track:
        return _Track(shifts.copy(), angles, 61.0, torch.zeros(16, 3), np.zeros((16, 2)),
                      reach_px=3.0, drift_axes=(0, 1))

    placed, free = track(), track()
    offset, was_placed = placed.end_stack_level(place=True)
    assert was_placed and free.end_stack_level() == (pytest.approx(offset), False)
    height = fit_rigid_drift(shifts, angles, 61.0)[2]
    np.testing.assert_allclose(fit_rigid_drift(placed.shifts, angles, 61.0),
                               [0.0, 0.0, height], atol=1e-9)
    np.testing.assert_allclose(placed.shifts - free.shifts, basis[:, :, 2] * height,
                               atol=1e-9)
    assert AlignConfig().place_on_stack
    asked = []
    monkeypatch.setattr(matching._Track, "end_stack_level",
                        lambda self, place=False: asked.append(place) or (None, False))
    measured = torch.zeros(16, 24, 24, dtype=torch.float64)
    for place in (True, False):
        options = AlignConfig(binning=(1,), max_iterations=1, volume_shape=(8, 16, 16),
                              sample="isolated", place_on_stack=place)
        projection_matching(measured, angles, 61.0, options)
    assert asked == [True, False]
