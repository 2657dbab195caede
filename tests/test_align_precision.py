"""The Cramer-Rao bound on each projection's shift (:mod:`hpc_adept.align.precision`)
against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hpc_adept.align.drift import rigid_drift_basis
from hpc_adept.align.patterns import harmonic_patterns
from hpc_adept.align.plane import orthonormal_planes, plane_basis, remove_planes
from hpc_adept.align.precision import (
    direction_bounds_px,
    pattern_information,
    shift_information,
    stencil_gradient,
)
from hpc_adept.linop import FunctionOperator

SIZE = 64


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    centre = (SIZE - 1) / 2
    axis = torch.arange(SIZE, dtype=torch.float64) - centre
    return axis[:, None].expand(SIZE, SIZE), axis[None, :].expand(SIZE, SIZE)


def test_stencil_gradient_of_a_smooth_image_is_its_derivative():
    rows, cols = _grid()
    image = torch.exp(-(rows ** 2 + (cols - 5) ** 2) / (2 * 4.0 ** 2))
    d_row, d_col = stencil_gradient(image[None])
    np.testing.assert_allclose(d_row[0], -rows / 16 * image, atol=2e-4)
    np.testing.assert_allclose(d_col[0], -(cols - 5) / 16 * image, atol=2e-4)
    cubic = (0.01 * cols ** 3 - 0.2 * rows ** 2 * cols)[None]  # exact up to the edges
    d_row, d_col = stencil_gradient(cubic)
    np.testing.assert_allclose(d_row[0, 2:-2], (-0.4 * rows * cols)[2:-2], atol=1e-9)
    np.testing.assert_allclose(d_col[0, :, 2:-2], (0.03 * cols ** 2 - 0.2 * rows ** 2)[:, 2:-2],
                               atol=1e-9)


@pytest.mark.parametrize("planes", [False, True])
def test_a_gaussian_spot_has_the_closed_form_bound(planes):
    """A spot ``A exp(-r^2 / 2 s^2)`` in white noise ``sigma``: information
    ``pi A^2 / (2 sigma^2)`` per axis whatever ``s``; fitting the offset and ramps takes
    away the part of the gradient that a ramp along the same axis explains
    (``(sum x dG/dx)^2 / (sigma^2 sum x^2)``; the offset is orthogonal to it)."""
    rows, cols = _grid()
    amplitude, sigma, width = 2.0, 0.05, 4.0
    spot = amplitude * torch.exp(-(rows ** 2 + cols ** 2) / (2 * width ** 2))
    information = math.pi * amplitude ** 2 / (2 * sigma ** 2)
    if planes:
        d_col = -cols / width ** 2 * spot  # the analytic derivative
        information -= float((cols * d_col).sum()) ** 2 / (sigma ** 2 * float((cols ** 2).sum()))
    bounds = direction_bounds_px(shift_information(spot[None], sigma, planes=planes))
    np.testing.assert_allclose(bounds[0], 1 / math.sqrt(information), rtol=1e-3)


def test_stripes_do_not_fix_the_shift_along_them():
    """Wires that cross the whole window: no information along them (the bound is
    infinite, or the prior with one), the usual bound across them."""
    rows, _ = _grid()
    stripes = torch.cos(2 * math.pi * rows / 8.0)
    bounds = direction_bounds_px(shift_information(stripes[None], 0.02))
    assert math.isfinite(bounds[0, 0]) and bounds[0, 0] < 0.01
    assert math.isinf(bounds[0, 1])
    with_prior = direction_bounds_px(shift_information(stripes[None], 0.02, prior_px=2.0))
    assert with_prior[0, 1] == pytest.approx(2.0, rel=1e-9)


def test_a_ramp_shifted_is_an_offset():
    """A linear ramp moved along itself changes by a constant: fixed without the offset
    fit, not at all with it (the information is what the nuisance leaves)."""
    _, cols = _grid()
    ramp = 0.01 * cols
    free = direction_bounds_px(shift_information(ramp[None], 0.02))
    blind = direction_bounds_px(shift_information(ramp[None], 0.02, planes=True))
    assert math.isfinite(free[0, 0]) and math.isinf(blind[0, 0])


def test_weights_and_noise_scale_the_information():
    rows, cols = _grid()
    spot = torch.exp(-(rows ** 2 + cols ** 2) / 18.0)
    stack = spot.expand(3, SIZE, SIZE)
    info = shift_information(stack, torch.tensor([0.1, 0.2, 0.1]),
                             weights=torch.stack([torch.ones(SIZE, SIZE)] * 2
                                                 + [torch.zeros(SIZE, SIZE)]))
    np.testing.assert_allclose(info[1], info[0] / 4, rtol=1e-12)
    assert torch.all(torch.isinf(direction_bounds_px(info)[2]))


def test_small_images_are_refused():
    with pytest.raises(ValueError, match="3 x 3"):
        stencil_gradient(torch.zeros(1, 2, 8))


def _blobs(n: int, seed: int = 3) -> torch.Tensor:
    """``n`` smooth random images [n, SIZE, SIZE] (structure in both directions)."""
    rows, cols = _grid()
    rng = np.random.default_rng(seed)
    images = torch.zeros(n, SIZE, SIZE, dtype=torch.float64)
    for k in range(n):
        for _ in range(12):
            r0, c0 = rng.uniform(-24, 24, 2)
            images[k] += rng.uniform(0.5, 1.5) * torch.exp(
                -((rows - r0) ** 2 + (cols - c0) ** 2) / (2 * rng.uniform(2, 5) ** 2))
    return images


def _known(images: torch.Tensor, patterns: torch.Tensor, sigma: float,
           weights: torch.Tensor | None = None, planes: bool = False) -> torch.Tensor:
    """The patterns' information with every projection known: their projection onto the
    per-projection information of :func:`shift_information`."""
    per_angle = shift_information(images, sigma, weights=weights, planes=planes)
    return torch.einsum("pna,nab,qnb->pq", patterns, per_angle, patterns)


def _pixel_values(images: torch.Tensor, free: torch.Tensor) -> FunctionOperator:
    """A "volume" that is the value of every pixel where ``free`` (else 0)."""
    mask = free.to(images.dtype)
    return FunctionOperator(lambda x: x * mask, lambda y: y * mask, images.shape, images.shape)


def test_a_volume_that_explains_nothing_leaves_the_known_volume_information():
    images = _blobs(6)
    patterns = harmonic_patterns(np.arange(6) * 60.0, 2, 2)
    zero = FunctionOperator(lambda x: torch.zeros_like(images),
                            lambda y: torch.zeros(2, dtype=y.dtype), (2,), images.shape)
    d_row, d_col = stencil_gradient(images)
    unknown = pattern_information(zero, d_row, d_col, patterns, 0.05, iterations=5)
    np.testing.assert_allclose(unknown, _known(images, patterns, 0.05), rtol=1e-10)


@pytest.mark.parametrize("planes", [False, True])
def test_what_the_volume_explains_informs_nothing(planes):
    """A volume that can take any value on some pixels: the information is that of the
    other pixels alone (with the offsets and ramps fitted to them); on every pixel, none.
    CGLS solves these in a few steps; the 300 asked for check that it stops there (further
    steps divided rounding by rounding: 1e155 before the relative stop)."""
    images = _blobs(5)
    patterns = harmonic_patterns(np.arange(5) * 72.0, 2, 2)[:3]
    d_row, d_col = stencil_gradient(images)
    blind = None
    if planes:
        basis = orthonormal_planes(plane_basis((SIZE, SIZE), 1, images))
        blind = lambda stack: remove_planes(stack, basis)  # noqa: E731
    rows, cols = _grid()
    free = (rows.abs() < 10) & (cols > -5)
    free = free.expand(5, SIZE, SIZE)
    partial = pattern_information(_pixel_values(images, free), d_row, d_col, patterns, 0.05,
                                  iterations=300, blind=blind)
    expected = _known(images, patterns, 0.05, weights=(~free).double(), planes=planes)
    np.testing.assert_allclose(partial, expected, rtol=1e-6, atol=1e-6 * float(expected.trace()))
    everything = pattern_information(_pixel_values(images, torch.ones_like(free)), d_row, d_col,
                                     patterns, 0.05, iterations=5, blind=blind)
    assert float(everything.abs().max()) < 1e-12 * float(expected.trace())


def test_harmonic_patterns_are_orthonormal_and_free_of_the_rigid_drift():
    angles = np.arange(32) * 360.0 / 32
    patterns = harmonic_patterns(angles, 2, 4).reshape(12, 64).numpy()
    np.testing.assert_allclose(patterns @ patterns.T, np.eye(12), atol=1e-12)
    unobservable = np.concatenate([np.tile(np.eye(2), (32, 1)),
                                   rigid_drift_basis(angles, 61.0).reshape(64, 3)], axis=1)
    assert np.abs(patterns @ unobservable).max() < 1e-12


def test_harmonic_patterns_keep_the_two_observable_patterns_of_harmonics_0_and_1():
    """Harmonics 0 and 1 hold six patterns; the global offset and the lateral rigid drift
    take four of them (p_z moves every row alike: the offset's)."""
    angles = np.arange(32) * 360.0 / 32
    gauge = rigid_drift_basis(angles, 61.0)
    observable = harmonic_patterns(angles, 0, 1, gauge=gauge).reshape(-1, 64).numpy()
    assert observable.shape == (2, 64)
    np.testing.assert_allclose(observable @ observable.T, np.eye(2), atol=1e-12)
    unobservable = np.concatenate([np.tile(np.eye(2), (32, 1)), gauge.reshape(64, 3)], axis=1)
    assert np.abs(observable @ unobservable).max() < 1e-12
    # with the gauge, harmonics 0 to 3 span harmonics 2 and 3 and those two patterns
    smooth = harmonic_patterns(angles, 0, 3, gauge=gauge).reshape(-1, 64).numpy()
    assert smooth.shape == (10, 64)
    inside = np.concatenate([observable, harmonic_patterns(angles, 2, 3).reshape(8, 64)])
    np.testing.assert_allclose(np.linalg.svd(smooth @ inside.T, compute_uv=False),
                               np.ones(10), atol=1e-12)
    # on a half turn the harmonics and the translations overlap in part: what is left is
    # the harmonics' span projected off the translations, one pattern per dimension
    arc = np.linspace(0.0, 180.0, 32)
    gauge = rigid_drift_basis(arc, 61.0)
    unobservable = np.concatenate([np.tile(np.eye(2), (32, 1)), gauge.reshape(64, 3)], axis=1)
    for lowest, highest, count in ((1, 1, 2), (2, 3, 8), (1, 3, 10), (0, 3, 10)):
        kept = harmonic_patterns(arc, lowest, highest, gauge=gauge).reshape(-1, 64).numpy()
        assert kept.shape[0] == count, (lowest, highest)
        np.testing.assert_allclose(kept @ kept.T, np.eye(count), atol=1e-12)
        assert np.abs(kept @ unobservable).max() < 1e-10


def test_the_volume_unknown_bound_rises_with_the_fit_iterations():
    """CGLS lowers its residual at every step: each pattern's unexplained part, hence its
    information, can only shrink as the volume fit runs longer, and the bound rises."""
    images = _blobs(6)
    patterns = harmonic_patterns(np.arange(6) * 60.0, 2, 2)[:1]
    d_row, d_col = stencil_gradient(images)
    # a volume that explains the smooth part of each image only (a Gaussian blur of its
    # values): CGLS needs many steps for it, and gets more of the derivative with each
    freq = torch.fft.fftfreq(SIZE, dtype=torch.float64)
    gain = torch.exp(-2 * (math.pi * 3.0) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))

    def gaussian(x: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifft2(torch.fft.fft2(x) * gain).real.to(x.dtype)

    blur = FunctionOperator(gaussian, gaussian, images.shape, images.shape)
    info = [float(pattern_information(blur, d_row, d_col, patterns, 0.05, iterations=k))
            for k in (0, 1, 2, 4, 8, 16, 32)]
    assert all(info[k + 1] <= info[k] * (1 + 1e-12) for k in range(len(info) - 1))
    assert info[-1] < 0.5 * info[0]


def test_harmonic_patterns_refuse_aliased_harmonics():
    with pytest.raises(ValueError, match="do not tell"):
        harmonic_patterns(np.arange(4) * 90.0, 2, 2)  # sin 2 theta is 0 at every angle
    with pytest.raises(ValueError, match="lowest <= highest"):
        harmonic_patterns(np.arange(32) * 11.25, 2, 1)
    with pytest.raises(ValueError, match="takes every pattern"):
        harmonic_patterns(np.arange(32) * 11.25, 0, 0, gauge=np.zeros((32, 2, 0)))
