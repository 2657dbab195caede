"""The fused Triton projector (hpc_adept.lamino.fused) against the torch projector.

Without a GPU the kernels run in Triton's interpreter (the conftest switches it on before
Triton is imported), and a subprocess compiles them for GPUs to check they build there.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hpc_adept.lamino import Geometry, LaminoOperator, backproject, check_kernel, fused, project
from hpc_adept.linop import dottest
from tests.conftest import run_cmd

pytestmark = pytest.mark.skipif(not fused.available(), reason="Triton is not installed")


def _interpreted() -> bool:
    from triton import knobs

    return bool(knobs.runtime.interpret)


needs_interpreter = pytest.mark.skipif(
    torch.cuda.is_available(), reason="Triton compiles for the GPU in this process")

CASES = [
    # tilt, volume [nz, ny, nx], detector [nv, nu]
    (61.0, (7, 10, 9), (12, 13)),  # odd/even mix, nu != nx, nv != nz
    (90.0, (5, 8, 9), (6, 11)),  # tomography
    (30.0, (6, 9, 10), (11, 12)),  # steps along z: taps over sample rows
    (61.0, (4, 12, 14), (5, 7)),  # detector narrower than the volume
]


def _geometry(tilt, vshape, dshape, n_angles=4, seed=2):
    angles = np.random.default_rng(seed).uniform(-180, 540, size=n_angles)
    return Geometry(angles, tilt, vshape, dshape)


def _assert_matches_torch_kernel(g: Geometry, seed: int) -> None:
    """Fused forward and adjoint equal the torch kernel's to 1e-12 in float64."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(g.volume_shape, generator=gen, dtype=torch.float64)
    y = torch.randn(g.projection_shape, generator=gen, dtype=torch.float64)
    for got, want in ((fused.project_fused(x, g), project(x, g, kernel="torch")),
                      (fused.backproject_fused(y, g), backproject(y, g, kernel="torch"))):
        assert got.dtype == torch.float64 and got.shape == want.shape
        assert float((got - want).abs().max()) < 1e-12 * float(want.abs().max())


@needs_interpreter
@pytest.mark.parametrize(("tilt", "vshape", "dshape"), CASES)
def test_matches_torch_projector_in_float64(tilt, vshape, dshape):
    assert _interpreted()
    _assert_matches_torch_kernel(_geometry(tilt, vshape, dshape), seed=3)


@needs_interpreter
def test_many_small_programs_match_torch_projector(monkeypatch):
    """Blocks smaller than a row and a slice, as on a GPU: several column blocks per row,
    several voxel blocks per slice and several passes over a row's nonzeros (masked
    tails), which one interpreter program per row would not exercise."""
    monkeypatch.setattr(fused, "INTERPRETER_BLOCK", 8)
    monkeypatch.setattr(fused, "INTERPRETER_ENTRIES", 4)
    _assert_matches_torch_kernel(_geometry(61.0, (4, 9, 11), (7, 14), n_angles=2), seed=10)


@needs_interpreter
def test_grid_aligned_angles_match_torch_projector():
    """At multiples of 90 deg the samples sit on voxel centers: the adjoint's candidate
    box must still catch every sample with nonzero weight."""
    g = Geometry([0.0, 90.0, 180.0, 270.0, 45.0], 61.0, (5, 8, 9), (9, 12))
    _assert_matches_torch_kernel(g, seed=9)


@needs_interpreter
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_adjoint_dot_product(dtype, tol):
    g = _geometry(61.0, (6, 11, 10), (10, 14), n_angles=5)
    dottest(LaminoOperator(g, kernel="triton"), rtol=tol, dtype=dtype, seed=4)


@needs_interpreter
def test_slab_geometry_matches_torch_projector():
    """A slab of the volume (z offset) projects to its share, as with the torch kernel."""
    whole = _geometry(61.0, (8, 9, 9), (12, 12), n_angles=3)
    g = whole.slab(3, 7)
    x = torch.rand(g.volume_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    want = project(x, g, kernel="torch")
    assert float((fused.project_fused(x, g) - want).abs().max()) < 1e-12 * float(want.max())


@needs_interpreter
def test_gradient_through_the_triton_kernel():
    """kernel='triton' in project(): autograd's backward is the fused adjoint."""
    g = _geometry(61.0, (5, 8, 8), (8, 10), n_angles=3)
    gen = torch.Generator().manual_seed(6)
    target = torch.randn(g.projection_shape, generator=gen, dtype=torch.float64)
    grads = {}
    for kernel in ("torch", "triton"):
        x = torch.zeros(g.volume_shape, dtype=torch.float64, requires_grad=True)
        loss = ((project(x, g, kernel=kernel) - target) ** 2).sum()
        loss.backward()
        grads[kernel] = x.grad
    assert float(grads["torch"].abs().max()) > 0
    assert torch.allclose(grads["triton"], grads["torch"], rtol=0, atol=1e-12)


def test_the_kernel_is_named_and_torch_by_default():
    """No process-wide default: an operator (or a one-call form) uses the kernel it is
    given, ``torch`` unless named (runtime.projector reaches the stages' operators)."""
    g = _geometry(61.0, (2, 3, 3), (3, 4))
    assert LaminoOperator(g).kernel == "torch"
    assert LaminoOperator(g, kernel="triton").kernel == "triton"
    assert check_kernel("triton") == "triton"
    with pytest.raises(ValueError, match="one of torch, triton"):
        check_kernel("cuda")
    with pytest.raises(ValueError, match="one of torch, triton"):
        project(torch.zeros(2, 3, 3), g, kernel="astra")


@needs_interpreter
def test_cpu_tensors_use_the_torch_kernel_unless_triton_is_named():
    """The simulator's CPU tensors keep the torch kernel; naming triton runs the fused one
    (in the interpreter, on CPU)."""
    g = _geometry(61.0, (5, 8, 8), (8, 10), n_angles=3)
    x = torch.rand(g.volume_shape, generator=torch.Generator().manual_seed(8))
    torch_result = LaminoOperator(g, kernel="torch").forward(x)
    fused_result = LaminoOperator(g, kernel="triton").forward(x)
    assert not torch.equal(fused_result, torch_result)  # float32: they round differently
    assert torch.equal(fused_result, fused.project_fused(x, g))
    assert torch.equal(project(x, g), torch_result)


def test_kernels_compile_for_gpus():
    """The compiled (not interpreted) kernels build for sm_80 and sm_90, float32 and
    float64, with Triton's own compiler (no GPU is needed for that), and without fused
    multiply-adds, which would make the adjoint's weights differ from the forward's."""
    script = ("import json; from hpc_adept.lamino.fused import compile_for; "
              "print(json.dumps({f'{cc}/{dt}': compile_for(cc, dt) "
              "for cc in (80, 90) for dt in ('fp32', 'fp64')}))")
    done = run_cmd(["-c", script], env={"TRITON_INTERPRET": "0",
                                        "PYTHONWARNINGS": "error::UserWarning"})
    assert done.returncode == 0, done.stderr[-2000:]
    sizes = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(sizes) == {"80/fp32", "80/fp64", "90/fp32", "90/fp64"}
    kernels = [k for built in sizes.values() for k in built.values()]
    assert len(kernels) == 8
    assert all(k["cubin_bytes"] > 1000 and k["fused_float_ops"] == 0 for k in kernels)


@pytest.mark.gpu
def test_cuda_matches_torch_projector():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gen = torch.Generator().manual_seed(7)
    # the last case has several column blocks per row and 128-voxel blocks per slice; float32
    # sums of a few hundred samples in another order differ by ~n eps (1.3e-5 measured on
    # an H200 for the last case), float64 shows that the operators are the same
    for tilt, dtype, tol, vshape, dshape in (
            (61.0, torch.float64, 1e-10, (10, 14, 13), (18, 20)),
            (30.0, torch.float32, 5e-5, (10, 14, 13), (18, 20)),
            (61.0, torch.float32, 5e-5, (24, 150, 170), (60, 300))):
        g = _geometry(tilt, vshape, dshape, n_angles=9)
        x = torch.randn(g.volume_shape, dtype=dtype, generator=gen).cuda()
        y = torch.randn(g.projection_shape, dtype=dtype, generator=gen).cuda()
        for op, arg in ((project, x), (backproject, y)):
            want = op(arg, g, kernel="torch")
            got = op(arg, g, kernel="triton")
            err = float((got - want).abs().max() / want.abs().max())
            assert err < tol, (op.__name__, tilt, dtype, err)
        dottest(LaminoOperator(g, kernel="triton"), rtol=1e-10, x=x.double(), y=y.double())
