"""The Cramer-Rao bound on each projection's shift (:mod:`hpc_adept.align.precision`)
against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hpc_adept.align.precision import direction_bounds_px, shift_information, stencil_gradient

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
