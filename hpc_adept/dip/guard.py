"""The DIP's guard against blow-ups: snapshots of good states and the rollback decision.

REFERENCE.md, "Measured notes on the DIP recipe": a non-finite loss, or a loss above
``guard_jump`` times the best loss so far, restores the last good snapshot (weights and
optimiser state, taken every ``guard_snapshot_every`` iterations from states whose loss
passed the check) and multiplies the learning rate by ``guard_lr_factor``, at most
``guard_max_rollbacks`` times. MPI-free: every rank decides on the same all-reduced loss.
"""

from __future__ import annotations

import copy
import enum
import math
from typing import Any

import torch
from torch import nn

from hpc_adept.config import DipConfig
from hpc_adept.errors import DataError


class Verdict(enum.Enum):
    """What the loop does with a step's loss."""

    ACCEPT = "accept"  # record the step and let the optimiser take it
    ROLL_BACK = "roll back"  # restore the snapshot, lower the rate
    GIVE_UP = "give up"  # non-finite and no rollback left: end with the best state


class RollbackGuard:
    """Snapshots and the accept / roll back / give up decision (``dip.guard*`` keys).

    Attributes
    ----------
    snapshot : dict or None
        The last good state: ``iteration``, ``model`` and ``optimizer`` state dicts (part of
        every checkpoint, so a resumed run rolls back as the uninterrupted one would).
    """

    def __init__(self, dip: DipConfig) -> None:
        self.dip = dip
        self.snapshot: dict[str, Any] | None = None

    def verdict(self, total: float, best_loss: float, rollbacks_done: int,
                iteration: int) -> Verdict:
        """Judge the summed loss ``total`` of ``iteration`` against the best so far.

        Raises
        ------
        DataError
            A non-finite loss with the guard off (every rank sees the same all-reduced
            loss, so all stop here together).
        """
        finite = math.isfinite(total)
        if not self.dip.guard:
            if not finite:
                raise DataError(f"dip: loss is {total} at iteration {iteration} (dip.guard is "
                                f"off; turn it on to roll back, or lower dip.lr)")
            return Verdict.ACCEPT
        jumped = best_loss < math.inf and total > self.dip.guard_jump * best_loss
        if finite and not jumped:
            return Verdict.ACCEPT
        if self.snapshot is not None and rollbacks_done < self.dip.guard_max_rollbacks:
            return Verdict.ROLL_BACK
        # no rollback left: a jump is accepted, a non-finite loss ends the training
        return Verdict.ACCEPT if finite else Verdict.GIVE_UP

    def remember(self, iteration: int, model: nn.Module,
                 optimizer: torch.optim.Optimizer) -> None:
        """Snapshot the state about to take the step of ``iteration`` (its loss passed),
        every ``guard_snapshot_every`` iterations."""
        if self.dip.guard and iteration % self.dip.guard_snapshot_every == 0:
            self.snapshot = {
                "iteration": iteration,
                "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "optimizer": copy.deepcopy(optimizer.state_dict())}

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Load the snapshot into ``model`` and ``optimizer``; returns its iteration."""
        model.load_state_dict(self.snapshot["model"])
        # a copy: the optimiser may adopt the tensors and update them in place
        optimizer.load_state_dict(copy.deepcopy(self.snapshot["optimizer"]))
        return int(self.snapshot["iteration"])
