"""Tests of the laminography geometry, operator (projector, adjoint, FBP) and dottest."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hpc_adept.errors import DataError
from hpc_adept.lamino import (
    Geometry,
    GeometryError,
    LaminoOperator,
    angular_weights,
    backproject,
    fbp,
    project,
    ramp_filter,
)
from hpc_adept.lamino import oblique as oblique_module
from hpc_adept.lamino import projector as projector_module
from hpc_adept.linop import AdjointTestError, FunctionOperator, dottest


def _offsets(shape: tuple[int, ...]) -> list[np.ndarray]:
    """Per-axis index offsets from the array center (n - 1) / 2, float64."""
    return [np.arange(n, dtype=np.float64) - (n - 1) / 2 for n in shape]


def _gaussian(shape: tuple[int, int, int], center_xyz, sigma: float) -> np.ndarray:
    """Isotropic Gaussian of unit peak, [nz, ny, nx], centered at offset (x, y, z)."""
    z, y, x = np.meshgrid(*_offsets(shape), indexing="ij")
    cx, cy, cz = center_xyz
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))


def _centroids(stack: np.ndarray) -> np.ndarray:
    """(row, col) centroid offsets from the detector center, [n_angles, 2]."""
    rows, cols = _offsets(stack.shape[1:])
    total = stack.sum(axis=(1, 2))
    return np.stack(
        [(stack.sum(axis=2) * rows).sum(axis=1) / total,
         (stack.sum(axis=1) * cols).sum(axis=1) / total], axis=1
    )


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


ANGLES = [0.0, 37.0, 100.0, 200.0, 300.0]


# --------------------------------------------------------------------------- geometry

@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"tilt_deg": 0.0}, "tilt_deg"),
        ({"tilt_deg": 90.5}, "tilt_deg"),
        ({"tilt_deg": float("nan")}, "tilt_deg"),
        ({"angles_deg": [0.0, float("inf")]}, "angles_deg must be finite"),
        ({"angles_deg": [0.0, float("nan")]}, "angles_deg must be finite"),
        ({"angles_deg": []}, "angles_deg"),
        ({"volume_shape": (4, 5)}, "volume_shape"),
        ({"volume_shape": (4, 0, 5)}, "volume_shape"),
        ({"detector_shape": (4, 5, 6)}, "detector_shape"),
    ],
)
def test_geometry_rejects_bad_input(kwargs, fragment):
    args = {"angles_deg": [0.0, 90.0], "tilt_deg": 61.0, "volume_shape": (4, 5, 6),
            "detector_shape": (7, 8)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=fragment) as info:
        Geometry(**args)
    assert isinstance(info.value, GeometryError) and isinstance(info.value, DataError)
    assert "\n" not in str(info.value)


def test_geometry_is_normalised_and_hashable():
    g = Geometry(np.array([0, 90.5]), 61, [4, 5, 6], np.array([7, 8]))
    assert g.angles_deg == (0.0, 90.5)
    assert g.volume_shape == (4, 5, 6) and g.detector_shape == (7, 8)
    assert g.projection_shape == (2, 7, 8)
    assert hash(g) == hash(Geometry([0.0, 90.5], 61.0, (4, 5, 6), (7, 8)))
    assert g.subset([1]).angles_deg == (90.5,)
    d, u, v = g.vectors()
    for t in range(2):  # right-handed orthonormal frame (u, v, d): u x v = d
        np.testing.assert_allclose(np.cross(u[t], v[t]), d[t], atol=1e-15)


def test_project_rejects_bad_tensors():
    g = Geometry(ANGLES, 61.0, (4, 5, 6), (7, 8))
    with pytest.raises(ValueError, match=r"volume has shape \(4, 6, 5\)"):
        project(torch.zeros(4, 6, 5), g)
    with pytest.raises(ValueError, match="projections has shape"):
        backproject(torch.zeros(5, 8, 7), g)
    with pytest.raises(TypeError, match="torch.Tensor"):
        project(np.zeros((4, 5, 6)), g)
    with pytest.raises(TypeError, match="float32 or float64"):
        project(torch.zeros(4, 5, 6, dtype=torch.int32), g)
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        project(torch.zeros(4, 5, 6), g, max_chunk_bytes=0)
    with pytest.raises(ValueError, match="projections has shape"):
        fbp(np.zeros((5, 7, 9), dtype=np.float32), g)


# --------------------------------------------------------------------------- adjoint

ADJOINT_CASES = [
    # tilt, volume [nz, ny, nx], detector [nv, nu]
    (61.0, (9, 12, 11), (14, 13)),  # odd/even mix, nu != nx, nv != nz
    (61.108, (8, 10, 10), (11, 16)),
    (90.0, (7, 10, 9), (8, 15)),  # tomography
    (30.0, (10, 11, 12), (17, 16)),  # steps along z
    (45.0, (6, 9, 8), (12, 12)),  # boundary of the two branches
    (61.0, (5, 14, 16), (6, 7)),  # detector narrower than the volume
    (75.0, (1, 5, 4), (3, 9)),  # single slice
]


@pytest.mark.parametrize(("tilt", "vshape", "dshape"), ADJOINT_CASES)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_adjoint_dot_product(tilt, vshape, dshape, dtype, tol):
    angles = np.random.default_rng(2).uniform(-180, 540, size=6)
    g = Geometry(angles, tilt, vshape, dshape)
    dottest(LaminoOperator(g), rtol=tol, dtype=dtype, seed=1)


def test_adjoint_fallback_matches_aten(monkeypatch):
    g = Geometry(ANGLES, 61.0, (6, 9, 8), (10, 12))
    y = torch.randn(g.projection_shape, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(3))
    fast = backproject(y, g)
    monkeypatch.setattr(projector_module, "_USE_ATEN_GRID_BACKWARD", False)
    torch.testing.assert_close(backproject(y, g), fast, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- geometry contract

@pytest.mark.parametrize("tilt", [61.0, 90.0, 30.0, 45.0])
def test_blob_lands_at_contract_position(tilt):
    shape = (20, 26, 24)
    center = (3.3, -2.1, 1.7)  # (x, y, z) voxels from the volume center
    g = Geometry(ANGLES, tilt, shape, (36, 40))
    stack = project(torch.tensor(_gaussian(shape, center, 1.5)), g).numpy()
    np.testing.assert_allclose(_centroids(stack), g.detector_position(center), atol=0.1)


@pytest.mark.parametrize("tilt", [61.0, 90.0, 30.0])
def test_blob_projection_matches_analytic_line_integral(tilt):
    shape, center, sigma = (24, 28, 28), (2.6, -1.2, 1.4), 2.5
    g = Geometry(ANGLES, tilt, shape, (40, 44))
    stack = project(torch.tensor(_gaussian(shape, center, sigma)), g).numpy()
    rows, cols = _offsets(g.detector_shape)
    pos = g.detector_position(center)
    dr = rows[None, :, None] - pos[:, 0, None, None]
    dc = cols[None, None, :] - pos[:, 1, None, None]
    expected = math.sqrt(2 * math.pi) * sigma * np.exp(-(dr**2 + dc**2) / (2 * sigma**2))
    # linear interpolation blurs a little: a few percent of the peak
    assert np.abs(stack - expected).max() < 0.05 * expected.max()


@pytest.mark.parametrize("tilt", [61.0, 90.0, 30.0])
def test_projection_sum_equals_volume_sum(tilt):
    shape = (12, 20, 18)
    vol = np.zeros(shape)
    vol[4:8, 6:13, 5:12] = 1.0
    vol[5:7, 8:10, 7:9] = 3.0
    g = Geometry(ANGLES, tilt, shape, (32, 36))
    sums = project(torch.tensor(vol), g).sum(dim=(1, 2)).numpy()
    np.testing.assert_allclose(sums, vol.sum(), rtol=0.01)


# --------------------------------------------------------------------------- autograd, chunks

def test_gradient_is_backprojection_of_residual():
    gen = torch.Generator().manual_seed(4)
    g = Geometry(ANGLES, 61.0, (6, 9, 8), (10, 12))
    x = torch.randn(g.volume_shape, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.randn(g.projection_shape, dtype=torch.float64, generator=gen)
    loss = ((project(x, g) - y) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, x)
    expected = 2 * backproject(project(x.detach(), g) - y, g)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_gradcheck_project_and_backproject():
    gen = torch.Generator().manual_seed(5)
    g = Geometry([10.0, 130.0, 250.0], 61.0, (3, 4, 5), (5, 6))
    x = torch.randn(g.volume_shape, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.randn(g.projection_shape, dtype=torch.float64, generator=gen,
                    requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: project(v, g), (x,))
    assert torch.autograd.gradcheck(lambda p: backproject(p, g), (y,))
    assert torch.autograd.gradgradcheck(lambda v: project(v, g), (x,))


def test_chunking_does_not_change_results():
    gen = torch.Generator().manual_seed(6)
    g = Geometry(np.linspace(0, 360, 7, endpoint=False), 61.0, (6, 9, 8), (10, 12))
    x = torch.randn(g.volume_shape, dtype=torch.float64, generator=gen)
    y = torch.randn(g.projection_shape, dtype=torch.float64, generator=gen)
    whole = 2**30  # every angle in one chunk
    for budget in (1, 3 * 6 * 16 * 12 * 8):  # one angle per chunk; a few angles
        torch.testing.assert_close(project(x, g, max_chunk_bytes=budget),
                                   project(x, g, max_chunk_bytes=whole))
        torch.testing.assert_close(backproject(y, g, max_chunk_bytes=budget),
                                   backproject(y, g, max_chunk_bytes=whole))


@pytest.mark.parametrize(("per_batch", "per_group"), [(1, 1), (2, 6), (4, 4), (5, 10)])
def test_slice_grouping_does_not_change_results(monkeypatch, per_batch, per_group):
    # CPU layout: z slices in batch entries and groups; (5, 10) pads 13 slices to 15
    g = Geometry(ANGLES, 61.0, (13, 9, 8), (20, 12))
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(g.volume_shape, dtype=torch.float64, generator=gen)
    y = torch.randn(g.projection_shape, dtype=torch.float64, generator=gen)
    expected = project(x, g), backproject(y, g)
    monkeypatch.setattr(oblique_module, "CPU_SLICES_PER_BATCH", per_batch)
    monkeypatch.setattr(oblique_module, "CPU_SLICES_PER_GROUP", per_group)
    torch.testing.assert_close(project(x, g), expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(backproject(y, g), expected[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tilt", [61.0, 30.0, 90.0])  # both branches of P0, tomography
def test_slab_projections_sum_to_the_whole(tilt):
    # Volume decomposition of the DIP: every rank projects its slab of z slices with
    # Geometry.slab; the parts must add up to the projections of the whole volume, and
    # each slab's backprojection must be that slice range of the whole backprojection.
    g = Geometry(ANGLES, tilt, (13, 9, 8), (20, 12))
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(g.volume_shape, dtype=torch.float64, generator=gen)
    y = torch.randn(g.projection_shape, dtype=torch.float64, generator=gen)
    whole, whole_adj = project(x, g), backproject(y, g)
    bounds = [0, 4, 5, 13]
    parts = [project(x[a:b], g.slab(a, b)) for a, b in zip(bounds, bounds[1:], strict=False)]
    torch.testing.assert_close(sum(parts), whole, rtol=1e-12, atol=1e-12)
    for a, b in zip(bounds, bounds[1:], strict=False):
        torch.testing.assert_close(backproject(y, g.slab(a, b)), whole_adj[a:b],
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tilt", [61.0, 30.0])
def test_adjoint_dot_product_with_z_offset(tilt):
    g = Geometry(ANGLES, tilt, (5, 10, 9), (16, 14), z_offset=-2.5)
    dottest(LaminoOperator(g), rtol=1e-10, seed=9)
    assert g.subset([0, 1]).z_offset == -2.5
    with pytest.raises(DataError, match="slab"):
        g.slab(3, 3)


# --------------------------------------------------------------------------- the operator

def _random_pair(g: Geometry, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(g.volume_shape, dtype=torch.float64, generator=gen),
            torch.randn(g.projection_shape, dtype=torch.float64, generator=gen))


def test_operator_is_the_functional_forms():
    g = Geometry(ANGLES, 61.0, (6, 9, 8), (10, 12))
    op = LaminoOperator(g)
    assert op.domain_shape == (6, 9, 8) and op.range_shape == (5, 10, 12)
    assert op.kernel == "torch" and "5 angles" in repr(op)
    x, y = _random_pair(g, 10)
    assert torch.equal(op.forward(x), project(x, g)) and torch.equal(op(x), project(x, g))
    assert torch.equal(op.adjoint(y), backproject(y, g))
    assert torch.equal(op.fbp(y), fbp(y, g))
    assert isinstance(op.fbp(y.numpy()), np.ndarray)


def test_operator_adjoint_and_products_are_operators():
    g = Geometry(ANGLES, 61.0, (6, 9, 8), (10, 12))
    op = LaminoOperator(g)
    x, y = _random_pair(g, 11)
    assert op.H.domain_shape == op.range_shape and op.H.range_shape == op.domain_shape
    assert op.H.H is op
    assert torch.equal(op.H.forward(y), op.adjoint(y))
    assert torch.equal(op.H.adjoint(x), op.forward(x))
    dottest(op.H, rtol=1e-10, seed=12)
    normal = op.H @ op  # A^T A: self-adjoint, <x, A^T A x> = ||A x||^2
    assert normal.domain_shape == normal.range_shape == g.volume_shape
    dottest(normal, rtol=1e-10, seed=13)
    energy = float((op.forward(x) ** 2).sum())
    assert float((x * normal(x)).sum()) == pytest.approx(energy, rel=1e-12)
    with pytest.raises(ValueError, match="cannot compose"):
        op @ op


def test_operator_gradients_are_the_other_direction():
    g = Geometry(ANGLES, 61.0, (6, 9, 8), (10, 12))
    op = LaminoOperator(g)
    x, y = _random_pair(g, 14)
    y.requires_grad_(True)
    (grad,) = torch.autograd.grad((op.adjoint(y) * x).sum(), y)
    torch.testing.assert_close(grad, op.forward(x), rtol=1e-12, atol=1e-12)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad((op.H.adjoint(x) * y.detach()).sum(), x)
    torch.testing.assert_close(grad, op.adjoint(y.detach()), rtol=1e-12, atol=1e-12)


def test_angle_subsets_and_other_geometries():
    g = Geometry(np.linspace(0, 360, 7, endpoint=False), 61.0, (6, 9, 8), (10, 12))
    op = LaminoOperator(g, max_chunk_bytes=2**20)
    x, y = _random_pair(g, 15)
    part = op.angles_subset(slice(2, 5))
    assert part.geometry == g.subset(slice(2, 5)) and part.max_chunk_bytes == 2**20
    assert type(part) is LaminoOperator and op.geometry == g  # op itself unchanged
    torch.testing.assert_close(part.forward(x), op.forward(x)[2:5], rtol=1e-12, atol=1e-12)
    assert op.angles_subset(3).range_shape == (1, 10, 12)
    # FBP of blocks of a scan, with their share of the scan's weights, sums to the whole
    weights = angular_weights(g)
    blocks = [slice(0, 3), slice(3, 7)]
    parts = [op.angles_subset(b).fbp(y[b], weights=weights[b]) for b in blocks]
    torch.testing.assert_close(sum(parts), op.fbp(y), rtol=1e-12, atol=1e-12)
    slab = op.with_geometry(g.slab(1, 4))
    torch.testing.assert_close(slab.forward(x[1:4]), project(x[1:4], g.slab(1, 4)))


def test_operator_rejects_bad_arguments():
    g = Geometry(ANGLES, 61.0, (4, 5, 6), (7, 8))
    with pytest.raises(ValueError, match="one of torch, triton"):
        LaminoOperator(g, kernel="astra")
    with pytest.raises(TypeError, match="Geometry"):
        LaminoOperator((4, 5, 6))
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        LaminoOperator(g, max_chunk_bytes=1.5)
    with pytest.raises(GeometryError, match="3 weights for 5 angles"):
        LaminoOperator(g).fbp(torch.zeros(g.projection_shape), weights=[1.0, 2.0, 3.0])


def test_dottest_reports_a_wrong_adjoint():
    scale = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    right = FunctionOperator(lambda v: scale * v, lambda v: scale * v, (3,), (3,))
    lhs, rhs = dottest(right, rtol=1e-14)
    assert lhs == pytest.approx(rhs, rel=1e-14)
    wrong = FunctionOperator(lambda v: scale * v, lambda v: v, (3,), (3,))
    with pytest.raises(AdjointTestError, match=r"<A x, y> = .*<x, A\^H y> = "):
        dottest(wrong, rtol=1e-6)


# --------------------------------------------------------------------------- FBP

def test_ramp_filter_impulse_response_and_types():
    proj = np.zeros((1, 1, 33), dtype=np.float32)
    proj[0, 0, 16] = 1.0
    out = ramp_filter(proj, 61.0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == proj.shape
    scale = math.sin(math.radians(61.0)) / 2
    lag = np.arange(33) - 16
    h = np.zeros(33)
    odd = lag % 2 == 1
    h[odd] = -1.0 / (math.pi * lag[odd]) ** 2
    h[16] = 0.25
    np.testing.assert_allclose(out[0, 0], scale * h, atol=1e-7)
    with pytest.raises(ValueError, match="tilt_deg"):
        ramp_filter(torch.zeros(2, 3), 95.0)


def test_angular_weights():
    uniform = Geometry(np.linspace(0, 360, 12, endpoint=False), 61.0, (2, 2, 2), (2, 2))
    np.testing.assert_allclose(angular_weights(uniform), 2 * np.pi / 12)
    half = Geometry(np.linspace(0, 180, 10, endpoint=False), 90.0, (2, 2, 2), (2, 2))
    np.testing.assert_allclose(angular_weights(half), 2 * np.pi / 10)
    uneven = Geometry([0.0, 10.0, 180.0], 61.0, (2, 2, 2), (2, 2))
    np.testing.assert_allclose(np.rad2deg(angular_weights(uneven)), [95.0, 90.0, 175.0])


def test_fbp_tomography_recovers_amplitude():
    shape = (8, 40, 40)
    vol = _gaussian(shape, (4.0, -3.0, 0.0), 3.0)
    for angles in (np.arange(180) * 2.0, np.arange(90) * 2.0):  # 360 and 180 degree scans
        g = Geometry(angles, 90.0, shape, (8, 64))
        rec = fbp(project(torch.tensor(vol), g), g).numpy()
        assert abs(rec.max() / vol.max() - 1) < 0.05
        assert _pearson(rec, vol) > 0.999


def _layered_phantom(shape: tuple[int, int, int]) -> np.ndarray:
    """Two metal layers of wires (along x, then along y) joined by vias, float64."""
    vol = np.zeros(shape)
    for y0 in range(8, 32, 8):
        vol[4:12, y0:y0 + 2, 6:34] = 1.0
    for x0 in range(8, 32, 9):
        vol[14:22, 6:34, x0:x0 + 2] = 1.0
    for y0, x0 in ((12, 12), (20, 26), (27, 15)):
        vol[4:22, y0:y0 + 2, x0:x0 + 2] = 1.0
    return vol


def test_fbp_laminography_correlates_with_phantom():
    shape = (28, 40, 40)
    vol = _layered_phantom(shape)
    g = Geometry(np.arange(360.0), 61.0, shape, (52, 64))
    rec = fbp(project(torch.tensor(vol, dtype=torch.float32), g), g)
    assert isinstance(rec, torch.Tensor) and rec.dtype == torch.float32
    inside = (slice(2, -2), slice(3, -3), slice(3, -3))
    assert _pearson(rec.numpy()[inside], vol[inside]) > 0.9


def test_fbp_laminography_matches_missing_cone_filtered_phantom():
    # exact laminographic FBP = the object with the double cone |k_z| tan(a) > |k_xy|
    # removed; compare at the scales the linear interpolation does not blur
    from scipy.ndimage import gaussian_filter

    shape = (28, 40, 40)
    vol = _layered_phantom(shape)
    g = Geometry(np.arange(0.0, 360.0, 2.0), 61.0, shape, (52, 64))
    rec = fbp(project(torch.tensor(vol), g), g).numpy()
    padded_shape = (3 * shape[0], 2 * shape[1], 2 * shape[2])
    padded = np.zeros(padded_shape)
    crop = tuple(slice(n, 2 * n) if i == 0 else slice(n // 2, n // 2 + n)
                 for i, n in enumerate(shape))
    padded[crop] = vol
    kz, ky, kx = np.meshgrid(*(np.fft.fftfreq(n) for n in padded_shape), indexing="ij")
    measured = np.hypot(kx, ky) >= math.tan(math.radians(29.0)) * np.abs(kz)
    ideal = np.fft.ifftn(np.fft.fftn(padded) * measured).real[crop]
    assert _pearson(gaussian_filter(rec, 1.0), gaussian_filter(ideal, 1.0)) > 0.98


# --------------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gen = torch.Generator().manual_seed(8)
    for tilt, dtype, tol in ((61.0, torch.float64, 1e-10), (30.0, torch.float32, 1e-4)):
        g = Geometry(np.linspace(0, 360, 9, endpoint=False), tilt, (10, 14, 13), (18, 20))
        x = torch.randn(g.volume_shape, dtype=dtype, generator=gen)
        y = torch.randn(g.projection_shape, dtype=dtype, generator=gen)
        for op, arg in ((project, x), (backproject, y), (fbp, y)):
            cpu = op(arg, g)
            gpu = op(arg.cuda(), g)
            assert gpu.device.type == "cuda"
            err = (gpu.cpu() - cpu).abs().max() / cpu.abs().max()
            assert err < tol, (op.__name__, tilt, dtype, float(err))
        # exact adjoint on the GPU too
        dottest(LaminoOperator(g), rtol=1e-10, x=x.cuda().double(), y=y.cuda().double())
