"""Projection matching on a region inside an extended chip (issue 18): the widened volume,
the ray-trust weights, the blind phase-plane fit, the held-out folds, the weights of the
pixels that a shift fills without data, and the joint last level.

The must-show of the issue (known shifts of 2 px RMS of a region inside a chip, with 2 %
noise and per-projection offsets and ramps up to +-0.5 rad, recovered to < 0.15 px RMS) is
reached where the coarse level catches every angle: on 24 x 32 x 32 regions 0.02-0.10 px on
seven of 14 crops (``profiling/align_extended.py``, docs/extended_samples.md); on the other
seven (nearly empty regions, one-way wiring) the method ends 0.72-2.8 px off (with the
default eigenvalue floor of 0.1; 0.75-3.8 px without). The tests below
check one crop of each kind: (30, 20) um, seed 2, where the last level's settings
(``coverage_power`` 4, momentum, all iterations) were chosen, and (42, 48) um, seed 11, run
once after they were fixed (the only out-of-sample check); (62, 44) um, seed 13, also new
then, is an expected failure on the layout. On the procedural fallback (no layout) all three
pass (checked in a clone without ../shared).
The coarse settings (``coarse_lowpass_px`` 4, ``cross_folds`` 8) came from seed 1 at
(40, 28) um.

Why the coarse level stops short (measured, ``profiling/align_extended.py --diagnose``;
docs/extended_samples.md, "Alignment"): the widened volume has far more unknowns than the
32 projections have pixels, so one volume fitted to all angles, started at zero, stops
1 px from the shifts its residual prefers
(:func:`test_joint_fit_from_zero_stops_short_of_the_shifts_it_prefers`); held-out folds
make the shifts identifiable, but a volume fitted to the other angles predicts a held-out
projection only to ~17 % of its high-passed signal (the outside material is seen by few
angles), and what they leave is a smooth pattern over the angles that the outside material
follows. The last level (one volume, coverage-weighted shift updates, momentum) pulls such
a pattern in when it is a few tenths of a pixel, not when it is more than a pixel.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from hpc_adept.align import projection_matching, remove_rigid_drift
from hpc_adept.align.matching import least_squares
from hpc_adept.align.plane import (
    fit_planes,
    orthonormal_planes,
    plane_basis,
    plane_images,
    remove_planes,
)
from hpc_adept.align.support import level_margin_px, ray_trust
from hpc_adept.config import AlignConfig, load_config
from hpc_adept.errors import ConfigError
from hpc_adept.lamino import Geometry, LaminoOperator
from hpc_adept.lamino.region import lateral_margin_px

from .conftest import IC_DEF, IC_LEF
from .extended_sample import (
    METAL_SLICE,
    TILT,
    extended_sample,
    shift_error,
    shift_error_px,
)

REGION = (24, 32, 32)
# small windows (46 x 48 px): a high-pass and taper of 3 px leave them their structure, and
# the coarse estimate's low-pass of 4 px (2 px at binning 2) its coarse structure (the default
# 8 px blurs a 23 x 24 px level into a few blobs: two angles were caught 5 px off)
OPTIONS = AlignConfig(binning=(2, 1), max_iterations=50, highpass_sigma_px=3.0,
                      coarse_lowpass_px=4.0, volume_shape=REGION, sample="extended",
                      smooth_check_px=0.0)  # tested on its own below
# the region-only method with the settings it had
OLD = dict(lateral_margin=0, fit_phase_plane=False, momentum=0.0, coarse_lowpass_px=8.0)


def test_plane_fit_recovers_offsets_and_ramps():
    rng = np.random.default_rng(0)
    truth = torch.from_numpy(rng.uniform(-0.5, 0.5, (5, 3)) / np.array([1.0, 12.0, 12.0]))
    for factor in (1, 2):
        basis = plane_basis((12, 13), factor, torch.zeros((), dtype=torch.float64))
        images = plane_images(truth, basis)
        weights = torch.from_numpy(rng.random((12, 13)))
        torch.testing.assert_close(fit_planes(images, weights, basis), truth)
        # the projector removes exactly the planes and is idempotent and self-adjoint
        q = orthonormal_planes(basis)
        noise = torch.from_numpy(rng.standard_normal((5, 12, 13)))
        torch.testing.assert_close(remove_planes(images + noise, q), remove_planes(noise, q))
        other = torch.from_numpy(rng.standard_normal((5, 12, 13)))
        assert float((remove_planes(noise, q) * other).sum()) == \
            pytest.approx(float((noise * remove_planes(other, q)).sum()))
    # a binned plane keeps its coefficients (block means of a linear function)
    from hpc_adept.align import bin_images
    full = plane_images(truth, plane_basis((12, 12), 1, truth))
    torch.testing.assert_close(bin_images(full, 2),
                               plane_images(truth, plane_basis((6, 6), 2, truth)))


def test_margin_and_ray_trust():
    det = (46, 48)
    assert level_margin_px("auto", REGION, det, TILT, 1) == lateral_margin_px(REGION, det, TILT)
    assert level_margin_px(10, REGION, det, TILT, 4) == 3  # full-resolution voxels, rounded up
    # rays inside the widened slab for their whole length get 1; short ones 0
    for margin, full_inside in ((lateral_margin_px(REGION, det, TILT), True), (4, False)):
        vol = (REGION[0], REGION[1] + 2 * margin, REGION[2] + 2 * margin)
        op = LaminoOperator(Geometry(np.arange(8) * 45.0, TILT, vol, det))
        trust = ray_trust(op.forward(torch.ones(vol, dtype=torch.float64)), vol[0], TILT)
        assert float(trust.min()) >= 0.0 and float(trust.max()) == 1.0
        assert bool((trust == 1.0).all()) == full_inside


def test_measured_weights_follow_the_shifts():
    """Pixels that a shift fills with edge padding (no data) get weight 0, those a taper
    width inside the measured window 1; a binned level gets the block means."""
    from hpc_adept.align.matching import _Frame

    frame = _Frame.of(torch.zeros(2, 20, 24, dtype=torch.float64),
                      AlignConfig(binning=(2, 1), coarse_search_px=4.0))
    shifts = np.array([[0.0, 0.0], [3.0, -2.0]])
    w = frame.measured(shifts, 1, 2).numpy()
    assert w.shape == (2, 20, 24) and w.min() >= 0.0 and w.max() <= 1.0
    assert w[0, 0, :].max() == 0.0 and w[0, 2:-2, 2:-2].min() == 1.0  # the border itself
    # aligned[r] = measured[r + 3]: rows 16.. come from beyond the last row (19)
    assert w[1, 16:, :].max() == 0.0 and w[1, 2:14, 4:20].min() == 1.0
    # aligned[c] = measured[c - 2]: columns 0..2 come from before the first
    assert w[1, :, :3].max() == 0.0
    # the taper is 1 px of binning 2 = 2 full-resolution px: the block means of the above
    coarse = frame.measured(shifts, 2, 1).numpy()
    np.testing.assert_allclose(coarse, w.reshape(2, 10, 2, 12, 2).mean(axis=(2, 4)))


def test_blind_least_squares_ignores_planes():
    """With the plane projector, offsets and ramps added to the data leave the fit as is."""
    vol, det = (6, 20, 20), (14, 16)
    op = LaminoOperator(Geometry(np.arange(10) * 36.0, TILT, vol, det))
    data = op.forward(torch.from_numpy(np.random.default_rng(1).random(vol)))
    basis = plane_basis(det, 1, data)
    q = orthonormal_planes(basis)
    planes = plane_images(torch.from_numpy(np.random.default_rng(2).uniform(-0.3, 0.3, (10, 3))
                                           / np.array([1.0, 7.0, 8.0])), basis)
    start = torch.zeros(vol, dtype=torch.float64)
    support = torch.ones(vol, dtype=torch.bool)

    def blind(x):
        return remove_planes(x, q)

    a, _ = least_squares(op, data, start, support, 5, blind=blind)
    b, _ = least_squares(op, data + planes, start, support, 5, blind=blind)
    torch.testing.assert_close(a, b)


def test_angular_coverage_weights_what_every_angle_sees():
    """Pixels whose rays cross mostly voxels that every angle sees get nearly 1; towards
    the window's edge (material that fewer angles see) less; the power sharpens it."""
    from hpc_adept.align.support import angular_coverage

    det = (30, 32)
    margin = lateral_margin_px((12, 16, 16), det, TILT)
    vol = (12, 16 + 2 * margin, 16 + 2 * margin)
    op = LaminoOperator(Geometry(np.arange(16) * 22.5, TILT, vol, det))
    path = op.forward(torch.ones(vol, dtype=torch.float64))
    plain = angular_coverage(op, path, 1.0)
    sharp = angular_coverage(op, path, 4.0)
    assert plain.shape == path.shape
    assert float(plain.min()) >= 0.0 and float(plain.max()) <= 1.0
    centre = plain[:, det[0] // 2, det[1] // 2]
    corner = plain[:, 0, 0]
    # the centre's rays still cross some outside material at the slab's faces
    assert float(centre.min()) > 0.8 and float(corner.max()) < 0.3
    # the power listens more to the centre: the corner-to-centre ratio falls
    assert float((sharp[:, 0, 0] / sharp[:, det[0] // 2, det[1] // 2]).max()) < \
        float((corner / centre).min())


def test_joint_last_level_with_coverage_runs_all_its_iterations():
    """With ``coverage_power`` > 0 the joint last level of a widened volume has no tolerance
    stop (its steps along smooth patterns are small, not converged); with 0 a tolerance that
    any step meets stops it after one."""
    sample = extended_sample((12, 16, 16), 16, 4, corner_um=(40.0, 28.0),
                             bottom_slice=METAL_SLICE)
    base = AlignConfig(binning=(2, 1), max_iterations=4, highpass_sigma_px=2.0,
                       coarse_lowpass_px=4.0, volume_shape=(12, 16, 16),
                       sample="extended", tolerance_px=100.0)
    for power, expected in ((4.0, 4), (0.0, 1)):
        options = dataclasses.replace(base, coverage_power=power)
        result = projection_matching(sample.measured, sample.angles, TILT, options)
        assert sum(h["level"] == 1 for h in result.history) == expected, power
    with pytest.raises(ConfigError, match="align.coverage_power"):
        AlignConfig(coverage_power=-1.0).check()


def test_smooth_check_runs_after_the_joint_level_and_leaves_the_estimate(caplog):
    """``align.smooth_check_px`` reruns the joint last level of a widened volume once more
    (its record in the result) and returns the estimate from before it; 0 turns it off,
    and an isolated sample's method (no widened volume) has none."""
    import logging

    sample = extended_sample((12, 16, 16), 16, 4, corner_um=(40.0, 28.0),
                             bottom_slice=METAL_SLICE)
    base = AlignConfig(binning=(2, 1), max_iterations=3, highpass_sigma_px=2.0,
                       coarse_lowpass_px=4.0, volume_shape=(12, 16, 16), sample="extended")
    with caplog.at_level(logging.INFO, logger="hpc_adept"):
        checked = projection_matching(sample.measured, sample.angles, TILT, base)
    # the probe run is quiet: after the check's start only its one verdict line
    lines = [r for r in caplog.records if "projection matching" in r.getMessage()]
    verdicts = [r for r in lines if "smooth-pattern check" in r.getMessage()]
    assert len(verdicts) == 1 and verdicts[0] is lines[-1]
    assert sum("binning 1 ran its" in r.getMessage() for r in lines) == 1
    level = logging.INFO if checked.smooth_check.determined else logging.WARNING
    assert verdicts[0].levelno == level
    plain = projection_matching(sample.measured, sample.angles, TILT,
                                dataclasses.replace(base, smooth_check_px=0.0))
    np.testing.assert_array_equal(checked.shifts_px, plain.shifts_px)
    assert len(checked.history) == len(plain.history)
    assert plain.smooth_check is None
    check = checked.smooth_check
    assert check.pattern_px == pytest.approx(0.5)
    # the rerun stops early only where it took the pattern back
    assert check.iterations == 3 or (check.determined and 1 <= check.iterations < 3)
    assert check.harmonics == (2, 3)
    assert np.isfinite(check.along_pattern) and np.isfinite(check.other_px)
    isolated = projection_matching(sample.measured, sample.angles, TILT,
                                   dataclasses.replace(base, sample="isolated"))
    assert isolated.smooth_check is None
    for bad in ("-0.1", "4.5", ".nan"):
        with pytest.raises(ConfigError, match="align.smooth_check_px"):
            load_config(None, [f"align.smooth_check_px={bad}"])


def test_a_probe_level_stops_when_its_own_test_says_so():
    """``_run_level(until=...)`` (the smooth-pattern check's early stop) asks after each
    optical-flow step only, never after a cross-correlation round, and ends the level at the
    first yes with the shifts it was asked about."""
    from hpc_adept.align.matching import (
        LocalLamino,
        _Frame,
        _make_level,
        _resolved,
        _run_level,
        _Track,
    )

    sample = extended_sample((12, 16, 16), 16, 4, corner_um=(40.0, 28.0),
                             bottom_slice=METAL_SLICE)
    options = _resolved(AlignConfig(binning=(2, 1), max_iterations=6, coarse_rounds=2,
                                    highpass_sigma_px=2.0, coarse_lowpass_px=4.0,
                                    volume_shape=(12, 16, 16), sample="extended"),
                        sample.measured)
    frame = _Frame.of(sample.measured, options, 0.0)
    n = len(sample.angles)
    track = _Track(np.zeros((n, 2)), sample.angles, TILT,
                   torch.zeros(n, 3, dtype=torch.float64), np.zeros((n, 2)),
                   start=np.zeros((n, 2)), reach_px=options.coarse_search_px)
    coarse = _make_level(LocalLamino(), options, 0, 2, frame, TILT, sample.angles)
    assert coarse.rounds == 2
    asked = []
    _run_level(options, coarse, frame, track, None, quiet=True,
               until=lambda shifts: asked.append(shifts.copy()) is not None)  # never yes
    steps = [h["step"] for h in track.history]
    rounds = steps.count("xcorr")  # the second may stop where the held-out residual rose
    assert 1 <= rounds <= 2 and steps[:rounds] == ["xcorr"] * rounds
    assert len(asked) == steps.count("flow") >= 1
    joint = _make_level(LocalLamino(), options, 1, 1, frame, TILT, sample.angles)
    assert joint.full_run  # without the test it would run all 6 iterations
    before, asked = len(track.history), []
    _run_level(options, joint, frame, track, None, quiet=True,
               until=lambda shifts: asked.append(shifts.copy()) or len(asked) == 2)
    assert len(track.history) - before == 2
    np.testing.assert_array_equal(asked[-1], track.shifts)


def test_coarse_rounds_stop_where_the_residual_rises(monkeypatch):
    """With held-out folds the cross-correlation rounds stop at the first whose residual
    (of the shifts the previous round left) is no lower than the lowest so far and go back
    to that one's shifts; rounds whose residual keeps falling all run, and so do all rounds
    without folds (a fitted residual, no validation). The count returned is of the rounds
    recorded in the history (the optical flow's iterations number on from it)."""
    from hpc_adept.align import matching

    n = 8
    sample = extended_sample((12, 16, 16), n, 4, corner_um=(40.0, 28.0),
                             bottom_slice=METAL_SLICE)
    options = matching._resolved(AlignConfig(binning=(2,), max_iterations=1,
                                             coarse_rounds=6, volume_shape=(12, 16, 16),
                                             sample="extended"), sample.measured)
    frame = matching._Frame.of(sample.measured, options, 0.0)
    folds = matching._make_level(matching.LocalLamino(), options, 0, 2, frame, TILT,
                                 sample.angles)
    one_fold = dataclasses.replace(folds, folds=folds.folds[:1])
    assert len(folds.folds) > 1
    # level pixels, not a rigid drift (which the track removes)
    step = torch.as_tensor(np.random.default_rng(0).normal(0.0, 0.5, (n, 2)))
    for level, residuals, recorded, kept in (
            (folds, [5.0, 4.0, 3.0, 3.5, 1.0, 1.0], 3, 1),
            (folds, [5.0, 4.0, 4.0, 1.0, 1.0, 1.0], 2, 0),  # no lower is a stop too
            (folds, [5.0, 4.0, 3.0, 2.0, 1.0, 0.5], 6, 5),
            (one_fold, [5.0, 4.0, 3.0, 3.5, 4.0, 6.0], 6, 5)):
        monkeypatch.setattr(matching, "_level_model",
                            lambda *_, level=level: (None, None, level))
        measured = iter(residuals)
        monkeypatch.setattr(matching, "_shift_update", lambda *_, values=measured: (
            step, torch.full((n,), next(values), dtype=torch.float64)))
        track = matching._Track(np.zeros((n, 2)), sample.angles, TILT,
                                torch.zeros(n, 3, dtype=torch.float64), np.zeros((n, 2)))
        count = matching._coarse_rounds(options, level, frame, track, [None], None, True)
        assert count == recorded == len(track.history)
        assert [h["residual_rms"] for h in track.history] == residuals[:recorded]
        assert all(h["step"] == "xcorr" for h in track.history)
        assert [h["iteration"] for h in track.history] == list(range(recorded))
        np.testing.assert_array_equal(track.shifts, track.snapshots[kept])
        before = track.snapshots[kept - 1] if kept else np.zeros((n, 2))  # kept: it moved
        assert np.abs(track.snapshots[kept] - before).max() > 0.1
        if kept < recorded - 1:  # the last round's move was taken back, with its momentum
            assert np.abs(track.snapshots[-1] - track.shifts).max() > 0.1
            assert not track.velocity.any()


def test_outlier_angles_are_named(caplog):
    """A projection whose last residual is at least OUTLIER_RESIDUAL_RATIO times the median
    is named once in a warning (as at the demo's size, one angle on a wrong match ended at
    7.97 times); residuals of an aligned set (within 1.11 times there) name none; no
    iterations, or a zero median, name none."""
    import logging

    from hpc_adept.align.matching import _warn_outlier_angles
    from hpc_adept.config import OUTLIER_RESIDUAL_RATIO

    rng = np.random.default_rng(5)
    aligned = 0.006 * (1.0 + 0.05 * rng.standard_normal(40))
    wrong = aligned.copy()
    wrong[13] = 7.97 * np.median(aligned)
    wrong[20] = 0.95 * OUTLIER_RESIDUAL_RATIO * np.median(aligned)  # below the ratio
    with caplog.at_level(logging.WARNING, logger="hpc_adept.align.matching"):
        assert _warn_outlier_angles([wrong, aligned]) == []  # the last iteration counts
        assert not caplog.records
        assert _warn_outlier_angles([aligned, wrong]) == [13]
        assert _warn_outlier_angles([]) == []
        assert _warn_outlier_angles([np.zeros(40)]) == []
        broken = aligned.copy()
        broken[[3, 7]] = (np.nan, np.inf)  # not finite: named, the median of the others
        assert _warn_outlier_angles([broken]) == [3, 7]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2 and "(indices [13])" in messages[0], messages
    assert "wrong match" in messages[0] and "2 projection(s) (indices [3, 7])" in messages[1]
    ratio = float(re.search(r"end with ([0-9.]+) times", messages[0]).group(1))
    assert 7.5 < ratio < 8.5, messages[0]


def test_a_named_projection_of_an_extended_sample_is_searched_again():
    """On a joint last level of a widened volume (plane fit, measured-pixel weights, one
    volume of all angles): a projection 6 px off its truth that the last iteration's
    residuals name is predicted by a volume of the others, moved back within a pixel of
    its truth, and the level runs again numbered on from the last entry, drift free."""
    from hpc_adept.align.matching import (
        LocalLamino,
        _Frame,
        _make_level,
        _reregister_outliers,
        _resolved,
        _Track,
    )

    # the procedural phantom: the layout's lowest 12 slices hold no metal
    sample = extended_sample((12, 24, 24), 32, 4, kind="procedural")
    options = _resolved(AlignConfig(binning=(2, 1), max_iterations=3, highpass_sigma_px=2.0,
                                    coarse_lowpass_px=4.0, volume_shape=(12, 24, 24),
                                    sample="extended"), sample.measured)
    frame = _Frame.of(sample.measured, options, 0.0)
    n = len(sample.angles)
    start = remove_rigid_drift(sample.shifts, sample.angles, TILT)[0]
    start[5] += (0.0, 6.0)
    track = _Track(start.copy(), sample.angles, TILT, torch.zeros(n, 3, dtype=torch.float64),
                   np.zeros((n, 2)), start=start, reach_px=options.coarse_search_px)
    joint = _make_level(LocalLamino(), options, 1, 1, frame, TILT, sample.angles)
    assert joint.joint and joint.basis is not None and joint.taper_px > 0
    track.history.append({"level": 1, "iteration": 7})
    track.residuals.append(np.where(np.arange(n) == 5, 10.0, 1.0))  # 5 named
    assert _reregister_outliers(options, joint, frame, track, None) == [5]
    error = np.abs(shift_error(track.shifts, sample.shifts, sample.angles)).max(axis=1)
    assert error[5] < 1.0, error
    assert [h["iteration"] for h in track.history[1:]] == [8, 9, 10]
    assert np.abs(remove_rigid_drift(track.shifts, sample.angles, TILT)[1]).max() < 1e-9
    assert torch.isfinite(track.planes).all()
    # named for a residual that is no outlier of the data: nothing moves, nothing runs
    track.residuals.append(np.where(np.arange(n) == 9, 10.0, 1.0))
    shifts, entries = track.shifts.copy(), len(track.history)
    assert _reregister_outliers(options, joint, frame, track, None) == []
    np.testing.assert_array_equal(track.shifts, shifts)
    assert len(track.history) == entries


@pytest.mark.slow
@pytest.mark.parametrize("seed, corner_um, fixed", [(2, (30.0, 20.0), True),
                                                    (14, (50.0, 25.0), False)])
def test_smooth_check_tells_a_crop_that_fixes_smooth_patterns(ic_files, seed, corner_um,
                                                              fixed):
    """Started at the true shifts, the joint last level takes a 0.5 px pattern of harmonics
    2 and 3 back on a crop with structure both ways (this one aligns to < 0.15 px); on a
    crop of one-way wiring (whose alignment ends 1.9 px off at this size) most of the
    pattern stays (0.06 and 0.83 of it after 20 iterations when written; the rerun now stops
    once within half of it)."""
    from hpc_adept.align.drift import remove_rigid_drift
    from hpc_adept.align.matching import (
        LocalLamino,
        _Frame,
        _make_level,
        _resolved,
        _smooth_check,
        _Track,
    )

    sample = extended_sample(REGION, 32, seed, corner_um=corner_um, plane_rad=0.5)
    options = _resolved(dataclasses.replace(OPTIONS, max_iterations=20, smooth_check_px=0.5),
                        sample.measured)
    truth = remove_rigid_drift(sample.shifts, sample.angles, TILT)[0]
    frame = _Frame.of(sample.measured, options, float(np.abs(sample.shifts).max()))
    track = _Track(truth.copy(), sample.angles, TILT, torch.zeros(32, 3, dtype=torch.float64),
                   np.zeros((32, 2)), start=truth, reach_px=options.coarse_search_px)
    level = _make_level(LocalLamino(), options, 1, 1, frame, TILT, sample.angles)
    check = _smooth_check(options, level, frame, track)
    np.testing.assert_array_equal(track.shifts, truth)
    assert check.determined is fixed
    # taken back within half the pattern, the rerun stops there; not taken back, it runs
    # all the level's iterations and ends most of the pattern away
    assert (check.smooth_distance <= 0.5 and check.iterations < 20) if fixed else \
        (check.smooth_distance > 0.65 and check.iterations == 20), check


def test_smooth_patterns_are_over_relaxed_on_the_joint_level():
    """The joint last level adds ``smooth_gain`` times the part of each update that the
    angular harmonics up to ``smooth_harmonics`` fit: a pattern of those harmonics is
    kept whole by the fit, one of a higher harmonic is not touched; too few angles, or a
    gain of 0, leave the steps as they are."""
    from hpc_adept.align.matching import _harmonic_basis

    angles = np.arange(32) * 360.0 / 32
    like = torch.zeros(1, dtype=torch.float64)
    q = _harmonic_basis(angles, AlignConfig(smooth_harmonics=4), like).numpy()
    fit = q @ q.T
    theta = np.deg2rad(angles)
    smooth = np.stack([np.cos(3 * theta) + 0.5, np.sin(2 * theta)], axis=1)
    rough = np.stack([np.cos(9 * theta), np.sin(11 * theta)], axis=1)
    np.testing.assert_allclose(fit @ smooth, smooth, atol=1e-12)
    np.testing.assert_allclose(fit @ rough, 0.0, atol=1e-12)
    np.testing.assert_allclose(q.T @ q, np.eye(9), atol=1e-12)
    # a single angle would weigh more than half in the fit: off
    assert _harmonic_basis(np.arange(17) * 360.0 / 17, AlignConfig(smooth_harmonics=4),
                           like) is None
    assert _harmonic_basis(np.arange(24) * 15.0, AlignConfig(smooth_harmonics=4), like) \
        is not None
    arc = np.linspace(0.0, 180.0, 32)  # a half turn: the fit follows the arc's ends
    assert _harmonic_basis(arc, AlignConfig(smooth_harmonics=4), like) is None
    assert _harmonic_basis(angles, AlignConfig(smooth_gain=0.0), like) is None
    for bad in (["align.smooth_gain=-1"], ["align.smooth_gain=1.5"],
                ["align.smooth_harmonics=0"]):
        with pytest.raises(ConfigError, match=bad[0].split("=")[0]):
            load_config(None, bad)
    # on a small chip the joint level runs with it and without it, to different shifts
    sample = extended_sample(REGION, 24, 2, corner_um=(30.0, 20.0))
    base = dataclasses.replace(OPTIONS, max_iterations=2)
    shifts = [projection_matching(sample.measured, sample.angles, TILT,
                                  dataclasses.replace(base, smooth_gain=gain)).shifts_px
              for gain in (0.0, 1.0)]
    assert np.abs(shifts[0] - shifts[1]).max() > 1e-3


def test_lateral_margin_config():
    assert AlignConfig().lateral_margin == "auto"  # used for extended samples only
    cfg = load_config(None, ["align.lateral_margin=12"])
    assert cfg.align.lateral_margin == 12
    with pytest.raises(ConfigError, match="align.lateral_margin"):
        load_config(None, ["align.lateral_margin=wide"])
    with pytest.raises(ConfigError, match="align.lateral_margin"):
        AlignConfig(lateral_margin=-1).check()
    with pytest.raises(ConfigError, match="align.momentum"):
        AlignConfig(momentum=1.0).check()


@pytest.mark.slow
@pytest.mark.parametrize("seed, corner_um", [
    (2, (30.0, 20.0)),
    (11, (42.0, 48.0)),
    # on the procedural fallback (no layout) this seed passes
    pytest.param(13, (62.0, 44.0), marks=pytest.mark.xfail(
        IC_DEF.is_file() and IC_LEF.is_file(),
        reason="issue 18: on half the crops of the layout at this size the alignment ends "
               "0.7-2.8 px off (this one-way crop: 2.8 px)",
        strict=True)),
])
def test_extended_sample_alignment_recovers_known_shifts(seed, corner_um):
    """The must-show of issue 18: 2 px RMS shifts of a region inside a chip, 2 % noise,
    offsets and ramps up to +-0.5 rad, recovered to < 0.15 px RMS."""
    sample = extended_sample(REGION, 32, seed, corner_um=corner_um, plane_rad=0.5)
    before = shift_error_px(np.zeros_like(sample.shifts), sample.shifts, sample.angles)
    result = projection_matching(sample.measured, sample.angles, TILT, OPTIONS)
    after = shift_error_px(result.shifts_px, sample.shifts, sample.angles)
    assert before > 1.5
    assert after < 0.15, after
    assert result.phase_planes.shape == (32, 3)
    assert result.outlier_angles == []  # no projection named as on a wrong match


@pytest.mark.slow
def test_joint_fit_from_zero_stops_short_of_the_shifts_it_prefers(ic_files):
    """What the joint fit alone does: one widened volume fitted to all angles (no held-out
    folds, the coarse estimate's former low-pass of 8 px), without noise or planes, stays
    at the true shifts when started there (0.09 px), but started at zero it ends 1.0 px
    away. With filters that keep to the fitted pixels (``masked_highpass``) its residual
    there is 1.76 times the truth's (1.24 before them, when the edges' residual leaked
    in): the objective prefers the truth, the steps from zero do not reach it. A finding
    about this crop of the real layout (the procedural fallback, denser in every layer,
    ends at 0.2 px from zero), so it skips without the layout."""
    sample = extended_sample(REGION, 32, 2, corner_um=(30.0, 20.0), noise=0.0)
    joint = dataclasses.replace(OPTIONS, cross_folds=1, momentum=0.0, coarse_lowpass_px=8.0,
                                coverage_power=0.0, flow_eigen_floor=0.0,
                                coarse_flow_eigen_floor=0.0)
    runs = {}
    for start, initial in (("zero", None), ("truth", sample.shifts)):
        result = projection_matching(sample.measured, sample.angles, TILT, joint,
                                     initial_shifts_px=initial)
        runs[start] = (shift_error_px(result.shifts_px, sample.shifts, sample.angles),
                       result.history[-1]["residual_rms"])
    assert runs["truth"][0] < 0.2, runs
    assert runs["zero"][0] > 0.5, runs
    assert runs["zero"][1] > 1.4 * runs["truth"][1], runs


@pytest.mark.slow
@pytest.mark.parametrize("seed, corner_um", [(2, (30.0, 20.0))])
def test_extended_method_beats_the_region_only_method(seed, corner_um):
    """On an extended sample with offsets and ramps, the region alone (today's method)
    diverges far beyond the shifts; the widened, plane-blind method does not."""
    sample = extended_sample(REGION, 32, seed, corner_um=corner_um, plane_rad=0.5)
    before = shift_error_px(np.zeros_like(sample.shifts), sample.shifts, sample.angles)
    errors = {}
    for name, options in (("old", dataclasses.replace(OPTIONS, **OLD)), ("new", OPTIONS)):
        result = projection_matching(sample.measured, sample.angles, TILT, options)
        errors[name] = shift_error_px(result.shifts_px, sample.shifts, sample.angles)
    assert errors["old"] > 3 * before, errors
    assert errors["new"] < before and errors["new"] < 0.2 * errors["old"], errors
    assert errors["new"] < 0.3, errors  # 1.1 px before the measured-data weights etc.


def test_stage_plans_the_widened_volume():
    """The memory guard counts the widened volume (and the folds' volumes)."""
    from hpc_adept.stages.align import widened_volume

    auto = AlignConfig(lateral_margin="auto")
    margin = lateral_margin_px(REGION, (46, 48), TILT)
    assert widened_volume(auto, REGION, (46, 48), TILT) == \
        (REGION[0], REGION[1] + 2 * margin, REGION[2] + 2 * margin)
    assert widened_volume(AlignConfig(lateral_margin=5), REGION, (46, 48), TILT) == (24, 42, 42)
    assert widened_volume(AlignConfig(lateral_margin=0), REGION, (46, 48), TILT) == REGION
    assert widened_volume(auto, REGION, (46, 48), None) == REGION  # the reader refuses it


@pytest.mark.slow
def test_structure_report_says_what_the_region_holds():
    """``profiling/align_extended.py --structure`` prints its line: one-way ratios in
    [0, 1], a positive share of the signal and a metal fraction in [0, 1]."""
    import re

    from .conftest import REPO, run_cmd

    done = run_cmd([str(REPO / "profiling" / "align_extended.py"), "--region", "24", "32",
                    "32", "--angles", "8", "--seeds", "3", "--corner", "50", "40",
                    "--highpass", "2", "--structure"], timeout=300)
    assert done.returncode == 0, done.stderr
    found = re.search(r"chip ([\d.]+), region alone ([\d.]+); the region holds ([\d.]+) of "
                      r"the high-passed signal; metal in ([\d.]+)", done.stdout)
    assert found, done.stdout
    chip, alone, share, metal = (float(v) for v in found.groups())
    assert 0.0 <= chip <= 1.0 and 0.0 <= alone <= 1.0
    assert share > 0.0 and 0.0 < metal <= 1.0


def test_smooth_bound_report_is_no_lower_with_the_volume_unknown():
    """``profiling/align_extended.py --bound-smooth`` prints its line: the bound with the
    widened volume unknown at least the one with it known, both below the prior's."""
    import re

    from .conftest import REPO, run_cmd

    done = run_cmd([str(REPO / "profiling" / "align_extended.py"), "--region", "16", "24",
                    "24", "--angles", "16", "--seeds", "14", "--corner", "50", "25",
                    "--bound-smooth", "3", "--bound-iterations", "30"], timeout=300)
    assert done.returncode == 0, done.stderr
    found = re.search(r"better than ([\d.]+) px RMS with the widened volume .* unknown .*, "
                      r"([\d.]+) px with it known; the prior alone ([\d.]+)", done.stdout)
    assert found, done.stdout
    unknown, known, prior = (float(v) for v in found.groups())
    assert 0.0 < known <= unknown < prior


def test_benchmark_from_truth_prints_each_level_end():
    """``profiling/align_extended.py --from-truth --levels``: one line per binning level in
    the order they ran, each error split across / along the wires consistently (the two
    squared sum to twice its square) and the last level's the headline error."""
    import re

    from .conftest import REPO, run_cmd

    done = run_cmd([str(REPO / "profiling" / "align_extended.py"), "--region", "16", "24",
                    "24", "--angles", "16", "--seeds", "1", "--corner", "40", "28",
                    "--binning", "2", "1", "--highpass", "2", "--coarse-lowpass", "4",
                    "--max-iterations", "4", "--cases", "extended", "--methods",
                    "extended", "--set", "smooth_check_px=0", "--from-truth", "--levels"],
                   timeout=300)
    assert done.returncode == 0, done.stderr
    headline = re.search(r"shift error +([\d.]+) px RMS \(before [\d.]+, started at the "
                         r"truth\)", done.stdout)
    levels = re.findall(r"binning (\d): ([\d.]+) px \(across ([\d.]+), along ([\d.]+)\)",
                        done.stdout)
    assert headline and [level for level, *_ in levels] == ["2", "1"], done.stdout
    for _, error, across, along in levels:
        error, across, along = float(error), float(across), float(along)
        rounding = 1.1e-4 * (across + along + 2 * error)  # each printed to 4 decimals
        assert across ** 2 + along ** 2 == pytest.approx(2 * error ** 2, abs=rounding)
    assert float(levels[-1][1]) == pytest.approx(float(headline.group(1)), abs=1.5e-3)


@pytest.mark.parametrize("mode", [["--bound"], ["--structure"], ["--bound-smooth", "2"]])
def test_benchmark_refuses_start_flags_where_nothing_is_aligned(mode):
    """``--from-truth`` / ``--levels`` with a mode that runs no alignment: one clear line,
    exit 2, not flags silently ignored."""
    from .conftest import REPO, run_cmd

    done = run_cmd([str(REPO / "profiling" / "align_extended.py"), "--from-truth", *mode],
                   timeout=120)
    assert done.returncode == 2
    assert "apply to the alignment runs" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(not (IC_DEF.is_file() and IC_LEF.is_file()),
                    reason="needs the layout (../shared/data/ic)")
def test_benchmark_bound_is_the_datas_not_the_shifts_ringing():
    """``profiling/align_extended.py --bound`` on seed 12 of the issue's size: the window's
    information taken unshifted (the samples' Fourier shift rings at the window's edge,
    which the bound took for information along the straps: 0.013 px on the shifted window)
    bounds that crop above the must-show's 0.15 px."""
    import re

    from .conftest import REPO, run_cmd

    done = run_cmd([str(REPO / "profiling" / "align_extended.py"), "--seeds", "12",
                    "--corner", "28", "58", "--bound"], timeout=300)
    assert done.returncode == 0, done.stderr
    found = re.search(r"no method does better than ([\d.]+) px RMS", done.stdout)
    assert found, done.stdout
    assert 0.15 < float(found.group(1)) < 0.4


@pytest.mark.parametrize("setting, message", [("foo=1", "not KEY=VALUE"),
                                              ("momentum", "not KEY=VALUE"),
                                              ("sample=isolated", "other than sample"),
                                              ("momentum=2", "align.momentum must be"),
                                              ("max_iterations=2.5", "must be an integer")])
def test_benchmark_refuses_a_bad_align_setting(setting, message):
    """``--set KEY=VALUE`` takes align settings only (not the methods' ``sample``), typed
    and checked as a config override's."""
    from .conftest import REPO, run_cmd

    done = run_cmd([str(REPO / "profiling" / "align_extended.py"), "--set", setting],
                   timeout=120)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
