"""``adept recon``: volume reconstruction from the run directory's projections.

FBP is distributed like every backprojection here: each rank filters and backprojects its
block of angles and the partial volumes are summed over ranks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpc_adept.config import Config
from hpc_adept.errors import ConfigError, DataError
from hpc_adept.io import ProjectionSet, read_ground_truth, read_projections, write_volume
from hpc_adept.parallel import ParallelContext, allreduce_sum, block_range

log = logging.getLogger(__name__)

IMPLEMENTED_METHODS = ("fbp",)


@dataclass(frozen=True)
class ReconPlan:
    """Inputs and outputs of the stage, resolved and checked before any work."""

    input_path: Path
    run_dir: Path
    methods: tuple[str, ...]


def plan_recon(cfg: Config) -> ReconPlan:
    """Check the config and the run directory; no work, no output."""
    for method in cfg.recon.methods:
        if method not in IMPLEMENTED_METHODS:
            raise ConfigError(
                f"recon.methods: {method!r} is not available in this version "
                f"(available: {', '.join(IMPLEMENTED_METHODS)})"
            )
    run_dir = Path(cfg.output.dir)
    choice = cfg.recon.input
    aligned, raw = run_dir / "aligned.h5", run_dir / "projections.h5"
    if choice == "aligned" or (choice == "auto" and aligned.is_file()):
        path = aligned
    else:
        path = raw
    if not path.is_file():
        raise ConfigError(
            f"recon: {path} not found (run adept ptycho/align first, or adept simulate "
            f"with simulate.write_projections: true)"
        )
    return ReconPlan(path, run_dir, tuple(cfg.recon.methods))


def fbp_distributed(ps: ProjectionSet, volume_shape: tuple[int, int, int],
                    ctx: ParallelContext, device: object) -> np.ndarray:
    """FBP with angles split over ranks and partial volumes summed (every rank gets it).

    Returns
    -------
    ndarray, float32, [nz, ny, nx]
    """
    import torch

    from hpc_adept.lamino import Geometry, angular_weights, backproject, ramp_filter

    full = Geometry(ps.angles_deg, ps.tilt_deg, volume_shape, ps.projections.shape[1:])
    weights = angular_weights(full)
    mine = block_range(len(ps.angles_deg), ctx.size, ctx.rank)
    part = np.zeros(volume_shape, np.float32)
    if len(mine):
        sub = Geometry(ps.angles_deg[mine.start:mine.stop], ps.tilt_deg, volume_shape,
                       ps.projections.shape[1:])
        with torch.no_grad():
            proj = torch.from_numpy(ps.projections[mine.start:mine.stop]).to(device)
            filtered = ramp_filter(proj, ps.tilt_deg)
            w = torch.as_tensor(weights[mine.start:mine.stop], dtype=filtered.dtype,
                                device=filtered.device)
            part = backproject(filtered * w[:, None, None], sub).cpu().numpy()
    return allreduce_sum(ctx, part.astype(np.float32))


def run_recon(cfg: Config, ctx: ParallelContext, plan: ReconPlan, device: object) -> None:
    """Run the stage on all ranks."""
    from hpc_adept.report.figures import save_orthoslices

    ps = read_projections(plan.input_path)
    log.info("recon: %d projections %s from %s, tilt %.2f deg, volume %s",
             len(ps.angles_deg), list(ps.projections.shape[1:]), plan.input_path.name,
             ps.tilt_deg, list(cfg.recon.volume_shape))
    for method in plan.methods:
        t0 = time.perf_counter()
        if method == "fbp":
            volume = fbp_distributed(ps, cfg.recon.volume_shape, ctx, device)
        else:  # plan_recon admits implemented methods only
            raise AssertionError(method)
        if not np.all(np.isfinite(volume)):
            raise DataError(f"recon: the {method} volume holds NaN/Inf (input {plan.input_path})")
        if ctx.is_root:
            out = plan.run_dir / f"volume_{method}.h5"
            write_volume(out, volume, ps.pixel_size_m, attrs={"method": method})
            log.info("recon: %s done in %.1f s -> %s", method, time.perf_counter() - t0, out)
            panels = {method.upper(): volume}
            truth = _matching_ground_truth(cfg, volume.shape)
            if truth is not None:
                panels = {"ground truth": truth, **panels}
            save_orthoslices(plan.run_dir / "figures" / f"{method}_slices.png", panels,
                             title=f"{method.upper()} from {len(ps.angles_deg)} angles")


def _matching_ground_truth(cfg: Config, shape: tuple[int, ...]) -> np.ndarray | None:
    """The ground-truth volume for the figure, when one of the same shape is at hand."""
    candidates = [cfg.evaluate.reference]
    if cfg.data.path:
        candidates.append(str(Path(cfg.data.path) / "ground_truth.h5"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            try:
                volume = read_ground_truth(candidate, require_occupancy=False).volume
            except DataError as exc:
                log.warning("ignoring reference for the figure: %s", exc)
                continue
            if volume.shape == tuple(shape):
                return volume
    return None
