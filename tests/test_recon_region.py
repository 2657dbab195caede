"""A region inside an extended sample: plane-blind data terms, the widened volume, the
rays it explains, and ``adept recon`` on such data (issue 18)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpc_adept.config import load_config
from hpc_adept.dip.losses import data_loss
from hpc_adept.errors import ConfigError
from hpc_adept.io import ProjectionSet, read_volume, write_projections
from hpc_adept.lamino import Geometry, LaminoOperator
from hpc_adept.lamino.coverage import full_path_mask
from hpc_adept.lamino.planes import (
    dielectric_level,
    level_slices,
    plane_basis,
    remove_planes,
)
from hpc_adept.lamino.region import (
    extend_columns,
    extended_shape,
    lateral_margin_px,
    lateral_run_px,
    looks_isolated,
    plan_region,
    reference_to_border,
)
from hpc_adept.linop import FunctionOperator, dottest
from hpc_adept.phantom import procedural_phantom
from hpc_adept.stages.simulate import auto_projection_shape
from tests.conftest import adept

TILT = 61.0


def _planes(n, shape, scale, seed=1):
    coef = np.random.default_rng(seed).uniform(-scale, scale, (n, 3))
    return torch.einsum("nk,kij->nij", torch.from_numpy(coef), plane_basis(shape))


def test_remove_planes_is_exact_idempotent_and_self_adjoint():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.standard_normal((4, 9, 11)))
    planes = _planes(4, (9, 11), 0.5)
    clean = remove_planes(images)
    torch.testing.assert_close(remove_planes(images + planes), clean, rtol=0, atol=1e-12)
    torch.testing.assert_close(remove_planes(clean), clean, rtol=0, atol=1e-12)
    assert remove_planes(planes).abs().max() < 1e-12
    weights = torch.from_numpy(rng.uniform(0.0, 1.0, (4, 9, 11)))
    op = FunctionOperator(lambda x: remove_planes(x, weights) * weights,
                          lambda y: remove_planes(y, weights) * weights,
                          (4, 9, 11), (4, 9, 11))
    dottest(op, rtol=1e-10)  # W P_W is symmetric: the weighted projection's adjoint


def test_plane_free_data_term_is_blind_to_offsets_and_ramps():
    rng = np.random.default_rng(2)
    predicted = torch.from_numpy(rng.standard_normal((3, 8, 10)))
    target = torch.from_numpy(rng.standard_normal((3, 8, 10)))
    shifted = target + _planes(3, (8, 10), 0.5)
    weights = torch.from_numpy((rng.uniform(size=(3, 8, 10)) > 0.3).astype(np.float64))
    for w in (None, weights):
        a = data_loss(predicted, target, w, plane_free=True)
        b = data_loss(predicted, shifted, w, plane_free=True)
        assert float(abs(a - b)) < 1e-10 * float(a)
    assert float(data_loss(predicted, shifted)) != pytest.approx(
        float(data_loss(predicted, target)))


def test_full_path_mask_marks_rays_that_cross_the_slab_inside():
    region = (6, 12, 12)
    window = auto_projection_shape(region, TILT)
    angles = np.arange(0, 360, 30.0)
    # the region alone is narrower than one ray's lateral run: no ray crosses it whole
    assert lateral_run_px(6, TILT) < 12
    inside = full_path_mask(Geometry(angles, TILT, region, window))
    wide = extended_shape(region, int(np.ceil(lateral_run_px(6, TILT))))
    widened = full_path_mask(Geometry(angles, TILT, wide, window))
    assert widened.shape == (len(angles), *window)
    assert set(np.unique(widened.numpy())) <= {0.0, 1.0}
    assert widened.sum() > inside.sum()
    # every ray through the region's centre column crosses the widened slab inside
    centre_col = window[1] // 2
    assert torch.all(widened[:, window[0] // 2 - 1:window[0] // 2 + 1, centre_col] == 1)


def test_plan_region_margins_and_rounding():
    auto = plan_region((40, 56, 56), TILT, True, "auto", 4)
    assert auto.margin_px >= np.ceil(lateral_run_px(40, TILT) / 2)
    assert all(n % 4 == 0 for n in auto.shape[1:])
    assert plan_region((40, 56, 56), TILT, False).margin_px == 0
    assert plan_region((40, 56, 56), TILT, True, 10, 1).margin_px == 10
    cut = plan_region((4, 6, 8), TILT, True, 2).crop(np.arange(4 * 10 * 12.0).reshape(4, 10, 12))
    assert cut.shape == (4, 6, 8) and cut[0, 0, 0] == 2 * 12 + 2


def test_extend_columns_continues_the_edges_and_fades_out():
    p = np.linspace(1.0, 2.0, 12)[None, None].repeat(3, axis=1)
    e = extend_columns(p, 6)
    assert e.shape == (1, 3, 24)
    np.testing.assert_array_equal(e[..., 6:18], p)
    assert abs(e[0, 0, 5] - p[0, 0, 1]) < 0.1 and abs(e[0, 0, 18] - p[0, 0, -2]) < 0.1
    assert abs(e[0, 0, 0]) < 0.1 * p.max() and abs(e[0, 0, -1]) < 0.1 * p.max()


def _extended_data(region, n_angles=16, seed=0):
    window = auto_projection_shape(region, TILT)
    m = lateral_margin_px(region, window, TILT)
    wide = procedural_phantom(extended_shape(region, m), 27.2e-9, seed).astype(np.float64)
    angles = np.arange(n_angles) * 360.0 / n_angles
    op = LaminoOperator(Geometry(angles, TILT, wide.shape, window))
    with torch.no_grad():
        extended = op.forward(torch.from_numpy(wide)).numpy()
    isolated_vol = np.ascontiguousarray(wide[:, m:m + region[1], m:m + region[2]])
    op_region = LaminoOperator(Geometry(angles, TILT, region, window))
    with torch.no_grad():
        isolated = op_region.forward(torch.from_numpy(isolated_vol)).numpy()
    return angles, extended, isolated


def test_border_tells_isolated_from_extended():
    for seed in (3, 4):
        _, extended, isolated = _extended_data((6, 16, 16), seed=seed)
        assert looks_isolated(isolated)
        assert not looks_isolated(extended)
        # without a vacuum reference: an offset and a ramp per projection change nothing
        planes = _planes(len(isolated), isolated.shape[1:], 0.5, seed).numpy()
        assert looks_isolated(isolated + planes)
        assert not looks_isolated(extended + planes)


def test_border_reference_needs_every_projection_empty_at_its_border():
    """The plan looks at eight projections; one with chip at its border among the others
    keeps the reconstruction blind to planes instead of referenced to that border."""
    from hpc_adept.lamino.region import sample_indices
    from hpc_adept.stages.recon import recon_inputs

    angles, extended, isolated = _extended_data((6, 16, 16), n_angles=16, seed=9)
    flag = {"phase_offset_arbitrary": np.ones(len(angles), np.uint8)}
    cfg = load_config(None, ["recon.volume_shape=[6,16,16]"])
    ps = ProjectionSet(isolated.astype(np.float32), angles, TILT, 27.2e-9, extra=flag)
    got, region = recon_inputs(cfg, ps)
    assert region.border_referenced and not region.plane_free and got is not ps
    unseen = sorted(set(range(16)) - set(sample_indices(16)))[0]
    mixed = isolated.copy()
    mixed[unseen] = extended[unseen]
    ps = ProjectionSet(mixed.astype(np.float32), angles, TILT, 27.2e-9, extra=flag)
    got, region = recon_inputs(cfg, ps)
    assert not region.border_referenced and region.plane_free and got is ps


@pytest.mark.mpi
def test_border_referenced_recon_is_the_same_on_two_ranks(tmp_path):
    """Every rank references the projections itself: FBP and a few DIP steps give the same
    bits on 1 and 2 ranks."""
    angles, _, isolated = _extended_data((6, 16, 16), n_angles=16, seed=10)
    planes = _planes(len(angles), isolated.shape[1:], 0.5, seed=11).numpy()
    flag = {"phase_offset_arbitrary": np.ones(len(angles), np.uint8)}
    volumes = {}
    for ranks in (1, 2):
        run = tmp_path / f"r{ranks}"
        run.mkdir()
        write_projections(run / "projections.h5", ProjectionSet(
            (isolated + planes).astype(np.float32), angles, TILT, 27.2e-9, extra=flag))
        (run / "c.yaml").write_text(
            f"output:\n  dir: {run}\nrecon:\n  volume_shape: [8, 16, 16]\n"
            "  methods: [fbp, dip]\ndip:\n  iterations: 3\n  checkpoint_every: 0\n"
            "  in_channels: 4\n  channels: [4, 4, 4, 4, 4]\nruntime:\n  torch_threads: 1\n")
        r = adept("recon", "-c", str(run / "c.yaml"), n_ranks=ranks)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "referenced to its empty border" in r.stderr
        volumes[ranks] = [read_volume(run / f"volume_{m}.h5")[0] for m in ("fbp", "dip")]
    for one, two in zip(volumes[1], volumes[2], strict=True):
        np.testing.assert_array_equal(one, two)


def test_reference_to_border_removes_exactly_the_planes():
    """Referenced to its empty border, an isolated sample's projections lose the added
    offsets and ramps and keep their own content (including its mean); float32, a copy."""
    _, _, isolated = _extended_data((6, 16, 16), seed=5)
    planes = _planes(len(isolated), isolated.shape[1:], 0.5, 6).numpy()
    given = (isolated + planes).astype(np.float32)
    kept = given.copy()
    referenced = reference_to_border(given)
    assert referenced.dtype == np.float32 and referenced.shape == given.shape
    np.testing.assert_array_equal(given, kept)
    scale = float(np.abs(isolated).max())
    np.testing.assert_allclose(referenced, isolated, atol=2e-6 * scale + 1e-6)
    assert float(np.abs(isolated.mean(axis=(1, 2))).min()) > 0.1 * scale / 16


def test_recon_lateral_margin_is_checked():
    with pytest.raises(ConfigError, match="recon.lateral_margin"):
        load_config(None, ["recon.lateral_margin=-2"])
    with pytest.raises(ConfigError, match="recon.lateral_margin"):
        load_config(None, ["recon.lateral_margin=wide"])
    with pytest.raises(ConfigError, match="recon.sample"):
        load_config(None, ["recon.sample=slab"])


def test_recon_of_an_extended_sample_writes_the_region_blind_to_planes(tmp_path):
    region = (6, 16, 16)
    angles, extended, _ = _extended_data(region, n_angles=24)
    planes = _planes(len(angles), extended.shape[1:], 0.5).numpy()
    volumes = []
    for name, data in (("plain", extended), ("planes", extended + planes)):
        run = tmp_path / name
        run.mkdir()
        write_projections(run / "projections.h5", ProjectionSet(
            data.astype(np.float32), angles, TILT, 27.2e-9))
        config = run / "config.yaml"
        config.write_text(f"output:\n  dir: {run}\nrecon:\n  volume_shape: [6, 16, 16]\n"
                          f"  methods: [fbp]\n")
        r = adept("recon", "-c", str(config))
        assert r.returncode == 0, r.stderr
        assert "extended sample" in r.stderr
        volume, attrs = read_volume(run / "volume_fbp.h5")
        assert volume.shape == region
        assert attrs["sample"] == "extended" and attrs["lateral_margin_px"] > 0
        assert attrs["slices_leveled"] == 1
        # leveled: leveling again moves no slice (each slice's dielectric is at 0)
        assert np.abs(level_slices(volume) - volume).max() < 1e-6 * np.abs(volume).max()
        volumes.append(volume)
    scale = np.abs(volumes[0]).max()
    assert np.abs(volumes[0] - volumes[1]).max() < 1e-4 * scale


def test_recon_dip_of_an_extended_sample_writes_the_region(tmp_path):
    region = (8, 16, 16)
    angles, extended, _ = _extended_data(region, n_angles=12, seed=5)
    write_projections(tmp_path / "projections.h5", ProjectionSet(
        extended.astype(np.float32), angles, TILT, 27.2e-9))
    config = tmp_path / "config.yaml"
    config.write_text(f"output:\n  dir: {tmp_path}\nrecon:\n  volume_shape: [8, 16, 16]\n"
                      f"  methods: [dip]\ndip:\n  iterations: 3\n  in_channels: 4\n"
                      f"  channels: [4, 4, 4, 4, 4]\n")
    r = adept("recon", "-c", str(config))
    assert r.returncode == 0, r.stderr
    # the network computes the region widened by half a ray's lateral run (8 tan 61 / 2)
    assert "input [1, 4, 8, 32, 32]" in r.stderr
    volume, attrs = read_volume(tmp_path / "volume_dip.h5")
    assert volume.shape == region and attrs["sample"] == "extended"


def test_offsets_marked_arbitrary_of_an_isolated_sample_are_referenced_to_vacuum(tmp_path):
    region = (6, 16, 16)
    angles, _, isolated = _extended_data(region, n_angles=16, seed=8)
    planes = _planes(len(angles), isolated.shape[1:], 0.5, seed=7).numpy()
    flag = {"phase_offset_arbitrary": np.ones(len(angles), np.uint8)}
    volumes = []
    for name, data in (("plain", isolated), ("planes", isolated + planes)):
        run = tmp_path / name
        run.mkdir()
        write_projections(run / "projections.h5", ProjectionSet(
            data.astype(np.float32), angles, TILT, 27.2e-9, extra=flag))
        config = run / "config.yaml"
        config.write_text(f"output:\n  dir: {run}\nrecon:\n  volume_shape: [6, 16, 16]\n"
                          f"  methods: [fbp]\n  sample: isolated\n")
        r = adept("recon", "-c", str(config))
        assert r.returncode == 0, r.stderr
        volume, attrs = read_volume(run / "volume_fbp.h5")
        assert attrs["lateral_margin_px"] == 0 and attrs["plane_free"] == 0
        volumes.append(volume)
    # sample: isolated says the offsets are referenced: the planes stay in
    assert np.abs(volumes[0] - volumes[1]).max() > 1e-3 * np.abs(volumes[0]).max()
    for run in (tmp_path / "plain", tmp_path / "planes"):
        (run / "config.yaml").write_text(f"output:\n  dir: {run}\nrecon:\n  volume_shape: "
                                         f"[6, 16, 16]\n  methods: [fbp]\n")
        assert adept("recon", "-c", str(run / "config.yaml")).returncode == 0
    (a, attrs), (b, _) = (read_volume(r / "volume_fbp.h5")
                          for r in (tmp_path / "plain", tmp_path / "planes"))
    # sample: auto finds the border empty: it is vacuum, the phase's reference; each
    # projection's plane fitted there is removed, which keeps the sample's own constant
    # and ramp (a reconstruction blind to planes would lose them: not the referenced one)
    assert attrs["plane_free"] == 0 and attrs["border_referenced"] == 1
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()
    assert np.abs(a - volumes[0]).max() < 1e-4 * np.abs(a).max()


def test_the_margin_is_part_of_the_dip_problem():
    from hpc_adept.dip.resume import dip_settings

    base = dip_settings(load_config(None, []))
    assert dip_settings(load_config(None, ["recon.lateral_margin=12"])) != base
    assert dip_settings(load_config(None, ["recon.sample=isolated"])) != base


def test_exact_sums_score_the_masked_plane_free_data_term_alike():
    """The angles split's exact path (issue 21) and the plain data term give the same loss
    and volume gradient with pixel weights and the plane-free residual (float64)."""
    from dataclasses import replace

    from hpc_adept.config import DipConfig
    from hpc_adept.dip.exact import plan_exact_groups
    from hpc_adept.dip.shard import ShardData, plan_data_terms
    from hpc_adept.dip.trainer import SerialCommunicator, default_projector

    rng = np.random.default_rng(4)
    shape, window, angles = (4, 8, 8), (10, 12), np.arange(0, 360, 60.0)
    geometry = Geometry(angles, TILT, shape, window)
    targets = torch.from_numpy(rng.standard_normal((len(angles), *window)))
    weights = torch.from_numpy((rng.uniform(size=targets.shape) > 0.3).astype(np.float64))
    shard = ShardData(targets, geometry, np.arange(len(angles)), len(angles),
                      torch.zeros(4, dtype=torch.float64), 0.7, weights=weights,
                      plane_free=True)
    volume = torch.from_numpy(rng.standard_normal(shape)).requires_grad_(True)
    plain = plan_data_terms(shard, None, default_projector)[0](volume, SerialCommunicator())
    (expected,) = torch.autograd.grad(plain, volume)
    group = plan_exact_groups(shard, None, default_projector)[0]
    scored = group.score(volume)
    assert float(scored.slots[:len(angles)].sum().detach()) == pytest.approx(float(plain.detach()),
                                                                      rel=1e-10)
    total = sum(torch.autograd.grad(p, volume, r)[0]
                for p, r in zip(scored.projections, scored.residuals, strict=True))
    torch.testing.assert_close(total, expected, rtol=1e-9, atol=1e-12)
    assert replace(DipConfig()).decomposition == "angles"


def test_a_uniform_layer_of_a_wide_slab_is_invisible_and_leveled():
    """The null space that level_slices fixes: a uniform z layer of the widened volume,
    projected, masked to rays that cross it inside and stripped of each projection's plane,
    leaves nothing; level_slices takes per-slice offsets out and keeps the rest."""
    region = (6, 16, 16)
    wide = extended_shape(region, int(np.ceil(lateral_run_px(6, TILT))))
    window = auto_projection_shape(region, TILT)
    geometry = Geometry(np.arange(0, 360, 24.0), TILT, wide, window)
    mask = full_path_mask(geometry).to(torch.float64)
    op = LaminoOperator(geometry)

    def left_after_planes(volume: torch.Tensor) -> float:
        """Relative L2 of the masked projections left after each one's plane."""
        p = op.forward(volume) * mask
        return float(torch.linalg.vector_norm(remove_planes(p, mask) * mask)
                     / torch.linalg.vector_norm(p))

    layer = torch.zeros(wide, dtype=torch.float64)
    layer[2] = 1.0
    wire = torch.zeros(wide, dtype=torch.float64)
    wire[2, 5:9, :] = 1.0  # a wire across the slab
    # all but the projector's discretisation at the window's edge (1.5 %) is invisible
    assert left_after_planes(layer) < 0.03 < 0.3 < left_after_planes(wire)
    rng = np.random.default_rng(3)
    volume = (rng.uniform(size=region) < 0.2) * 0.05
    offsets = rng.normal(size=(region[0], 1, 1))
    np.testing.assert_allclose(level_slices(volume + offsets), level_slices(volume), atol=1e-6)
    assert np.abs(np.median(level_slices(volume + offsets), axis=(1, 2))).max() < 1e-6


def test_the_dielectric_level_holds_where_metal_fills_most_of_a_slice():
    """Median leveling puts a slice that is mostly metal (a power stripe) at the metal's
    level; the dielectric level is the lower class's median there, also with noise at a
    quarter of the contrast, and exactly the median in a slice of one class or of sparse
    metal."""
    rng = np.random.default_rng(5)
    metal = np.zeros((5, 32, 32), bool)
    metal[0, :, :22] = True  # 69 % copper
    metal[1, :, :4] = True   # 12 % copper
    metal[2, 8:10, :] = True  # a wire: 6 %
    metal[4, :, :22] = True  # 69 % copper, noisy (below)
    sigma = np.array([0.002, 0.002, 0.002, 0.002, 0.0125])[:, None, None]
    volume = 0.3 + 0.05 * metal + sigma * rng.standard_normal(metal.shape)  # 3: dielectric
    for k in range(5):
        assert abs(dielectric_level(volume[k]) - 0.3) < 0.004, k
    for k in (1, 2, 3):
        assert dielectric_level(volume[k]) == np.median(volume[k])
    assert abs(np.median(volume[0]) - 0.35) < 0.002  # the plain median: the metal
    leveled = level_slices(volume + rng.normal(size=(5, 1, 1)))
    np.testing.assert_allclose([np.median(leveled[k][~metal[k]]) for k in range(5)], 0.0,
                               atol=0.004)
    assert dielectric_level(np.full((3, 3), 0.2)) == pytest.approx(0.2)
    assert np.isnan(dielectric_level(np.array([0.1, np.nan, 0.2, 0.3])))
    assert np.isnan(dielectric_level(np.zeros(0)))
