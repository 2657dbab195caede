"""The DIP training loop: Adam on the network weights, guard against blow-ups, checkpoints.

MPI-free: everything distributed comes in through a :class:`Communicator` (wrap the model
for gradient all-reduce, sum a few scalars over ranks). With the serial communicator the
loop is the plain single-process optimisation.

Per iteration, with this rank's angles ``n in S_r`` (all angles over all ranks),

    data_r = 0.5 * w * c * sum_{n in S_r} ||H_n x - y_n||^2   (c = n_all / n_used with
                                                             subsets; w: sum or mean)
    loss_r = world_size * data_r + TV(x)

Gradient all-reduce *averages* (DistributedDataParallel), so the gradient every rank applies
is ``grad(sum_r data_r + TV)``: the full loss, TV counted once. The reported loss is the
sum of ``data_r`` over ranks (one scalar all-reduce, which also carries the stop flag) + TV.

Guard (REFERENCE.md, "Measured notes on the DIP recipe"): a non-finite loss, or a loss above
``guard_jump`` times the best loss so far, restores the last good snapshot (weights and
optimiser state, taken every ``guard_snapshot_every`` iterations from states whose loss
passed the check) and multiplies the learning rate by ``guard_lr_factor``. The returned
volume is the one with the lowest loss seen, not merely the last.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from hpc_adept.dip.losses import data_loss, tv_loss
from hpc_adept.errors import DataError
from hpc_adept.lamino import Geometry, project

log = logging.getLogger(__name__)


class Communicator(Protocol):
    """What the loop needs from the distributed runtime.

    Two decompositions: with ``splits_volume`` False every rank computes the whole volume
    and projects its own angles (gradients averaged by the wrapped model); with it True
    every rank computes a z slab of the volume (the wrapped model computes only the slab)
    and projects it for all angles, the projections are summed over ranks and each rank
    scores its own angles (gradients summed by :meth:`finish_gradients`).
    """

    world_size: int
    splits_volume: bool

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model as this rank runs it (gradient averaging, or one slab)."""

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of a small 1-D tensor over ranks (every rank gets it)."""

    def reduce_projections(self, projections: torch.Tensor) -> torch.Tensor:
        """Projections of the whole volume from this rank's part (differentiable)."""

    def finish_gradients(self, model: nn.Module) -> None:
        """Complete the weight gradients after backward (sum of the slabs' parts)."""

    def gather_volume(self, volume: torch.Tensor) -> torch.Tensor:
        """The full volume from this rank's part (collective; every rank gets it)."""


class SerialCommunicator:
    """One process: nothing to reduce."""

    world_size = 1
    splits_volume = False

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def reduce_projections(self, projections: torch.Tensor) -> torch.Tensor:
        return projections

    def finish_gradients(self, model: nn.Module) -> None:
        return None

    def gather_volume(self, volume: torch.Tensor) -> torch.Tensor:
        return volume


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings (see :class:`hpc_adept.config.DipConfig` for meanings)."""

    iterations: int = 1500
    lr: float = 2e-4
    lr_step: int = 1000
    lr_gamma: float = 0.5
    betas: tuple[float, float] = (0.9, 0.999)
    angles_per_step: int | None = None
    input_perturbation: float = 0.0
    bf16: bool = False
    checkpoint_every: int = 0
    guard: bool = True
    guard_jump: float = 4.0
    guard_lr_factor: float = 0.5
    guard_max_rollbacks: int = 10
    guard_snapshot_every: int = 10
    seed: int = 0


@dataclass
class ShardData:
    """This rank's share of the problem.

    Attributes
    ----------
    targets : torch.Tensor, float32, [n_local, nv, nu]
        The (emphasised) measured projections of this rank's angles, on the device.
    geometry : Geometry or None
        Geometry of these angles (None when the rank has none); with
        ``slab``, the geometry of ALL angles for this rank's slab of the volume
        (``Geometry.slab``).
    global_index : ndarray, int, [n_local]
        Index of each local angle in the full angle list.
    n_total : int
        Number of angles over all ranks.
    tv_weights : torch.Tensor, float32, [nz]
        Per-slice TV weights, on the device.
    data_weight : float
        Multiplies ``0.5 ||H x - y||^2``: 1 for the plain sum (ADePt eq. 1), ``2 / (number
        of projection pixels over all angles)`` for the reference code's mean squared error
        (see :func:`data_weight`).
    slab : (start, stop, nz) or None
        Volume decomposition: this rank computes the z slices ``start .. stop - 1`` of the
        ``nz``, projects them for all angles and scores its ``global_index`` angles;
        ``tv_weights`` are then the slab's. None: the whole volume (angles split).
    """

    targets: torch.Tensor
    geometry: Geometry | None
    global_index: np.ndarray
    n_total: int
    tv_weights: torch.Tensor
    data_weight: float = 1.0
    slab: tuple[int, int, int] | None = None


def data_weight(kind: str, n_total: int, detector_shape: tuple[int, int]) -> float:
    """Weight of ``0.5 ||H x - y||^2`` for ``kind`` ``sum`` (1) or ``mean`` (the MSE)."""
    if kind == "sum":
        return 1.0
    if kind == "mean":
        return 2.0 / (n_total * detector_shape[0] * detector_shape[1])
    raise ValueError(f"unknown data term normalisation {kind!r} (sum, mean)")


@dataclass
class TrainResult:
    """Outcome of :func:`train_dip`.

    Attributes
    ----------
    volume : ndarray, float32, [nz, ny, nx]
        The network output with the lowest loss seen.
    best_iteration, best_loss : int, float
    history : dict of lists
        Per accepted iteration: ``iteration``, ``loss``, ``data``, ``tv``, ``lr``; and
        ``rollbacks``: ``[iteration, rolled back to]`` pairs.
    next_iteration : int
        Iterations completed (where a resume would continue).
    stopped : bool
        True when a stop request (SIGTERM) ended the run early.
    """

    volume: np.ndarray
    best_iteration: int
    best_loss: float
    history: dict[str, list]
    next_iteration: int
    stopped: bool = False
    final_volume: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _AngleGroup:
    """The angles of one step, as this rank handles them.

    ``geometry`` (None: nothing to project) is what the rank projects; ``scored`` selects
    the rows of the (reduced) projections it compares with ``targets``; ``scale`` is the
    data weight times ``n_total / n_group``.
    """

    geometry: Geometry | None
    targets: torch.Tensor | None
    scale: float
    scored: torch.Tensor | None = None


def _group_plan(shard: ShardData, angles_per_step: int | None) -> list[_AngleGroup]:
    """The angle groups used in turn, one step each.

    With ``angles_per_step = k`` the angles are dealt into ``ceil(n_total / k)`` interleaved
    groups (``index % n_groups``), like the reference's alternating halves.
    """
    n_groups = 1 if not angles_per_step else max(1, math.ceil(shard.n_total / angles_per_step))
    device = shard.targets.device
    plan = []
    for g in range(n_groups):
        in_group = shard.global_index % n_groups == g
        members = np.arange(g, shard.n_total, n_groups)
        scale = shard.data_weight * shard.n_total / len(members)
        mine = np.flatnonzero(in_group)
        targets = shard.targets[torch.as_tensor(mine, device=device)]
        if shard.slab is not None:
            # the slab is projected for every angle of the group; this rank scores its own
            scored = np.searchsorted(members, shard.global_index[mine])
            plan.append(_AngleGroup(shard.geometry.subset(members), targets, scale,
                                    torch.as_tensor(scored, device=device)))
        elif shard.geometry is None or not len(mine):
            plan.append(_AngleGroup(None, None, scale))
        else:
            plan.append(_AngleGroup(shard.geometry.subset(mine), targets, scale))
    return plan


def _clone_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict())}


def train_dip(model: nn.Module, noise: torch.Tensor, shard: ShardData,
              settings: TrainSettings, comm: Communicator | None = None, *,
              stop_requested: Callable[[], bool] | None = None,
              save_checkpoint: Callable[[dict[str, Any]], None] | None = None,
              resume_state: dict[str, Any] | None = None,
              on_iteration: Callable[[int, dict[str, float]], None] | None = None
              ) -> TrainResult:
    """Fit the network so that the projections of its output match the targets.

    Parameters
    ----------
    model : nn.Module
        The (unwrapped) network, on the device, identical on every rank.
    noise : torch.Tensor, [1, c_in, nz, ny, nx]
        The fixed network input, on the device, identical on every rank (with
        ``shard.slab``: this rank's slices of it).
    shard : ShardData
        This rank's angles and targets.
    settings : TrainSettings
    comm : Communicator, optional
        Distributed runtime (default: serial).
    stop_requested : callable, optional
        Polled every iteration on every rank; the flags are summed over ranks so all ranks
        stop at the same iteration, after writing a checkpoint.
    save_checkpoint : callable, optional
        Receives the checkpoint dict (only where files should be written, e.g. rank 0),
        every ``settings.checkpoint_every`` iterations, at a stop and at the end. Its
        ``best_volume`` is the whole volume (gathered from the slabs).
    resume_state : dict, optional
        A checkpoint dict to continue from.
    on_iteration : callable, optional
        Called with (iteration, {"loss", "data", "tv", "lr"}) after each accepted step.

    Returns
    -------
    TrainResult
    """
    comm = SerialCommunicator() if comm is None else comm
    if stop_requested is None:  # not `or`: a StopFlag is falsy until it is set
        stop_requested = lambda: False  # noqa: E731
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=settings.betas)
    history: dict[str, list] = {k: [] for k in ("iteration", "loss", "data", "tv", "lr",
                                                "rollbacks")}
    it, lr_scale, best_loss, best_it = 0, 1.0, math.inf, -1
    best_volume: torch.Tensor | None = None
    snapshot: dict[str, Any] | None = None
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        it = int(resume_state["iteration"])
        lr_scale = float(resume_state["lr_scale"])
        best_loss, best_it = float(resume_state["best_loss"]), int(resume_state["best_iteration"])
        if resume_state["best_volume"].numel():
            best_volume = resume_state["best_volume"].to(noise.device)
            if shard.slab is not None:
                best_volume = best_volume[shard.slab[0]:shard.slab[1]]
        history = {k: list(v) for k, v in resume_state["history"].items()}
        snapshot = resume_state.get("snapshot")
        if snapshot is not None:
            snapshot = dict(snapshot)
    net = comm.wrap(model)
    groups = _group_plan(shard, settings.angles_per_step)
    device = noise.device
    use_bf16 = settings.bf16

    def checkpoint(next_it: int) -> None:
        # collective with the volume split (the slabs are gathered): called on every rank
        if shard.slab is None and save_checkpoint is None:
            return
        best = (comm.gather_volume(best_volume.detach()).cpu() if best_volume is not None
                else torch.zeros(0))
        if save_checkpoint is not None:
            save_checkpoint({"iteration": next_it, "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "lr_scale": lr_scale,
                             "best_loss": best_loss, "best_iteration": best_it,
                             "best_volume": best, "history": history, "snapshot": snapshot,
                             "torch_rng": torch.get_rng_state()})

    stopped = False
    volume = None
    while it < settings.iterations:
        # Only the iteration, never settings.iterations, may shape a step: a checkpoint of
        # a longer run then serves a shorter one (stages/recon.py, dip_settings).
        lr = settings.lr * settings.lr_gamma ** (it // settings.lr_step) * lr_scale
        for group in optimizer.param_groups:
            group["lr"] = lr
        group = groups[it % len(groups)]
        net_input = noise
        if settings.input_perturbation > 0:
            gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + it)
            if shard.slab is None:
                jitter = torch.randn(noise.shape, generator=gen)
            else:  # the slab's part of the one-process perturbation
                start, stop_z, nz = shard.slab
                jitter = torch.randn((*noise.shape[:2], nz, *noise.shape[3:]),
                                     generator=gen)[:, :, start:stop_z]
            net_input = noise + settings.input_perturbation * jitter.to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            volume = net(net_input)
        if volume.dtype in (torch.bfloat16, torch.float16):
            volume = volume.float()  # the projector and the loss run in float32
        if group.geometry is None:
            data = volume.sum() * 0.0  # keeps every rank in the same backward for DDP
        elif group.scored is None:
            data = group.scale * data_loss(project(volume, group.geometry), group.targets)
        else:  # volume split: sum the slabs' projections, score this rank's angles
            predicted = comm.reduce_projections(project(volume, group.geometry))
            data = group.scale * data_loss(predicted[group.scored], group.targets)
        tv = tv_loss(volume, shard.tv_weights)
        optimizer.zero_grad(set_to_none=True)
        # Angles split: the model averages gradients over ranks, so the data term is
        # scaled by the rank count and TV (the same on every rank) counts once. Volume
        # split: gradients are summed, and data and TV are both this rank's parts.
        data_factor = 1 if comm.splits_volume else comm.world_size
        (data_factor * data + tv).backward()
        comm.finish_gradients(model)
        flags = torch.tensor([data.item(), tv.item(), 1.0 if stop_requested() else 0.0],
                             dtype=torch.float64, device=device)
        flags = comm.sum(flags).cpu()
        tv_total = float(flags[1]) if comm.splits_volume else float(tv.item())
        total = float(flags[0]) + tv_total
        stop = bool(flags[2] > 0)

        if not settings.guard and not math.isfinite(total):
            # every rank sees the same all-reduced loss, so all stop here together
            raise DataError(f"dip: loss is {total} at iteration {it} (dip.guard is off; turn "
                            f"it on to roll back, or lower dip.lr)")
        jumped = best_loss < math.inf and total > settings.guard_jump * best_loss
        if settings.guard and (not math.isfinite(total) or jumped):
            if snapshot is None or len(history["rollbacks"]) >= settings.guard_max_rollbacks:
                if not math.isfinite(total):
                    log.warning("dip: loss not finite at iteration %d and no rollback left: "
                                "stopping with the best state (iteration %d)", it, best_it)
                    break
            else:
                log.warning("dip: loss %.4g at iteration %d (best %.4g): rolling back to "
                            "iteration %d, learning rate x%g", total, it, best_loss,
                            snapshot["iteration"], settings.guard_lr_factor)
                model.load_state_dict(snapshot["model"])
                # a copy: the optimiser may adopt the tensors and update them in place
                optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))
                history["rollbacks"].append([it, int(snapshot["iteration"])])
                lr_scale *= settings.guard_lr_factor
                it = int(snapshot["iteration"])
                if stop:
                    stopped = True
                    checkpoint(it)
                    break
                continue
        elif not math.isfinite(total):
            raise FloatingPointError(f"dip: loss not finite at iteration {it}")

        if settings.guard and it % settings.guard_snapshot_every == 0:
            snapshot = {"iteration": it, **_clone_state(model, optimizer)}
        if total < best_loss:
            best_loss, best_it = total, it
            best_volume = volume.detach().clone()
        for key, value in (("iteration", it), ("loss", total), ("data", float(flags[0])),
                           ("tv", tv_total), ("lr", lr)):
            history[key].append(value)
        optimizer.step()
        it += 1
        if on_iteration is not None:
            on_iteration(it, {"loss": total, "data": float(flags[0]), "tv": tv_total,
                              "lr": lr})
        if stop:
            stopped = True
            checkpoint(it)
            log.info("dip: stopped at iteration %d, checkpoint written", it)
            break
        if settings.checkpoint_every and (
                it % settings.checkpoint_every == 0 or it == settings.iterations):
            checkpoint(it)

    if best_volume is None:  # resumed at the end, or stopped before any step
        with torch.no_grad():
            best_volume = net(noise).float()
    final = None if volume is None else comm.gather_volume(volume.detach()).cpu().numpy()
    best = comm.gather_volume(best_volume.detach())
    return TrainResult(best.cpu().numpy().astype(np.float32), best_it, best_loss, history,
                       it, stopped, final)
