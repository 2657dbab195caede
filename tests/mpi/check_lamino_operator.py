"""Run under mpiexec -n 2: the distributed laminography operator is the serial one.

On every rank, ``DistributedLaminoOperator`` (angles split over the ranks) passes the dot-
product test and its forward, adjoint, FBP and autograd gradient equal the serial
``LaminoOperator``'s, on a problem large enough for rounding to matter (float64 tight,
float32 loose), and on one angle (a rank without angles).
"""

import numpy as np
import torch

from hpc_adept.lamino import Geometry, LaminoOperator
from hpc_adept.linop import dottest
from hpc_adept.parallel import DistributedLaminoOperator, get_context

ctx = get_context()
assert ctx.size == 2, ctx


def close(got: torch.Tensor, want: torch.Tensor, rtol: float, what: str) -> None:
    err = float((got - want).abs().max()) / float(want.abs().max())
    assert err <= rtol, f"rank {ctx.rank}: {what} differs from the serial operator by {err:.2e}"


def check(geometry: Geometry, dtype: torch.dtype, rtol: float, seed: int) -> None:
    serial = LaminoOperator(geometry)
    dist = DistributedLaminoOperator(geometry, ctx=ctx)
    assert isinstance(dist, LaminoOperator) and dist.range_shape == serial.range_shape
    # the same seeded draws on every rank: full arrays everywhere
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(geometry.volume_shape, dtype=dtype, generator=gen)
    y = torch.randn(geometry.projection_shape, dtype=dtype, generator=gen)
    name = f"{dtype} {geometry.n_angles} angles"
    close(dist.forward(x), serial.forward(x), rtol, f"forward ({name})")
    close(dist.adjoint(y), serial.adjoint(y), rtol, f"adjoint ({name})")
    close(dist.fbp(y), serial.fbp(y), rtol, f"fbp ({name})")
    close(dist.H.forward(y), serial.adjoint(y), rtol, f"H ({name})")
    if geometry.n_angles > 1:  # a subset of the angles, still shared by the ranks
        part = dist.angles_subset(slice(1, None))
        assert isinstance(part, DistributedLaminoOperator)
        close(part.forward(x), serial.forward(x)[1:], rtol, f"subset ({name})")
    dottest(dist, rtol=1e-10 if dtype == torch.float64 else 1e-4, dtype=dtype, seed=seed + 1)
    # autograd: the gradient of a loss of the forward is the (distributed) adjoint
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(0.5 * ((dist.forward(xg) - y) ** 2).sum(), xg)
    close(grad, serial.adjoint(serial.forward(x) - y), rtol, f"gradient ({name})")
    # every rank holds the same full result
    gathered = ctx.comm.allgather(dist.forward(x).numpy())
    assert np.array_equal(gathered[0], gathered[1]), "ranks disagree"


angles = np.random.default_rng(3).uniform(0.0, 360.0, size=31)
large = Geometry(angles, 61.0, (16, 40, 40), (40, 56))
check(large, torch.float64, 1e-12, seed=1)
check(large, torch.float32, 1e-5, seed=2)
check(Geometry([17.0], 61.0, (5, 8, 9), (8, 11)), torch.float64, 1e-12, seed=3)
ctx.comm.Barrier()
if ctx.is_root:
    print("distributed lamino operator ok on 2 ranks")
