"""The detector window's lateral reach into an extended slab (hpc_adept.lamino.region)."""

import numpy as np
import pytest
import torch

from hpc_adept.lamino import Geometry, LaminoOperator
from hpc_adept.lamino.region import (
    extended_shape,
    lateral_margin_px,
    lateral_run_px,
    window_reach_px,
)


def test_lateral_run_follows_the_ray_direction():
    # DESIGN section 3: d = (sin t cos a, -cos t cos a, sin a), a = 90 - L
    assert lateral_run_px(40, 61.0) == pytest.approx(40 * np.tan(np.radians(61.0)))
    with pytest.raises(ValueError, match="tomography"):
        lateral_run_px(40, 90.0)


@pytest.mark.parametrize("tilt", [61.0, 45.0])
def test_reach_bounds_what_the_window_sees(tilt):
    region, detector = (12, 16, 16), (22, 24)
    reach = window_reach_px(region[0], detector, tilt)
    margin = lateral_margin_px(region, detector, tilt)
    wide = extended_shape(region, margin)
    nz, ny, nx = wide
    y, x = np.mgrid[0:ny, 0:nx]
    radius = np.hypot(y - (ny - 1) / 2, x - (nx - 1) / 2)
    angles = np.arange(0, 360, 3.0)
    op = LaminoOperator(Geometry(angles, tilt, wide, detector), kernel="torch")
    beyond = np.broadcast_to(radius > reach + 1.5, wide).astype(np.float64)
    inside = np.broadcast_to(np.abs(radius - (reach - 2.5)) < 0.5, wide).astype(np.float64)
    assert radius.max() > reach + 1.5  # the widened slab holds points beyond the reach
    with torch.no_grad():
        unseen = op.forward(torch.from_numpy(beyond.copy())).abs().max().item()
        seen = op.forward(torch.from_numpy(inside.copy())).abs().max().item()
    assert unseen == 0.0
    assert seen > 0.5


def test_extended_shape_keeps_the_centre():
    assert extended_shape((4, 10, 12), 3) == (4, 16, 18)
