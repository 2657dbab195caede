"""Run under mpiexec -n 2: the search of a projection on a wrong match, distributed.

A projection started 6 px off its true shift (steps of 0.1 px cannot bring it back) is
named after the last level, searched again and moved, and the level runs once more; with
``DistributedLaminoOperator`` (angles split over the ranks) every rank moves the same
projection and ends with the serial shifts (float64, to rounding).
"""

import functools

import numpy as np
import torch

from hpc_adept.align import fourier_shift, projection_matching, remove_rigid_drift
from hpc_adept.config import AlignConfig
from hpc_adept.lamino import Geometry, project
from hpc_adept.parallel import DistributedLaminoOperator, get_context
from hpc_adept.phantom import make_phantom
from hpc_adept.stages.simulate import auto_projection_shape

TILT = 61.0
ctx = get_context()
assert ctx.size == 2, ctx

shape = (16, 24, 24)
volume = make_phantom("procedural", shape, 2.72e-8, seed=2).astype(np.float64) * 0.026
angles = np.arange(16) * 360.0 / 16
detector = auto_projection_shape(shape, TILT, margin_px=12)
ideal = project(torch.from_numpy(volume), Geometry(angles, TILT, shape, detector))
truth = np.clip(np.random.default_rng(3).normal(0.0, 1.5, (16, 2)), -10, 10)
measured = fourier_shift(ideal, torch.from_numpy(truth))
start = truth.copy()
start[5] += (0.0, 6.0)
options = AlignConfig(binning=(1,), max_iterations=20, max_update_px=0.1, coarse_rounds=0,
                      volume_shape=shape)
serial = projection_matching(measured, angles, TILT, options, initial_shifts_px=start)
shared = projection_matching(measured, angles, TILT, options, initial_shifts_px=start,
                             ops=functools.partial(DistributedLaminoOperator, ctx=ctx))
assert serial.reregistered_angles == [5], serial.reregistered_angles
assert shared.reregistered_angles == [5], f"rank {ctx.rank}: {shared.reregistered_angles}"
assert len(shared.history) == len(serial.history), (len(shared.history), len(serial.history))
error = remove_rigid_drift(serial.shifts_px - truth, angles, TILT)[0]
assert np.abs(error).max() < 0.1, f"serial re-registration ends {np.abs(error).max():.2f} px off"
gap = float(np.abs(shared.shifts_px - serial.shifts_px).max())
assert gap < 1e-6, f"rank {ctx.rank}: distributed shifts differ from serial by {gap:.2e} px"
gathered = ctx.comm.allgather(shared.shifts_px)
assert np.array_equal(gathered[0], gathered[1]), "ranks disagree"
ctx.comm.Barrier()
if ctx.is_root:
    print(f"re-registration ok on 2 ranks (largest difference from serial {gap:.1e} px)")
