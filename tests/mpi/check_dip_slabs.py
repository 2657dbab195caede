"""Run under mpiexec -n 2 (or 3): the DIP with the volume split into z slabs gives the
one-process network output and gradients and the one-process training (volume and loss
curve within 1e-9 after 15 Adam steps), for even and odd slice counts, angle groups and
input perturbation; a stop request on one rank stops every rank.

Float64 throughout: in float32 the slabs' partial sums round differently, and Adam turns
the rounding of near-zero gradients into full-size steps, so two float32 runs drift apart
(~1e-3 after 15 steps) without either being wrong.

An iteration of the split network reads the device once (issue 22).
ADEPT_CHECK_DEVICE=cuda runs it on the GPUs (ranks on cuda:local_rank % GPUs; ranks sharing
a GPU stage the tensors through MPI, whose calls in the backward then come from autograd's
device thread). There the sums' order varies from run to run (atomics), so the comparisons
with one process allow 1e-7 instead of 1e-9."""

import os
from dataclasses import replace

import numpy as np
import torch

from hpc_adept.config import DipConfig
from hpc_adept.dip import (
    DipNetwork,
    DipTrainer,
    SerialCommunicator,
    ShardData,
    make_input_noise,
    train_dip,
)
from hpc_adept.lamino import Geometry, project
from hpc_adept.parallel import block_range, get_context
from hpc_adept.parallel.slabs import SlabCommunicator
from hpc_adept.parallel.torchdist import destroy_torch_distributed
from tests.host_reads import READS, adam_step_counts, count_host_reads

ctx = get_context()
assert ctx.size >= 2, ctx
torch.set_num_threads(1)
DEVICE = torch.device(os.environ.get("ADEPT_CHECK_DEVICE", "cpu"))
if DEVICE.type == "cuda":
    DEVICE = torch.device("cuda", ctx.local_rank % torch.cuda.device_count())
    torch.cuda.set_device(DEVICE)
TOL = 1e-9 if DEVICE.type == "cpu" else 1e-7
STRIDES = (2, 2, 1)
# no periodic checkpoint; lr 2e-4 unless set (the values this check was written for)
DIP = replace(DipConfig(), lr=2e-4, checkpoint_every=0)


def make_model(dtype=torch.float32):
    torch.manual_seed(0)
    return DipNetwork(4, (4, 8, 8), STRIDES, 2).to(DEVICE, dtype)


def agree(ok: bool, comm, what) -> None:
    flags = comm.sum(torch.tensor([float(ok)], device=DEVICE))
    assert flags.item() == ctx.size, (what, ctx.rank)


for nz in (16, 13):  # 13: the last slab is shorter and odd
    shape, n_angles = (nz, 12, 12), 7
    comm = SlabCommunicator(ctx, DEVICE, nz, 4)
    a, b = comm.start, comm.stop
    noise = make_input_noise(4, shape, 0.1, torch.Generator().manual_seed(1)).to(DEVICE)

    # forward and weight gradients of the split network equal the whole network's
    whole = make_model(torch.float64)
    out = whole(noise.double())
    ref_grads = torch.autograd.grad(out.square().sum(), list(whole.parameters()))
    split = comm.wrap(make_model(torch.float64))
    part = split(noise.double()[:, :, a:b])
    split.zero_grad()
    part.square().sum().backward()
    comm.finish_gradients(split)
    out_err = (part - out[a:b]).abs().max().item() / out.abs().max().item()
    grad_err = max(((p.grad - g).abs().max() / g.abs().max()).item()
                   for p, g in zip(split.parameters(), ref_grads, strict=True))
    agree(out_err < TOL / 10 and grad_err < TOL * 10, comm,
          ("forward/backward", nz, out_err, grad_err))
    gathered = comm.gather_volume(part)
    agree(torch.equal(gathered[a:b], part) and gathered.shape == out.shape, comm, "gather")

    # training: the same loss curve and volume as one process
    geometry = Geometry(np.arange(n_angles) * 360.0 / n_angles, 61.0, shape, (20, 20))
    truth = np.zeros(shape, np.float32)
    truth[2:6, 3:9, 2:10] = 0.02
    with torch.no_grad():
        targets = project(torch.from_numpy(truth).double(), geometry).to(DEVICE)
    weights = torch.linspace(1e-5, 2e-5, nz, dtype=torch.float64, device=DEVICE)
    for angles_per_step, jitter in ((None, 0.0), (4, 0.01)):
        settings = replace(DIP, iterations=15, lr=2e-3, angles_per_step=angles_per_step,
                           input_perturbation=jitter)
        mine = block_range(n_angles, ctx.size, ctx.rank)
        shard = ShardData(targets[mine.start:mine.stop], geometry.slab(a, b),
                          np.arange(mine.start, mine.stop), n_angles, weights[a:b], 0.5,
                          slab=(a, b, nz))
        parallel = train_dip(make_model(torch.float64), noise.double()[:, :, a:b], shard,
                             settings, comm)
        serial = train_dip(make_model(torch.float64), noise.double(),
                           ShardData(targets, geometry, np.arange(n_angles), n_angles,
                                     weights, 0.5), settings, SerialCommunicator())
        rel = np.linalg.norm(parallel.volume - serial.volume) / np.linalg.norm(serial.volume)
        curve = np.max(np.abs(np.subtract(parallel.history["loss"], serial.history["loss"]))
                       / np.abs(serial.history["loss"]))
        ok = rel < TOL and curve < TOL and parallel.volume.shape == shape
        agree(ok, comm, (nz, angles_per_step, rel, curve))

    # one iteration of the split network (halo planes, slab BatchNorm, projection sum,
    # gradient sum, step, guard, record, Adam) reads the device once. Not counted: the
    # NumPy views through which MPI reads host tensors (no copy, nothing to wait for);
    # and on a GPU the counting is moot, the MPI transport stages every plane in host
    # memory by design (ranks sharing a GPU; NCCL, with a GPU per rank, stays on it).
    if DEVICE.type != "cpu":
        continue
    trainer = DipTrainer(make_model(), noise[:, :, a:b].float(), replace(
        shard, targets=shard.targets.float(), tv_weights=shard.tv_weights.float()),
        replace(DIP, iterations=3, input_perturbation=0.01, angles_per_step=4), comm)
    trainer.prepare()
    trainer.advance()  # fills the caches
    no_numpy = tuple(name for name in READS if name != "numpy")
    with count_host_reads(ignore=adam_step_counts(trainer.optimizer), reads=no_numpy) as calls:
        trainer.advance()
    agree(len(calls) <= 1, comm, ("host reads", calls))

# a stop request on rank 1 only stops every rank at the same iteration
calls = []


def stop_on_rank1():
    calls.append(1)
    return ctx.rank == 1 and len(calls) >= 3


result = train_dip(make_model(), noise[:, :, a:b], shard, replace(DIP, iterations=20), comm,
                   stop_requested=stop_on_rank1)
agree(result.stopped and result.next_iteration == 3, comm, "stop")
destroy_torch_distributed()
if ctx.is_root:
    print(f"dip volume decomposition matches serial on {ctx.size} ranks")
