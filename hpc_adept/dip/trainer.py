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

:class:`DipTrainer` splits one iteration into its parts: the step (:meth:`DipTrainer.step`:
learning rate, input, forward, loss terms, backward, reduction over ranks), the guard's
verdict (:mod:`hpc_adept.dip.guard`), the record (:class:`TrainingRecord`: history, best
state, progress callback), the stop decision and the checkpoint (:meth:`DipTrainer.state_dict`,
:meth:`DipTrainer.load_state`). The returned volume is the one with the lowest loss seen, not
merely the last. The settings are the config's ``dip`` section (:class:`DipConfig`) as it
is; only the seed of the input perturbation (``runtime.seed``) comes separately.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from hpc_adept.config import DipConfig
from hpc_adept.dip.exact import (
    ExactGroup,
    gradient_exponent,
    local_gains,
    plan_exact_groups,
)
from hpc_adept.dip.guard import RollbackGuard, Verdict
from hpc_adept.dip.losses import tv_loss
from hpc_adept.dip.shard import (
    Forward,
    Projector,
    ShardData,
    data_weight,
    plan_data_terms,
)
from hpc_adept.lamino import Geometry, LaminoOperator
from hpc_adept.parallel.fixedpoint import dequantize

__all__ = ["Communicator", "DipTrainer", "SerialCommunicator", "ShardData", "TrainResult",
           "TrainingRecord", "data_weight", "default_projector", "input_jitter", "train_dip"]

log = logging.getLogger(__name__)

HISTORY_KEYS = ("iteration", "loss", "data", "tv", "lr")


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
        """Element-wise sum of a small 1-D tensor over ranks (every rank gets it, on the
        tensor's device or, where the transport stages through it, in host memory)."""

    def reduce_projections(self, projections: torch.Tensor) -> torch.Tensor:
        """Projections of the whole volume from this rank's part (differentiable)."""

    def finish_gradients(self, model: nn.Module) -> None:
        """Complete the weight gradients after backward (sum of the slabs' parts)."""

    def gather_volume(self, volume: torch.Tensor) -> torch.Tensor:
        """The full volume from this rank's part (collective; every rank gets it)."""


class ExactCommunicator(Communicator, Protocol):
    """A communicator of the angles split with exact sums (``exact_sums`` True): the
    trainer then scores angle by angle and sums in fixed point (:mod:`hpc_adept.dip.exact`)
    instead of wrapping the model for a gradient all-reduce."""

    exact_sums: bool

    def sum_exact_(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of an int64 tensor over ranks, in place (exact: integer addition)."""


class SerialCommunicator:
    """One process: nothing to reduce."""

    world_size = 1
    splits_volume = False

    def __init__(self, exact_sums: bool = False) -> None:
        # exact_sums: score angle by angle as the angles split over ranks does, so that
        # one process gives the bits of any rank count
        self.exact_sums = exact_sums

    def sum_exact_(self, values: torch.Tensor) -> torch.Tensor:
        return values

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


def default_projector(geometry: Geometry, kernel: str = "torch") -> Forward:
    """The trainer's forward projection for ``geometry`` (the one place it is chosen): the
    :class:`~hpc_adept.lamino.LaminoOperator` of ``geometry`` with ``kernel``
    (``runtime.projector``).

    Returns a callable volume [nz, ny, nx] -> projections [n_angles, nv, nu] (float32,
    differentiable). Looked up when a trainer is built, so a test may wrap it
    (tests/mpi/fail_in_dip.py).
    """
    return LaminoOperator(geometry, kernel=kernel).forward


def input_jitter(shape: tuple[int, ...], slab: tuple[int, int, int] | None, seed: int,
                 iteration: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The input perturbation of ``iteration`` (unit std), drawn on ``device``.

    ``shape`` is the network input's [1, c_in, nz_local, ny, nx]; with ``slab`` (start,
    stop, nz) the slab's part of the one-process perturbation, so any split draws the same
    numbers. Drawn where it is used (no host-to-device copy per iteration): on the CPU the
    numbers are those of ``torch.Generator().manual_seed(seed * 1_000_003 + iteration)``;
    a CUDA generator seeded alike draws other numbers (Philox), as deterministic and as
    independent of the rank count.
    """
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + iteration)
    if slab is None:
        return torch.randn(shape, generator=gen, device=device)
    start, stop, nz = slab
    full = torch.randn((*shape[:2], nz, *shape[3:]), generator=gen, device=device)
    return full[:, :, start:stop]


@dataclass
class TrainResult:
    """Outcome of :meth:`DipTrainer.fit` (and :func:`train_dip`).

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
    final_volume : ndarray, float32, [nz, ny, nx] or None
        The last forward pass's output (None when no step ran).
    """

    volume: np.ndarray
    best_iteration: int
    best_loss: float
    history: dict[str, list]
    next_iteration: int
    stopped: bool = False
    final_volume: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class StepOutcome:
    """One step's result, summed over ranks.

    Attributes
    ----------
    volume : torch.Tensor, float32, [nz, ny, nx]
        This rank's network output (its slab with the volume split).
    data, tv : float
        Data and TV terms of the whole problem.
    lr : float
        The learning rate of the step.
    stop : bool
        Some rank was asked to stop.
    """

    volume: torch.Tensor
    data: float
    tv: float
    lr: float
    stop: bool

    @property
    def total(self) -> float:
        return self.data + self.tv


@dataclass
class TrainingRecord:
    """The history of accepted steps and the best state so far.

    Attributes
    ----------
    history : dict of lists
        :data:`HISTORY_KEYS` per accepted step, and ``rollbacks``.
    best_loss, best_iteration : float, int
    best_volume : torch.Tensor or None
        The lowest-loss output (this rank's slab with the volume split), on the device.
    """

    history: dict[str, list] = field(
        default_factory=lambda: {k: [] for k in (*HISTORY_KEYS, "rollbacks")})
    best_loss: float = math.inf
    best_iteration: int = -1
    best_volume: torch.Tensor | None = None

    def add(self, iteration: int, step: StepOutcome) -> None:
        """Record an accepted step (keeping its output when it is the best so far)."""
        if step.total < self.best_loss:
            self.best_loss, self.best_iteration = step.total, iteration
            self.best_volume = step.volume.detach().clone()
        for key, value in zip(HISTORY_KEYS, (iteration, step.total, step.data, step.tv,
                                             step.lr), strict=True):
            self.history[key].append(value)

    @property
    def rollbacks(self) -> int:
        return len(self.history["rollbacks"])


def _never() -> bool:
    return False


def make_adam(model: nn.Module, dip: DipConfig) -> torch.optim.Adam:
    """Adam over the model's weights; on CUDA the fused kernel (one launch for all the
    weights, its step counts on the device: no host read per step), elsewhere PyTorch's
    default implementation (unchanged results on the CPU)."""
    params = list(model.parameters())
    on_cuda = bool(params) and all(p.device.type == "cuda" for p in params)
    if on_cuda:
        try:
            return torch.optim.Adam(params, lr=dip.lr, betas=dip.betas, fused=True)
        except (RuntimeError, TypeError, ValueError):  # a build or dtype without it
            log.debug("dip: fused Adam unavailable, using the default one")
    return torch.optim.Adam(params, lr=dip.lr, betas=dip.betas)


def autotune_convolutions(device: torch.device) -> None:
    """Let cuDNN pick the fastest algorithm of each convolution once: the DIP's shapes are
    the same every step, so the one-time search pays off (no effect off CUDA, nor with
    deterministic algorithms: the search's pick may differ between runs)."""
    if getattr(device, "type", "cpu") == "cuda" \
            and not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True


class DipTrainer:
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
    dip : DipConfig
        The config's ``dip`` section (iterations, learning rate schedule, Adam betas,
        angle groups, input perturbation, bf16, checkpoint interval, guard).
    comm : Communicator, optional
        Distributed runtime (default: serial).
    seed : int
        Seed of the input perturbation (``runtime.seed``).
    projector : callable, optional
        Geometry -> forward projection (default :func:`default_projector` with ``kernel``).
    kernel : {'torch', 'triton'}
        Projector kernel of the default projector (``runtime.projector``).
    stop_requested : callable, optional
        Polled every iteration on every rank; the flags are summed over ranks so all ranks
        stop at the same iteration, after writing a checkpoint.
    save_checkpoint : callable, optional
        Receives the checkpoint dict (only where files should be written, e.g. rank 0),
        every ``dip.checkpoint_every`` iterations, at a stop and at the end. Its
        ``best_volume`` is the whole volume (gathered from the slabs).
    on_iteration : callable, optional
        Called with (iteration, {"loss", "data", "tv", "lr"}) after each accepted step.
    """

    def __init__(self, model: nn.Module, noise: torch.Tensor, shard: ShardData,
                 dip: DipConfig, comm: Communicator | None = None, *, seed: int = 0,
                 projector: Projector | None = None, kernel: str = "torch",
                 stop_requested: Callable[[], bool] | None = None,
                 save_checkpoint: Callable[[dict[str, Any]], None] | None = None,
                 on_iteration: Callable[[int, dict[str, float]], None] | None = None
                 ) -> None:
        self.model, self.noise, self.shard, self.dip, self.seed = model, noise, shard, dip, seed
        self.comm = SerialCommunicator() if comm is None else comm
        # not `or`: a StopFlag is falsy until it is set
        self.stop_requested = _never if stop_requested is None else stop_requested
        self.save_checkpoint = save_checkpoint
        self.on_iteration = on_iteration
        self.optimizer = make_adam(model, dip)
        self.guard = RollbackGuard(dip)
        self.record = TrainingRecord()
        if projector is None:
            projector = functools.partial(default_projector, kernel=kernel)
        # exact sums: the angles split's partition-independent data term (and none of
        # DDP's gradient averaging); the volume split keeps its own sums
        self.exact = bool(getattr(self.comm, "exact_sums", False)) and not shard.slab
        self.data_terms: list = (plan_exact_groups(shard, dip.angles_per_step, projector)
                                 if self.exact else
                                 plan_data_terms(shard, dip.angles_per_step, projector))
        self._gain: float | None = None
        self.iteration = 0
        self.lr_scale = 1.0
        self.stopped = False
        self.net: nn.Module = model
        self.last_volume: torch.Tensor | None = None

    # ------------------------------------------------------------------ the loop
    def fit(self, resume_state: dict[str, Any] | None = None) -> TrainResult:
        """Train to ``dip.iterations`` (from ``resume_state``, a checkpoint dict, if given)."""
        self.prepare(resume_state)
        while self.iteration < self.dip.iterations and self.advance():
            pass
        return self._result()

    def prepare(self, resume_state: dict[str, Any] | None = None) -> None:
        """Load ``resume_state`` (a checkpoint dict) if given and wrap the model for the
        communicator: what :meth:`fit` does before its first :meth:`advance`."""
        if resume_state is not None:
            self.load_state(resume_state)
        autotune_convolutions(self.noise.device)
        self.net = self.comm.wrap(self.model)  # after loading: DDP starts from these weights

    def advance(self) -> bool:
        """One iteration: step, verdict, roll back or record; False ends the training."""
        step = self.step()
        verdict = self.guard.verdict(step.total, self.record.best_loss, self.record.rollbacks,
                                     self.iteration)
        if verdict is Verdict.GIVE_UP:
            log.warning("dip: loss not finite at iteration %d and no rollback left: stopping "
                        "with the best state (iteration %d)", self.iteration,
                        self.record.best_iteration)
            return False
        if verdict is Verdict.ROLL_BACK:
            self._roll_back(step)
            return not self._stop(step.stop)
        self._accept(step)
        if self._stop(step.stop):
            log.info("dip: stopped at iteration %d, checkpoint written", self.iteration)
            return False
        if self._checkpoint_due():
            self.checkpoint()
        return True

    # ------------------------------------------------------------------ one step
    def step(self) -> StepOutcome:
        """Forward, loss terms, backward and the sums over ranks of iteration
        ``self.iteration`` (the optimiser has not stepped yet)."""
        it = self.iteration
        lr = self._set_learning_rate(it)
        volume = self._forward(self._net_input(it))
        self.last_volume = volume
        if self.exact:
            return self._exact_step(volume, self.data_terms[it % len(self.data_terms)], lr)
        data = self.data_terms[it % len(self.data_terms)](volume, self.comm)
        tv = tv_loss(volume, self.shard.tv_weights)
        self._backward(data, tv)
        return self._reduce(volume, data, tv, lr)

    def _exact_step(self, volume: torch.Tensor, group: ExactGroup, lr: float) -> StepOutcome:
        """The step with exact sums (:mod:`hpc_adept.dip.exact`): score this rank's angles
        one by one, one float64 all-reduce of the slots (losses, residual maxima, stop
        flags; one read to the host), the volume gradient summed in fixed point, then the
        same network backward on every rank."""
        gain = self._adjoint_gain(volume)
        leaf = volume.detach().requires_grad_(True)
        scored = group.score(leaf)
        tv = tv_loss(volume, self.shard.tv_weights)
        stop = scored.slots.new_full((1,), 1.0 if self.stop_requested() else 0.0)
        summed = self.comm.sum(torch.cat([scored.slots, stop]))
        n = group.n_total
        values = torch.cat([summed, tv.detach().double().view(1).to(summed.device)]).tolist()
        k = gradient_exponent(max(values[n:2 * n]), gain, group.n_group)
        self.optimizer.zero_grad(set_to_none=True)
        if k is not None:  # else a non-finite loss: no step (the guard rolls back)
            total = self.comm.sum_exact_(group.gradient(leaf, scored, k))
            torch.autograd.backward([tv, volume],
                                    [torch.ones_like(tv), dequantize(total, k, volume.dtype)])
        # every angle's loss in its slot: the same sum, in the same order, on any ranks
        return StepOutcome(volume, math.fsum(values[:n]), values[-1], lr, values[2 * n] > 0)

    def _adjoint_gain(self, volume: torch.Tensor) -> float:
        """``max_n max(H_n^T 1)`` over all angles (computed once, collective)."""
        if self._gain is None:
            slots = self.comm.sum(local_gains(self.data_terms, volume.detach()))
            self._gain = float(max(slots.tolist()))
        return self._gain

    def _set_learning_rate(self, iteration: int) -> float:
        # Only the iteration, never dip.iterations, may shape a step: a checkpoint of a
        # longer run then serves a shorter one (hpc_adept.dip.resume.dip_settings).
        d = self.dip
        lr = d.lr * d.lr_gamma ** (iteration // d.lr_step) * self.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _net_input(self, iteration: int) -> torch.Tensor:
        if self.dip.input_perturbation <= 0:
            return self.noise
        jitter = input_jitter(self.noise.shape, self.shard.slab, self.seed, iteration,
                              self.noise.device)
        return self.noise + self.dip.input_perturbation * jitter

    def _forward(self, net_input: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=net_input.device.type, dtype=torch.bfloat16,
                            enabled=self.dip.bf16):
            volume = self.net(net_input)
        if volume.dtype in (torch.bfloat16, torch.float16):
            volume = volume.float()  # the projector and the loss run in float32
        return volume

    def _backward(self, data: torch.Tensor, tv: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        # Angles split: the model averages gradients over ranks, so the data term is
        # scaled by the rank count and TV (the same on every rank) counts once. Volume
        # split: gradients are summed, and data and TV are both this rank's parts.
        data_factor = 1 if self.comm.splits_volume else self.comm.world_size
        (data_factor * data + tv).backward()
        self.comm.finish_gradients(self.model)

    def _reduce(self, volume: torch.Tensor, data: torch.Tensor, tv: torch.Tensor,
                lr: float) -> StepOutcome:
        """Sum data, TV (volume split: each rank holds a part) and the stop flags over
        ranks: one small all-reduce and one read to the host per step (every other value
        stays on the device)."""
        stop = 1.0 if self.stop_requested() else 0.0
        local = torch.stack([data.detach().double(), tv.detach().double(),
                             data.new_full((), stop, dtype=torch.float64)])
        summed = self.comm.sum(local)
        # angles split: TV is the same on every rank, so the local one is the total
        tv_slot = summed[1:2] if self.comm.splits_volume else local[1:2].to(summed.device)
        data_total, tv_total, stop_total = torch.cat([summed[0:1], tv_slot,
                                                      summed[2:3]]).tolist()
        return StepOutcome(volume, data_total, tv_total, lr, stop_total > 0)

    # ------------------------------------------------------------------ after the step
    def _roll_back(self, step: StepOutcome) -> None:
        log.warning("dip: loss %.4g at iteration %d (best %.4g): rolling back to iteration "
                    "%d, learning rate x%g", step.total, self.iteration, self.record.best_loss,
                    self.guard.snapshot["iteration"], self.dip.guard_lr_factor)
        back_to = self.guard.restore(self.model, self.optimizer)
        self.record.history["rollbacks"].append([self.iteration, back_to])
        self.lr_scale *= self.dip.guard_lr_factor
        self.iteration = back_to

    def _accept(self, step: StepOutcome) -> None:
        """Snapshot, record, take the optimiser step, report progress."""
        self.guard.remember(self.iteration, self.model, self.optimizer)
        self.record.add(self.iteration, step)
        self.optimizer.step()
        self.iteration += 1
        if self.on_iteration is not None:
            self.on_iteration(self.iteration, {"loss": step.total, "data": step.data,
                                               "tv": step.tv, "lr": step.lr})

    def _stop(self, requested: bool) -> bool:
        """On a stop agreed by the ranks, checkpoint where the training stands."""
        if requested:
            self.stopped = True
            self.checkpoint()
        return requested

    def _checkpoint_due(self) -> bool:
        every = self.dip.checkpoint_every
        return bool(every) and (self.iteration % every == 0
                                or self.iteration == self.dip.iterations)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> None:
        """Hand the state to ``save_checkpoint``.

        Collective with the volume split (the slabs are gathered): call it on every rank.
        """
        if self.shard.slab is None and self.save_checkpoint is None:
            return
        state = self.state_dict()
        if self.save_checkpoint is not None:
            self.save_checkpoint(state)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint dict (tensors, numbers, lists; the whole best volume on the host).

        Collective with the volume split.
        """
        r = self.record
        best = (self.comm.gather_volume(r.best_volume.detach()).cpu()
                if r.best_volume is not None else torch.zeros(0))
        return {"iteration": self.iteration, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "lr_scale": self.lr_scale,
                "best_loss": r.best_loss, "best_iteration": r.best_iteration,
                "best_volume": best, "history": r.history, "snapshot": self.guard.snapshot,
                "torch_rng": torch.get_rng_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint dict (this rank's slab of its best volume)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.lr_scale = float(state["lr_scale"])
        best = None
        if state["best_volume"].numel():
            best = state["best_volume"].to(self.noise.device)
            if self.shard.slab is not None:
                best = best[self.shard.slab[0]:self.shard.slab[1]]
        self.record = TrainingRecord({k: list(v) for k, v in state["history"].items()},
                                     float(state["best_loss"]), int(state["best_iteration"]),
                                     best)
        snapshot = state.get("snapshot")
        self.guard.snapshot = None if snapshot is None else dict(snapshot)

    def _result(self) -> TrainResult:
        best = self.record.best_volume
        if best is None:  # resumed at the end, or stopped before any step
            with torch.no_grad():
                best = self.net(self.noise).float()
        final = (None if self.last_volume is None
                 else self.comm.gather_volume(self.last_volume.detach()).cpu().numpy())
        best = self.comm.gather_volume(best.detach())
        return TrainResult(best.cpu().numpy().astype(np.float32), self.record.best_iteration,
                           self.record.best_loss, self.record.history, self.iteration,
                           self.stopped, final)


def train_dip(model: nn.Module, noise: torch.Tensor, shard: ShardData, dip: DipConfig,
              comm: Communicator | None = None, *, seed: int = 0,
              stop_requested: Callable[[], bool] | None = None,
              save_checkpoint: Callable[[dict[str, Any]], None] | None = None,
              resume_state: dict[str, Any] | None = None,
              on_iteration: Callable[[int, dict[str, float]], None] | None = None
              ) -> TrainResult:
    """``DipTrainer(...).fit(resume_state)``: see :class:`DipTrainer` for the arguments."""
    trainer = DipTrainer(model, noise, shard, dip, comm, seed=seed,
                         stop_requested=stop_requested, save_checkpoint=save_checkpoint,
                         on_iteration=on_iteration)
    return trainer.fit(resume_state)
