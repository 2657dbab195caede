"""Ptychography forward model of the simulator against the DESIGN conventions."""

from __future__ import annotations

import numpy as np
import pytest

from hpc_adept import sim
from hpc_adept.stages.simulate import auto_projection_shape


def test_probe_unit_energy_and_centered():
    probe = sim.make_probe(64, 24.0)
    assert probe.shape == (64, 64)
    assert np.sum(np.abs(probe) ** 2) == pytest.approx(1.0)
    intensity = np.abs(probe) ** 2
    coords = np.arange(64) - 31.5
    assert np.sum(intensity.sum(1) * coords) == pytest.approx(0.0, abs=1e-6)
    assert np.sum(intensity.sum(0) * coords) == pytest.approx(0.0, abs=1e-6)


def test_positions_cover_field():
    rng = np.random.default_rng(0)
    pos = sim.raster_positions((50, 30), step_px=8.0, jitter_px=0.0, rng=rng)
    assert pos[:, 0].min() == pytest.approx(-24.5) and pos[:, 0].max() == pytest.approx(24.5)
    assert pos[:, 1].min() == pytest.approx(-14.5) and pos[:, 1].max() == pytest.approx(14.5)
    steps = np.diff(np.unique(pos[:, 0]))
    assert steps.max() <= 8.0


def test_energy_conservation_and_dc_position():
    probe = sim.make_probe(32, 12.0)
    field = np.zeros((20, 20))
    obj = sim.object_from_projection(field, 0.0, pad=20)
    frames = sim.diffraction_patterns(obj, 20, field.shape, probe, np.zeros((1, 2)))
    assert frames.sum() == pytest.approx(1.0)  # pure phase object, orthonormal FFT
    # A flat object: the far field of a broad probe peaks at DC, index N // 2.
    flat = np.ones((32, 32)) / 32.0
    frame = sim.diffraction_patterns(obj, 20, field.shape, flat, np.zeros((1, 2)))[0]
    assert np.unravel_index(frame.argmax(), frame.shape) == (16, 16)


def test_position_convention_and_subpixel_consistency():
    rng = np.random.default_rng(1)
    field = rng.uniform(0, 1, (40, 40))
    probe = sim.make_probe(16, 8.0)
    pad = 12
    obj = sim.object_from_projection(field, 0.1, pad)
    # Moving the probe by +k pixels equals moving the object by -k pixels.
    shifted_field = np.roll(field, (-3, 2), axis=(0, 1))
    obj_shifted = sim.object_from_projection(shifted_field, 0.1, pad)
    a = sim.diffraction_patterns(obj, pad, field.shape, probe, np.array([[3.0, -2.0]]))
    b = sim.diffraction_patterns(obj_shifted, pad, field.shape, probe, np.zeros((1, 2)))
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    # Sub-pixel positions interpolate smoothly between integer ones.
    c0 = sim.diffraction_patterns(obj, pad, field.shape, probe, np.array([[0.0, 0.0]]))
    c1 = sim.diffraction_patterns(obj, pad, field.shape, probe, np.array([[0.0, 1.0]]))
    ch = sim.diffraction_patterns(obj, pad, field.shape, probe, np.array([[0.0, 0.5]]))
    assert np.abs(ch - c0).sum() < np.abs(c1 - c0).sum()
    assert np.abs(ch - c1).sum() < np.abs(c1 - c0).sum()


def test_patch_location_matches_design():
    # Frame pixel i of a probe at offset p sees projection pixel (m-1)/2 + p + i - (N-1)/2.
    # An absorbing pixel at offset (+4, -3) is seen through a one-pixel probe at frame
    # index N/2 (offset +0.5 from the probe center) when p = (3.5, -3.5).
    field = np.zeros((21, 21))
    field[10 + 4, 10 - 3] = 1.0
    n, pad = 8, 10
    obj = sim.object_from_projection(field, 1.0, pad)  # |O|^2 = exp(-2) on that pixel
    delta = np.zeros((n, n), complex)
    delta[n // 2, n // 2] = 1.0
    hit = sim.diffraction_patterns(obj, pad, field.shape, delta, np.array([[3.5, -3.5]]))
    miss = sim.diffraction_patterns(obj, pad, field.shape, delta, np.array([[2.5, -3.5]]))
    assert hit.sum() == pytest.approx(np.exp(-2.0))
    assert miss.sum() == pytest.approx(1.0)


def test_auto_projection_shape_holds_the_volume():
    nv, nu = auto_projection_shape((144, 160, 160), 61.0)
    assert nv % 2 == 0 and nu % 2 == 0
    assert 230 <= nu <= 240 and 236 <= nv <= 246
    assert auto_projection_shape((10, 10, 10), 90.0)[0] >= 10


def test_projection_only_simulation_with_noise(tmp_path):
    """``simulate.scans: false`` writes no scan; ``projection_noise`` is Gaussian noise of the
    requested relative RMS on projections.h5, the truth stays exact."""
    import numpy as np
    import yaml

    from hpc_adept.io import read_projections

    from .conftest import adept

    config = {"data": {"path": "dataset"}, "output": {"dir": "run"},
              "simulate": {"phantom": "procedural", "volume_shape": [16, 24, 24],
                           "n_angles": 8, "scans": False, "projection_noise": 0.05},
              "runtime": {"device": "cpu"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = adept("simulate", "-c", "c.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not list((tmp_path / "dataset").glob("*.cxi"))
    noisy = read_projections(tmp_path / "run" / "projections.h5").projections
    exact = read_projections(tmp_path / "dataset" / "true_projections.h5").projections
    ratio = np.sqrt(np.mean((noisy - exact) ** 2) / np.mean(exact.astype(np.float64) ** 2))
    assert abs(ratio - 0.05) < 0.005
    result = adept("simulate", "-c", "c.yaml", "--set", "simulate.write_projections=false",
                   cwd=tmp_path)
    assert result.returncode == 2 and "nothing to simulate" in result.stderr


def test_drift_shifts_the_scans_and_is_recorded(tmp_path):
    import numpy as np
    import yaml

    from hpc_adept.io import read_cxi, read_projections
    from hpc_adept.stages.simulate import drift_shifts

    from .conftest import adept

    shifts = drift_shifts(2000, 2.0, seed=1)
    assert shifts.shape == (2000, 2) and abs(shifts.std() - 2.0) < 0.1
    assert np.abs(shifts).max() <= 6.0
    config = {"data": {"path": "plain"}, "output": {"dir": "run"},
              "simulate": {"phantom": "procedural", "volume_shape": [8, 16, 16],
                           "n_angles": 3, "frame_size": 16, "poisson_noise": False,
                           "position_jitter_px": 0.0, "write_projections": False},
              "runtime": {"device": "cpu"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert adept("simulate", "-c", "c.yaml", cwd=tmp_path).returncode == 0
    result = adept("simulate", "-c", "c.yaml", "--set", "data.path=drifted",
                   "simulate.drift_px=1.5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    truth = read_projections(tmp_path / "drifted" / "true_projections.h5")
    np.testing.assert_allclose(truth.extra["drift_px"], drift_shifts(3, 1.5, 0))
    assert "drift_px" not in read_projections(tmp_path / "plain" / "true_projections.h5").extra
    plain = read_cxi(tmp_path / "plain" / "scan_0000.cxi").counts
    drifted = read_cxi(tmp_path / "drifted" / "scan_0000.cxi").counts
    assert not np.allclose(plain, drifted)
