"""Which DIP problem a run is (its fingerprint), and the checkpoint it resumes from.

MPI-free: the stage (:mod:`hpc_adept.stages.recon`) prepares the checkpoint set on one
rank, waits for it on all, and checks that every rank found the same checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpc_adept.config import Config, DipConfig
from hpc_adept.dip.checkpoint import (
    checkpoint_sets,
    fingerprint,
    list_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)
from hpc_adept.io import ProjectionSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointSet:
    """The checkpoints of one DIP problem and where its training starts.

    Attributes
    ----------
    directory : Path
        The set's directory (``output.dir/checkpoints/dip/<fingerprint[:16]>``).
    fingerprint : str
        SHA-256 hex of the problem (:func:`problem_fingerprint`), stored in every checkpoint.
    resume_state : dict or None
        The checkpoint dict the training continues from (None: iteration 0).
    """

    directory: Path
    fingerprint: str
    resume_state: dict[str, Any] | None = None

    @property
    def start(self) -> int:
        """The iteration the training starts at."""
        return 0 if self.resume_state is None else int(self.resume_state["iteration"])

    def save(self, state: dict[str, Any]) -> None:
        """Write a trainer's checkpoint dict into the set, with the fingerprint."""
        save_checkpoint(self.directory, {**state, "fingerprint": self.fingerprint})


def dip_settings(cfg: Config) -> dict[str, object]:
    """The settings that define a DIP problem (fingerprinted in its checkpoints).

    Leaves out what may change between a run and its resume: the checkpoint interval, the
    resume flag, the decomposition and the number of ranks, and the iteration count:
    nothing in the training before iteration k depends on the total (the learning rate
    falls in steps of ``lr_step``, the guard and the input perturbation go by the
    iteration), so a checkpoint at k serves any run of ``dip.iterations >= k``. (A schedule
    over the total count, e.g. cosine, would have to enter the fingerprint.)
    """
    d = cfg.dip.__dict__
    skip = {"iterations", "checkpoint_every", "resume", "decomposition"}
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()
                if k not in skip}
    settings["seed"] = cfg.runtime.seed
    settings["volume_shape"] = list(cfg.recon.volume_shape)
    # with the data these fix the widened volume the network computes (recon.sample: auto
    # decides from the data, which the fingerprint holds)
    settings["recon_sample"] = cfg.recon.sample
    settings["lateral_margin"] = cfg.recon.lateral_margin
    return settings


def problem_fingerprint(cfg: Config, ps: ProjectionSet) -> str:
    """SHA-256 hex of the DIP settings and the input data (angles, projections, tilt and
    pixel size)."""
    return fingerprint(dip_settings(cfg), np.asarray(ps.angles_deg), ps.projections,
                       np.asarray([ps.tilt_deg, ps.pixel_size_m]))


def find_resume_state(ckpt_dir: Path, fingerprint_hex: str, d: DipConfig,
                      device: torch.device, explain: bool = True) -> dict[str, Any] | None:
    """The checkpoint dict to continue from (None: start at iteration 0), and say which.

    Parameters
    ----------
    ckpt_dir : Path
        The checkpoint set of this problem.
    fingerprint_hex : str
    d : DipConfig
        ``resume`` (false: start over) and ``iterations`` (the newest checkpoint at or
        before them).
    device : torch.device
        Where the tensors are loaded.
    explain : bool
        Log why a fresh start although checkpoints exist (on one rank only).
    """
    if not d.resume:
        log.info("dip: dip.resume is false: starting over from iteration 0")
        return None
    found = load_latest_checkpoint(ckpt_dir, fingerprint_hex, map_location=device,
                                   max_iteration=d.iterations)
    if found is None:
        if explain:
            log_fresh_start(ckpt_dir, d.iterations)
        return None
    path, state = found
    log.info("dip: resuming from %s (iteration %d of %d)", path, state["iteration"],
             d.iterations)
    return state


def log_fresh_start(ckpt_dir: Path, iterations: int) -> None:
    """Say why the DIP starts from iteration 0 although checkpoints may be at hand."""
    own = list_checkpoints(ckpt_dir)
    others = [s for s in checkpoint_sets(ckpt_dir.parent) if s != ckpt_dir]
    if own:
        log.info("dip: the checkpoints of these settings are past dip.iterations=%d (first "
                 "at iteration %d): starting from iteration 0", iterations, own[0][0])
    elif others:
        log.info("dip: no checkpoint for these settings and data (set %s): starting from "
                 "iteration 0; the checkpoints of %d other setting(s) are kept in %s",
                 ckpt_dir.name, len(others), ckpt_dir.parent)
