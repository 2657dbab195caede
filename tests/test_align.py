"""Projection-matching alignment: kernels (adjoints, shifts, drift, periodic-robust
estimate), the matching loop on a real-layout phantom, and ``adept align`` end to end."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hpc_adept.align import (
    LocalLamino,
    bin_images,
    border_taper,
    crop_window,
    fourier_shift,
    highpass,
    highpass_with_gradient,
    lowpass,
    optical_flow_update,
    projection_matching,
    remove_rigid_drift,
    rigid_drift_basis,
    unbin_images,
    visible_support,
    xcorr_shift,
)
from hpc_adept.align.matching import least_squares
from hpc_adept.config import AlignConfig
from hpc_adept.io import ProjectionSet, read_projections, write_projections
from hpc_adept.lamino import Geometry, LaminoOperator, project
from hpc_adept.linop import FunctionOperator, dottest
from hpc_adept.parallel import DistributedLaminoOperator, get_context
from hpc_adept.phantom import make_phantom
from hpc_adept.stages.simulate import auto_projection_shape

from .conftest import IC_DEF, IC_LEF, adept

TILT = 61.0
RNG = np.random.default_rng(1234)


def _pair(forward, adjoint, x: torch.Tensor, y: torch.Tensor) -> FunctionOperator:
    """An image kernel and its adjoint as an operator from ``x``'s shape to ``y``'s."""
    return FunctionOperator(forward, adjoint, x.shape, y.shape)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape))


def residual_error_px(estimate: np.ndarray, truth: np.ndarray, angles: np.ndarray) -> float:
    """RMS of the shift error after removing the global offset and the rigid drift."""
    err = estimate - truth
    for _ in range(3):  # alternate: the drift basis holds a row offset, the mean a column one
        err = err - err.mean(axis=0)
        err, _ = remove_rigid_drift(err, angles, TILT)
    return float(np.sqrt(np.mean(err ** 2)))


# ------------------------------------------------------------------------- image kernels


def test_fourier_shift_integer_equals_roll_and_sign_convention():
    x = _rand(2, 12, 10)
    shifts = torch.tensor([[3.0, -2.0], [-1.0, 4.0]], dtype=torch.float64)
    y = fourier_shift(x, shifts)
    for k in range(2):
        expected = torch.roll(x[k], shifts=(int(shifts[k, 0]), int(shifts[k, 1])), dims=(0, 1))
        torch.testing.assert_close(y[k], expected, atol=1e-12, rtol=0)
    # measured[r, c] = ideal[r - s_r, c - s_c]: content at (5, 5) moves to (8, 3)
    assert y[0, 8, 3] == pytest.approx(float(x[0, 5, 5]), abs=1e-12)


def test_fourier_shift_adjoint_and_composition():
    x, y = _rand(3, 16, 15, seed=1), _rand(3, 16, 15, seed=2)
    s = torch.from_numpy(RNG.uniform(-4, 4, (3, 2)))
    shift = _pair(lambda t: fourier_shift(t, s), lambda t: fourier_shift(t, -s), x, y)
    dottest(shift, rtol=1e-12, atol=1e-12, x=x, y=y)
    # odd sizes have no Nyquist term: shifts compose and invert exactly
    x = _rand(3, 15, 13, seed=1)
    both = fourier_shift(fourier_shift(x, s), 0.5 * s)
    torch.testing.assert_close(both, fourier_shift(x, 1.5 * s), atol=1e-10, rtol=0)
    torch.testing.assert_close(fourier_shift(fourier_shift(x, s), -s), x, atol=1e-10, rtol=0)


def test_binning_adjoint_and_centre():
    x, y = _rand(2, 12, 8, seed=3), _rand(2, 3, 2, seed=4)
    dottest(_pair(lambda t: bin_images(t, 4), lambda t: unbin_images(t, 4), x, y),
            rtol=1e-12, atol=1e-12, x=x, y=y)
    assert bin_images(x, 4).shape == (2, 3, 2)
    torch.testing.assert_close(bin_images(x, 2)[0, 0, 0], x[0, :2, :2].mean())
    with pytest.raises(ValueError, match="multiple"):
        bin_images(_rand(1, 10, 8), 4)


def test_filters_are_self_adjoint_and_complementary():
    x, y = _rand(2, 20, 18, seed=5), _rand(2, 20, 18, seed=6)
    for op in (lambda t: lowpass(t, 2.5), lambda t: highpass(t, 2.5)):
        dottest(_pair(op, op, x, y), rtol=1e-12, atol=1e-12, x=x, y=y)
    torch.testing.assert_close(lowpass(x, 2.5) + highpass(x, 2.5), x, atol=1e-12, rtol=0)
    assert float(highpass(torch.ones(1, 8, 8, dtype=torch.float64), 2.0).abs().max()) < 1e-12


def test_spectral_gradient_of_a_sinusoid():
    r, c = np.meshgrid(np.arange(32), np.arange(30), indexing="ij")
    kr, kc = 3 / 32, 2 / 30
    img = torch.from_numpy(np.sin(2 * np.pi * (kr * r + kc * c)))[None]
    _, d_row, d_col = highpass_with_gradient(img, 0.0)
    arg = 2 * np.pi * (kr * r + kc * c)
    np.testing.assert_allclose(d_row[0].numpy(), 2 * np.pi * kr * np.cos(arg), atol=1e-10)
    np.testing.assert_allclose(d_col[0].numpy(), 2 * np.pi * kc * np.cos(arg), atol=1e-10)


def test_crop_window_keeps_the_centre():
    assert crop_window(10, 6) == (2, 0.0)
    start, offset = crop_window(11, 6)
    assert (start, offset) == (2, 0.5)
    assert (11 - 1) / 2 == pytest.approx(start + (6 - 1) / 2 + offset)
    with pytest.raises(ValueError):
        crop_window(5, 6)


# ------------------------------------------------------------------------ shift estimates


def _smooth_image(n: int, seed: int) -> torch.Tensor:
    return lowpass(_rand(1, n, n, seed=seed), 2.0)[0] * 10


def test_optical_flow_recovers_a_subpixel_shift():
    model = torch.stack([_smooth_image(48, 7), _smooth_image(48, 8)])
    truth = torch.tensor([[0.3, -0.2], [-0.45, 0.1]], dtype=torch.float64)
    data = fourier_shift(model, truth)
    weights = border_taper((48, 48), 6, model)
    update, residual = optical_flow_update(data, model, weights, 6.0, 2.0)
    torch.testing.assert_close(update, truth, atol=0.03, rtol=0)
    assert residual.shape == (2,) and bool((residual > 0).all())
    clamped, _ = optical_flow_update(data, model, weights, 6.0, 0.25)
    assert float(clamped.abs().max()) == pytest.approx(0.25)
    zero, residual0 = optical_flow_update(model, model, weights, 6.0, 2.0)
    assert float(zero.abs().max()) < 1e-9 and float(residual0.max()) < 1e-9


def test_optical_flow_without_weight_gives_no_update():
    """A projection whose pixels all have weight 0 (its shift brought in only padding) gets
    a zero update, not the NaN of 0 / 0, and the others are unaffected."""
    model = torch.stack([_smooth_image(32, 3), _smooth_image(32, 4)])
    truth = torch.tensor([[0.2, -0.3], [0.4, 0.1]], dtype=torch.float64)
    data = fourier_shift(model, truth)
    weights = border_taper((32, 32), 4, model).expand(2, 32, 32).clone()
    weights[1] = 0.0
    update, residual = optical_flow_update(data, model, weights, 4.0, 2.0)
    assert bool(torch.isfinite(update).all()) and bool(torch.isfinite(residual).all())
    assert float(update[1].abs().max()) == 0.0
    torch.testing.assert_close(update[0], truth[0], atol=0.05, rtol=0)


def test_masked_highpass_listens_to_the_mask_only():
    """Pixels outside the mask do not change the filtered values inside it, and a constant
    is removed exactly (no wrap-around, no zero padding pulled in)."""
    from hpc_adept.align.imaging import masked_highpass

    x = _rand(2, 30, 28, seed=11)
    mask = torch.from_numpy((np.random.default_rng(12).random((30, 28)) > 0.3).astype(float))
    changed = x + (1.0 - mask) * 50.0
    inside = mask.bool().expand_as(x)
    diff = masked_highpass(x, mask, 3.0) - masked_highpass(changed, mask, 3.0)
    assert float(diff[inside].abs().max()) < 1e-12
    constant = torch.full((1, 30, 28), 2.5, dtype=torch.float64)
    assert float(masked_highpass(constant, mask, 3.0).abs().max()) < 1e-12
    assert float((masked_highpass(x, mask, 3.0) - x).abs().max()) > 0.1  # it filters


def test_optical_flow_on_a_window_of_a_wide_sample_keeps_to_the_fitted_pixels():
    """A window cut out of a wider image (different content at opposite edges) whose model
    is wrong on its unfitted border: with ``fitted`` the update at the true alignment is
    zero, and a small shift is found closer than with periodic filters (which carry the
    border's residual and the wrap-around into the interior)."""
    wide = lowpass(_rand(2, 96, 96, seed=3), 2.0) * 10
    cut = (slice(None), slice(24, 72), slice(24, 72))
    fitted = torch.zeros(48, 48, dtype=torch.float64)
    fitted[4:-4, 4:-4] = 1.0
    weights = fitted * border_taper((48, 48), 6, fitted)
    data = wide[cut]
    model = data + (1.0 - fitted) * _rand(2, 48, 48, seed=4)
    periodic, _ = optical_flow_update(data, model, weights, 4.0, 2.0)
    kept, _ = optical_flow_update(data, model, weights, 4.0, 2.0, fitted=fitted)
    assert float(periodic.abs().max()) > 1e-3
    assert float(kept.abs().max()) < 1e-12
    truth = torch.tensor([[0.06, -0.04], [-0.05, 0.03]], dtype=torch.float64)
    data, model = fourier_shift(wide, truth)[cut], wide[cut]
    ones = torch.ones(48, 48, dtype=torch.float64)
    weights = border_taper((48, 48), 4, ones)
    periodic, _ = optical_flow_update(data, model, weights, 4.0, 2.0)
    kept, _ = optical_flow_update(data, model, weights, 4.0, 2.0, fitted=ones)
    assert float((kept - truth).abs().max()) < 0.5 * float((periodic - truth).abs().max())


def test_structure_ratio_and_the_one_way_warning(caplog):
    """Stripes fix one direction only (ratio ~0), a random texture both (ratio well above
    the warning's threshold), a blank image neither (0, no NaN); projection matching warns
    once about one-way data and not about textured data."""
    import logging

    from hpc_adept.align.estimate import structure_ratio
    from hpc_adept.align.matching import _warn_one_way
    from hpc_adept.config import ONE_WAY_RATIO

    n = 40
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    stripes = torch.from_numpy(np.cos(2 * np.pi * c / 7.0))[None].expand(4, n, n)
    # wires one way, a faint trace across them (vias, wire ends)
    wires = stripes + 0.05 * torch.from_numpy(np.cos(2 * np.pi * r / 11.0))[None]
    texture = lowpass(_rand(4, n, n, seed=21), 1.5)
    blank = torch.zeros(3, n, n, dtype=torch.float64)
    assert float(structure_ratio(stripes, 3.0).max()) < 1e-6
    assert 0.0 < float(structure_ratio(wires, 3.0).max()) < 0.5 * ONE_WAY_RATIO
    assert float(structure_ratio(texture, 3.0, chunk=3).min()) > 2 * ONE_WAY_RATIO
    assert float(structure_ratio(blank, 3.0).abs().max()) == 0.0
    options = AlignConfig(volume_shape=(8, n, n), highpass_sigma_px=3.0,
                          flow_eigen_floor=0.0)
    with caplog.at_level(logging.WARNING, logger="hpc_adept.align.matching"):
        _warn_one_way(texture, options)
        assert not caplog.records
        _warn_one_way(wires, options)
        _warn_one_way(blank, options)
        _warn_one_way(wires, dataclasses.replace(options, flow_eigen_floor=0.1,
                                                 coarse_flow_eigen_floor=0.3))
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3 and "one way" in messages[0], messages
    assert "consider align.flow_eigen_floor: 0.1" in messages[0]
    assert "no structure" in messages[1]
    assert "align.flow_eigen_floor (0.1; 0.3 on the coarser levels) damps" in messages[2]


def test_raise_small_eigenvalue_keeps_the_eigenvectors():
    from hpc_adept.align.estimate import raise_small_eigenvalue

    rng = np.random.default_rng(5)
    m = rng.standard_normal((50, 2, 2))
    a = m @ m.transpose(0, 2, 1)
    a[0] = [[4.0, 0.0], [0.0, 0.01]]  # diagonal, either order (a null-vector candidate is 0)
    a[1] = [[0.01, 0.0], [0.0, 4.0]]
    a[2] = [[1.0, 0.0], [0.0, 1.0]]   # isotropic: nothing to raise
    t = torch.from_numpy(a)
    rr, rc, cc = raise_small_eigenvalue(t[:, 0, 0], t[:, 0, 1], t[:, 1, 1], 0.3)
    raised = torch.stack([torch.stack([rr, rc], -1), torch.stack([rc, cc], -1)], -2).numpy()
    for before, after in zip(a, raised, strict=True):
        w0, v0 = np.linalg.eigh(before)
        w1, v1 = np.linalg.eigh(after)
        np.testing.assert_allclose(w1, [max(w0[0], 0.3 * w0[1]), w0[1]], rtol=1e-9, atol=1e-12)
        if w0[1] - w0[0] > 1e-9:  # the eigenvectors stay (up to sign)
            np.testing.assert_allclose(np.abs(v1.T @ v0), np.eye(2), atol=1e-9)


def test_eigen_floor_damps_the_step_along_one_way_structure():
    """Stripes along the rows fix the column shift only: a faint row structure that the
    model does not hold (as a mispredicted layer) drives the plain solve's row step; with
    a floor that step stays small, and the column step stays."""
    n = 48
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    model = torch.from_numpy(np.cos(2 * np.pi * c / 9.0)
                             + 0.02 * np.cos(2 * np.pi * r / 13.0))[None]
    truth = torch.tensor([[0.0, 0.3]], dtype=torch.float64)
    unmodelled = torch.from_numpy(0.02 * np.sin(2 * np.pi * r / 13.0))[None]
    data = fourier_shift(model, truth) + unmodelled
    weights = border_taper((n, n), 6, model)
    plain, _ = optical_flow_update(data, model, weights, 6.0, 2.0)
    damped, _ = optical_flow_update(data, model, weights, 6.0, 2.0, eigen_floor=0.3)
    assert abs(float(plain[0, 0])) > 0.5  # a row step from what the model lacks
    assert abs(float(damped[0, 0])) < 0.1 * abs(float(plain[0, 0]))
    assert float(damped[0, 1]) == pytest.approx(0.3, abs=0.03)
    assert float(plain[0, 1]) == pytest.approx(0.3, abs=0.03)


def test_bounded_lowpass_xcorr_is_robust_to_periodic_patterns():
    """A grating of period 6 px over the whole field plus one broad feature: the sample
    moved by +5 columns. Plain FFT cross-correlation locks onto the grating peak one period
    away (-1); the low-pass, window-bounded estimate follows the feature."""
    big_n, n = 160, 96
    r, c = np.meshgrid(np.arange(big_n), np.arange(big_n), indexing="ij")
    sample = np.cos(2 * np.pi * c / 6.0) + 0.8 * np.exp(-((r - 80) ** 2 + (c - 84) ** 2)
                                                         / (2 * 10.0 ** 2))
    reference = torch.from_numpy(sample[32:32 + n, 32:32 + n].copy())[None]
    data = torch.from_numpy(sample[32:32 + n, 27:27 + n].copy())[None]  # data = ref(c - 5)
    weights = border_taper((n, n), 8, reference)
    plain = xcorr_shift(data, reference, weights)[0].numpy()
    robust = xcorr_shift(data, reference, weights, lowpass_sigma_px=4.0, window_px=12)[0]
    assert abs(plain[1] - 5.0) > 3.0  # the wrong period
    assert abs(float(robust[1]) - 5.0) < 0.5 and abs(float(robust[0])) < 0.1


def test_xcorr_window_bounds_the_search():
    img = torch.stack([_smooth_image(40, 9)])
    moved = fourier_shift(img, torch.tensor([[0.0, 9.0]], dtype=torch.float64))
    free = xcorr_shift(moved, img)[0]
    assert abs(float(free[1]) - 9.0) < 0.2
    bounded = xcorr_shift(moved, img, window_px=4.0)[0]
    assert abs(float(bounded[1])) <= 4.5


# --------------------------------------------------------------------- drift and support


def test_rigid_drift_basis_matches_the_geometry_vectors():
    angles = np.array([0.0, 37.0, 123.0, 250.0])
    geometry = Geometry(angles, TILT, (8, 8, 8), (16, 16))
    _, u, v = geometry.vectors()
    p = np.array([1.5, -0.7, 2.0])
    expected = np.stack([v @ p, u @ p], axis=1)
    np.testing.assert_allclose(rigid_drift_basis(angles, TILT) @ p, expected, atol=1e-12)


def test_rigid_drift_basis_is_the_shift_of_a_translated_volume():
    """Projecting a translated volume equals shifting its projections by the basis."""
    shape, det = (12, 16, 16), (32, 32)
    volume = np.zeros(shape)
    volume[4:8, 5:11, 6:10] = 1.0
    volume = lowpass(torch.from_numpy(volume), 1.0).numpy()  # smooth: shifts interpolate well
    angles = np.array([0.0, 50.0, 140.0, 300.0])
    geometry = Geometry(angles, TILT, shape, det)
    base = project(torch.from_numpy(volume), geometry)
    moved = project(torch.from_numpy(np.roll(volume, (1, -1, 2), axis=(0, 1, 2))), geometry)
    shifts = rigid_drift_basis(angles, TILT) @ np.array([2.0, -1.0, 1.0])  # (x, y, z)
    predicted = fourier_shift(base, torch.from_numpy(shifts))
    err = float((moved - predicted).norm() / moved.norm())
    assert err < 0.05, err


def test_remove_rigid_drift_is_a_projection():
    angles = np.linspace(0, 360, 25, endpoint=False)
    basis = rigid_drift_basis(angles, TILT)
    pattern = basis @ np.array([0.4, -1.2, 0.8])
    noise = RNG.normal(0, 1, (25, 2))
    cleaned, coef = remove_rigid_drift(pattern + noise, angles, TILT)
    again, coef2 = remove_rigid_drift(cleaned, angles, TILT)
    np.testing.assert_allclose(again, cleaned, atol=1e-12)
    assert np.abs(coef2).max() < 1e-12
    np.testing.assert_allclose(np.einsum("nij,ni->j", basis, cleaned), 0.0, atol=1e-10)
    np.testing.assert_allclose(remove_rigid_drift(pattern, angles, TILT)[0], 0.0, atol=1e-12)
    # the lateral translations only (a layer stack observes z): the z pattern stays
    lateral, coef_xy = remove_rigid_drift(pattern, angles, TILT, axes=(0, 1))
    np.testing.assert_allclose(coef_xy, [0.4, -1.2, 0.0], atol=1e-12)
    np.testing.assert_allclose(lateral, basis @ np.array([0.0, 0.0, 0.8]), atol=1e-12)


def test_visible_support():
    shape = (10, 20, 20)
    full = auto_projection_shape(shape, TILT, margin_px=0)
    assert visible_support(shape, full, TILT, margin_px=0).all()
    narrow = visible_support(shape, (full[0], 16), TILT, margin_px=0)
    assert narrow[:, 10, 10].all() and not narrow[:, 0, 0].any()
    # the mask is right: a voxel inside projects inside the detector at every angle
    z, y, x = np.argwhere(narrow)[-1]
    angles = np.linspace(0, 360, 72, endpoint=False)
    _, u, v = Geometry(angles, TILT, shape, (full[0], 16)).vectors()
    p = np.array([x - 9.5, y - 9.5, z - 4.5])
    assert np.abs(u @ p).max() <= 7.5 + 0.5


# ------------------------------------------------------------ operators and the loop


def _layout_volume(shape: tuple[int, int, int]) -> np.ndarray:
    """Per-voxel phase of the real layout (or the procedural phantom without it)."""
    if IC_DEF.is_file() and IC_LEF.is_file():
        occ = make_phantom("layout", shape, 2.72e-8, layout_def=IC_DEF, layout_lef=IC_LEF,
                           crop_origin_um=(40.0, 28.0))
    else:
        occ = make_phantom("procedural", shape, 2.72e-8, seed=2)
    return (occ * 0.026).astype(np.float64)


def test_distributed_operator_on_one_rank_equals_the_operator():
    shape = (6, 10, 10)
    geometry = Geometry(np.arange(7) * 360 / 7, TILT, shape, (16, 18))
    volume = _rand(*shape, seed=10)
    proj = _rand(7, 16, 18, seed=11)
    local = LaminoOperator(geometry)
    dist = DistributedLaminoOperator(geometry, ctx=get_context())
    assert isinstance(dist, LaminoOperator)
    torch.testing.assert_close(dist.forward(volume), local.forward(volume))
    torch.testing.assert_close(dist.adjoint(proj), local.adjoint(proj))
    torch.testing.assert_close(dist.fbp(proj), local.fbp(proj))
    # adjoint pair
    dottest(dist, rtol=1e-10, x=volume, y=proj)


def test_least_squares_fits_the_data_and_keeps_the_support():
    shape = (8, 12, 12)
    geometry = Geometry(np.arange(20) * 18.0, TILT, shape, auto_projection_shape(shape, TILT))
    data = project(_rand(*shape, seed=12), geometry)
    support = torch.ones(shape, dtype=torch.bool)
    support[:, 0, 0] = False
    op = LocalLamino()(geometry)
    x0 = op.fbp(data) * support
    x, reprojection = least_squares(op, data, x0, support, 10)
    before = float((op.forward(x0) - data).norm())
    after = float((op.forward(x) - data).norm())
    assert after < 0.5 * before
    torch.testing.assert_close(reprojection, op.forward(x), atol=1e-9, rtol=0)
    assert float(x[:, 0, 0].abs().max()) == 0.0


def _misaligned(shape, n_angles, sigma, seed, noise=0.0):
    volume = _layout_volume(shape)
    det = auto_projection_shape(shape, TILT, margin_px=12)
    angles = np.arange(n_angles) * 360.0 / n_angles
    ideal = project(torch.from_numpy(volume), Geometry(angles, TILT, shape, det))
    rng = np.random.default_rng(seed)
    truth = np.clip(rng.normal(0, sigma, (n_angles, 2)), -10, 10)
    measured = fourier_shift(ideal, torch.from_numpy(truth))
    if noise:
        measured = measured + noise * torch.from_numpy(rng.standard_normal(measured.shape))
    return volume, angles, ideal, truth, measured.float()


def test_projection_matching_recovers_random_shifts():
    shape = (24, 40, 40)
    _, angles, _, truth, measured = _misaligned(shape, 40, 3.0, seed=5)
    before = residual_error_px(np.zeros_like(truth), truth, angles)
    result = projection_matching(measured, angles, TILT,
                                 AlignConfig(binning=(4, 2, 1), max_iterations=40,
                                             volume_shape=shape))
    after = residual_error_px(result.shifts_px, truth, angles)
    assert before > 2.0
    assert after < 0.1, after
    # the estimate is drift free and the history is complete
    assert np.abs(remove_rigid_drift(result.shifts_px, angles, TILT)[1]).max() < 1e-9
    assert result.residual_per_angle.shape == (40, len(result.history))
    assert result.history[0]["step"] == "xcorr" and result.history[-1]["level"] == 1
    flow = [h for h in result.history if h["level"] == 1]
    assert flow[-1]["residual_rms"] < result.history[0]["residual_rms"]
    assert result.outlier_angles == []  # none named on a sample that aligned


def test_a_projection_left_on_a_wrong_match_is_named(caplog):
    """A projection started 6 px off its true shift, where three local steps capped at
    0.5 px cannot bring it back (as a wrong cross-correlation match that later levels
    cannot leave), is the one named in the result and in a warning (not searched again:
    ``reregister_outliers`` off)."""
    import logging

    shape = (16, 24, 24)
    _, angles, _, truth, measured = _misaligned(shape, 16, 1.5, seed=3)
    start = truth.copy()
    start[5] += (0.0, 6.0)
    options = AlignConfig(binning=(1,), max_iterations=3, coarse_rounds=0,
                          volume_shape=shape, reregister_outliers=False)
    with caplog.at_level(logging.WARNING, logger="hpc_adept.align.matching"):
        result = projection_matching(measured, angles, TILT, options,
                                     initial_shifts_px=start)
    assert result.outlier_angles == [5] and result.reregistered_angles == []
    assert any("(indices [5])" in r.getMessage() for r in caplog.records)
    assert len(result.history) == 3


def test_a_projection_on_a_wrong_match_is_searched_again(caplog):
    """The same projection 6 px off, with steps of 0.1 px that cannot bring it back in 20
    iterations: left alone it ends ~6 px off (and drags the others up to ~0.9 px); searched
    again against a volume of the other projections it is moved near its truth, the level
    runs once more (its iterations numbered on) and every projection ends within 0.1 px,
    none named."""
    import logging

    shape = (16, 24, 24)
    _, angles, _, truth, measured = _misaligned(shape, 16, 1.5, seed=3)
    start = truth.copy()
    start[5] += (0.0, 6.0)
    errors, results = [], []
    for again in (False, True):
        options = AlignConfig(binning=(1,), max_iterations=20, max_update_px=0.1,
                              coarse_rounds=0, volume_shape=shape, reregister_outliers=again)
        with caplog.at_level(logging.INFO, logger="hpc_adept.align.matching"):
            results.append(projection_matching(measured, angles, TILT, options,
                                               initial_shifts_px=start))
        error = remove_rigid_drift(results[-1].shifts_px - truth, angles, TILT)[0]
        errors.append(np.abs(error).max(axis=1))
    assert errors[0][5] > 5.0 and results[0].outlier_angles == [5]
    assert results[1].reregistered_angles == [5] and results[1].outlier_angles == []
    assert errors[1].max() < 0.1, errors[1]
    iterations = [entry["iteration"] for entry in results[1].history]
    assert iterations == list(range(len(iterations))) and len(iterations) > 20
    assert results[1].residual_per_angle.shape == (len(angles), len(iterations))
    assert any("searched again over align.coarse_search_px: 1 moved; 5:" in r.getMessage()
               for r in caplog.records)


def test_no_shift_leaves_the_searched_range(caplog):
    """Shifts of up to ~4.5 px searched within 1 px: every estimate stays within 1 px of its
    (drift-free) start, also from a non-zero start, stays nearly drift free, the history
    names the projections held there and a warning line says so."""
    shape = (16, 24, 24)
    _, angles, _, truth, measured = _misaligned(shape, 16, 1.5, seed=3)
    options = AlignConfig(binning=(2, 1), max_iterations=8, volume_shape=shape,
                          coarse_search_px=1.0)
    initial = np.random.default_rng(4).uniform(-3.0, 3.0, truth.shape)
    for first in (None, initial):
        start = remove_rigid_drift(np.zeros_like(truth) if first is None else first,
                                   angles, TILT)[0]
        caplog.clear()
        with caplog.at_level("WARNING", logger="hpc_adept.align.matching"):
            result = projection_matching(measured, angles, TILT, options,
                                         initial_shifts_px=first)
        assert np.abs(truth).max() > 3.0
        assert np.isfinite(result.shifts_px).all()
        assert np.abs(result.shifts_px - start).max() <= 1.0 + 1e-9
        assert np.abs(remove_rigid_drift(result.shifts_px, angles, TILT)[1]).max() < 0.02
        held = result.history[-1]["at_bound"]
        assert held and all(0 <= i < len(angles) for i in held)
        at = np.abs(result.shifts_px - start).max(axis=1) >= 1.0 - 1e-9
        assert sorted(np.nonzero(at)[0].tolist()) == sorted(held)
        assert any("held at align.coarse_search_px" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- the stage


def _stage_config(directory: Path, **align) -> Path:
    cfg = {
        "output": {"dir": "run"},
        "align": {"crop_shape": [40, 44], "binning": [2, 1], "max_iterations": 30, **align},
        "recon": {"volume_shape": [20, 32, 32]},
        "runtime": {"device": "cpu"},
    }
    path = directory / "align.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def stage_input(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    work = tmp_path_factory.mktemp("align_stage")
    _, angles, _, truth, measured = _misaligned((20, 32, 32), 30, 2.0, seed=8)
    write_projections(work / "run" / "projections.h5", ProjectionSet(
        measured.numpy(), angles, TILT, 2.72e-8,
        extra={"fourier_error": np.arange(30, dtype=np.float64)}))
    return work, angles, truth


def _run_stage(stage_input, directory: Path, n_ranks: int = 1, **align):
    work, _, _ = stage_input
    run = directory / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "projections.h5").write_bytes((work / "run" / "projections.h5").read_bytes())
    result = adept("align", "-c", str(_stage_config(directory, **align)), cwd=directory,
                   n_ranks=n_ranks)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def serial_stage(stage_input, tmp_path_factory) -> Path:
    return _run_stage(stage_input, tmp_path_factory.mktemp("serial_align"))


def test_adept_align_writes_aligned_projections(stage_input, serial_stage):
    _, angles, truth = stage_input
    out = read_projections(serial_stage / "aligned.h5")
    assert out.projections.shape == (30, 40, 44)
    np.testing.assert_array_equal(out.angles_deg, angles)
    assert out.tilt_deg == TILT and out.pixel_size_m == pytest.approx(2.72e-8)
    assert out.shifts_px.shape == (30, 2)
    assert residual_error_px(out.shifts_px, truth, angles) < 0.15
    np.testing.assert_array_equal(out.extra["fourier_error"], np.arange(30))
    assert out.sample_kind == "isolated"  # the decision recon.sample: auto follows
    history = json.loads((serial_stage / "align_history.json").read_text())
    assert out.extra["align_residual"].shape == (30, len(history["iterations"]))
    assert history["iterations"][-1]["max_update_px"] < 0.01 or \
        len([h for h in history["iterations"] if h["level"] == 1]) == 30
    for name in ("align_shifts.png", "align_convergence.png"):
        assert (serial_stage / "figures" / name).stat().st_size > 1000


def test_aligned_projections_match_the_ideal_ones(stage_input, serial_stage):
    """Undoing the estimated shifts gives the ideal projections up to the rigid drift."""
    _, angles, truth = stage_input
    out = read_projections(serial_stage / "aligned.h5")
    raw = read_projections(serial_stage / "projections.h5").projections
    from hpc_adept.stages.align import shift_and_crop

    # re-shift the raw data by the truth (less the drift the estimate cannot see)
    offset = out.shifts_px - truth
    offset_clean = offset - remove_rigid_drift(offset - offset.mean(0), angles, TILT)[0]
    ideal = shift_and_crop(raw, truth + offset_clean, (40, 44))
    rel = np.linalg.norm(out.projections - ideal) / np.linalg.norm(ideal)
    misaligned = shift_and_crop(raw, np.zeros_like(truth), (40, 44))
    rel0 = np.linalg.norm(misaligned - ideal) / np.linalg.norm(ideal)
    assert rel < 0.15 * rel0, (rel, rel0)


def test_align_disabled_only_crops(stage_input, tmp_path):
    run = _run_stage(stage_input, tmp_path, enabled=False, crop_shape=[40, 500])
    out = read_projections(run / "aligned.h5")
    raw = read_projections(run / "projections.h5").projections
    assert out.projections.shape == (30, 40, raw.shape[2])  # 500 > width: kept whole
    assert not out.shifts_px.any()
    assert out.sample_kind is None  # nothing decided the kind of sample
    start = (raw.shape[1] - 40) // 2
    np.testing.assert_allclose(out.projections, raw[:, start:start + 40], atol=1e-5)
    assert not (run / "figures" / "align_convergence.png").exists()


def test_align_without_projections_is_a_clear_error(tmp_path):
    result = adept("align", "-c", str(_stage_config(tmp_path)), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "projections.h5 not found" in lines[0]
    assert not (tmp_path / "run" / "aligned.h5").exists()


def test_align_bad_binning_is_a_config_error(tmp_path):
    result = adept("align", "-c", str(_stage_config(tmp_path, binning=[4, 3, 1])),
                   cwd=tmp_path)
    assert result.returncode == 2
    assert "align.binning must be positive factors that divide the first" in result.stderr


@pytest.mark.mpi
def test_two_ranks_give_the_same_shifts(stage_input, serial_stage, tmp_path):
    run = _run_stage(stage_input, tmp_path, n_ranks=2)
    one = read_projections(serial_stage / "aligned.h5")
    two = read_projections(run / "aligned.h5")
    np.testing.assert_allclose(two.shifts_px, one.shifts_px, rtol=0, atol=1e-4)
    np.testing.assert_allclose(two.projections, one.projections, rtol=0,
                               atol=1e-5 * math.ceil(np.abs(one.projections).max()))
    history = json.loads((run / "align_history.json").read_text())
    assert history["n_ranks"] == 2


@pytest.mark.mpi
def test_two_ranks_give_the_same_shifts_with_the_widened_volume(stage_input, tmp_path):
    """The extended-sample method (held-out folds that keep their best shifts, the joint
    last level's coverage weights and momentum, the plane fit) on 1 and 2 ranks."""
    extended = dict(sample="extended", cross_folds=4,
                    max_iterations=4, highpass_sigma_px=3.0, coarse_lowpass_px=4.0)
    runs = [_run_stage(stage_input, tmp_path / f"ranks{n}", n_ranks=n, **extended)
            for n in (1, 2)]
    one, two = (read_projections(run / "aligned.h5") for run in runs)
    assert np.abs(one.shifts_px).max() > 0.5  # it moved
    np.testing.assert_allclose(two.shifts_px, one.shifts_px, rtol=0, atol=1e-4)
    histories = [json.loads((run / "align_history.json").read_text()) for run in runs]
    assert [h["n_ranks"] for h in histories] == [1, 2]
    assert sum(h["level"] == 1 for h in histories[1]["iterations"]) == 4  # all iterations
    # with the defaults of the extended method: the coarser levels' floor and the smooth
    # over-relaxation of the last level (30 angles: on) take part in the comparison
    options = histories[1]["options"]
    assert (options["coarse_flow_eigen_floor"], options["smooth_gain"]) == (0.3, 1.0)
    # the smooth-pattern check (on by default) reruns the last level alike on both
    checks = [h["smooth_check"] for h in histories]
    assert checks[0]["harmonics"] == [2, 3]
    assert checks[1]["iterations"] == checks[0]["iterations"] <= 4  # early only when held
    assert checks[0]["iterations"] == 4 or checks[0]["determined"]
    for key in ("smooth_distance", "along_pattern"):
        np.testing.assert_allclose(checks[1][key], checks[0][key], rtol=0, atol=1e-3)
    assert checks[1]["determined"] == checks[0]["determined"]
    # what the report reads of the structure is the same measure on any number of ranks
    ratios = [h["structure_ratio"] for h in histories]
    assert 0.0 < ratios[0] <= 1.0
    np.testing.assert_allclose(ratios[1], ratios[0], rtol=0, atol=1e-6)
    assert histories[0]["outlier_angles"] == histories[1]["outlier_angles"] == []


@pytest.mark.gpu
def test_cuda_alignment_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    shape = (20, 32, 32)
    _, angles, _, _, measured = _misaligned(shape, 24, 2.0, seed=3)
    options = AlignConfig(binning=(2, 1), max_iterations=10, volume_shape=shape)
    cpu = projection_matching(measured, angles, TILT, options)
    gpu = projection_matching(measured.cuda(), angles, TILT, options)
    np.testing.assert_allclose(gpu.shifts_px, cpu.shifts_px, rtol=0, atol=1e-3)


def test_memory_guard_refuses_an_alignment_that_cannot_fit(tmp_path):
    """A volume far beyond this machine's memory is refused before any work, in one line."""
    import yaml

    from hpc_adept.io import ProjectionSet, write_projections

    from .conftest import adept

    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    write_projections(run / "projections.h5", ProjectionSet(
        projections=rng.random((4, 32, 32), dtype=np.float32),
        angles_deg=np.arange(4) * 90.0, tilt_deg=61.0, pixel_size_m=1e-8))
    config = {"output": {"dir": "run"}, "align": {"volume_shape": [1024, 4096, 4096],
                                                  "crop_shape": [32, 32]},
              "runtime": {"device": "cpu"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = adept("align", "-c", "c.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "align: needs about" in lines[0], result.stderr
    assert "runtime.keep_host_memory: false" in lines[0]  # CPU: kept memory counted
    assert not (run / "aligned.h5").exists()


def test_align_options_resolve_the_volume_shape():
    """The stage passes the align section itself, its volume_shape defaulting to
    recon.volume_shape; projection_matching refuses a section without one."""
    from hpc_adept.config import Config, ReconConfig
    from hpc_adept.stages.align import AlignPlan, align_options

    cfg = Config(recon=ReconConfig(volume_shape=(8, 16, 16)))
    plan = AlignPlan(Path("p.h5"), Path("a.h5"), Path("h.json"), Path("."), (4, 32, 32),
                     (32, 32), (8, 16, 16))
    options = align_options(cfg, plan)
    assert options == AlignConfig(volume_shape=(8, 16, 16), sample="isolated",
                                  lateral_margin=0, fit_phase_plane=False,
                                  flow_eigen_floor=0.0, coarse_flow_eigen_floor=0.0)
    with pytest.raises(ValueError, match="volume_shape"):
        projection_matching(torch.zeros(4, 32, 32), np.zeros(4), TILT, AlignConfig())
