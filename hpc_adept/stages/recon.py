"""``adept recon``: volume reconstruction from the run directory's projections.

A region of an extended sample (``recon.sample``, :mod:`hpc_adept.lamino.region`) is
reconstructed widened by ``recon.lateral_margin`` and cut back to ``recon.volume_shape``;
each projection's offset and ramp are ignored where they are unknown.

FBP is distributed like every backprojection here: each rank filters and backprojects its
block of angles; with ``runtime.deterministic`` the per-angle volumes are summed exactly
(the same bits on any number of ranks), else the partial volumes are all-reduced.

DIP (deep image prior) is data parallel: every rank builds the same network from the same
seed and projects only its block of angles; with the angles split and
``runtime.deterministic`` the volume gradient is summed exactly and every rank takes the
same backward (:mod:`hpc_adept.dip.exact`), else the network's gradients are all-reduced by
DistributedDataParallel (:mod:`hpc_adept.parallel.ddp`). Checkpoints go to
``output.dir/checkpoints/dip/<fingerprint>`` (one set per DIP problem: settings and data);
a rerun resumes from the newest one of its own set at or before ``dip.iterations``, other
settings start their own set. SIGTERM/SIGUSR1 during
training make all ranks stop at the same iteration, write a checkpoint and raise
:class:`~hpc_adept.errors.StopRequested` (the command exits with code 75, "stopped at
iteration k, checkpoint written"), without ``volume_dip.h5``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hpc_adept import timing
from hpc_adept.backend import cpu_has_native_bf16
from hpc_adept.config import Config
from hpc_adept.errors import ConfigError, DataError, StopRequested
from hpc_adept.io import ProjectionSet, read_ground_truth, read_projections, write_volume
from hpc_adept.io.runfiles import stored_projection_shape
from hpc_adept.lamino.region import (
    RegionPlan,
    extend_columns,
    looks_isolated,
    plan_region,
    reference_to_border,
    sample_indices,
)
from hpc_adept.parallel import ParallelContext, aligned_block_range, allreduce_sum, block_range

if TYPE_CHECKING:  # torch and the DIP are imported where they run: the CLI's checks stay light
    from hpc_adept.dip import ShardData, TrainResult
    from hpc_adept.dip.resume import CheckpointSet
    from hpc_adept.dip.sharding import DipLayout

log = logging.getLogger(__name__)

IMPLEMENTED_METHODS = ("fbp", "dip")


@dataclass(frozen=True)
class ReconPlan:
    """Inputs and outputs of the stage, resolved and checked before any work."""

    input_path: Path
    run_dir: Path
    methods: tuple[str, ...]
    cfg: Config | None = None

    def validate(self, ctx: ParallelContext, device: object) -> None:
        """Stop before any work when FBP or the DIP will not fit in memory, or the DIP
        cannot be split so."""
        if self.cfg is None:
            return
        if "fbp" in self.methods and self.cfg.runtime.memory_guard:
            check_fbp_memory(self.cfg, self.input_path, ctx)
        if "dip" not in self.methods:
            return
        if dip_decomposition(self.cfg, ctx.size) == "volume":
            dip_slab(self.cfg, ctx.size, ctx.rank)
        if self.cfg.dip.memory_guard:
            check_dip_memory(self.cfg, self.input_path, ctx)


def dip_slab(cfg: Config, size: int, rank: int) -> range:
    """This rank's z slices with ``dip.decomposition: volume`` (ConfigError if none)."""
    nz = cfg.recon.volume_shape[0]
    multiple = math.prod(cfg.dip.strides)
    slab = aligned_block_range(nz, size, rank, multiple)
    if not len(slab):
        raise ConfigError(
            f"dip.decomposition: volume needs a block of {multiple} z slices (the product "
            f"of dip.strides) per rank, but recon.volume_shape has {nz} slices for {size} "
            f"ranks; use at most {-(-nz // multiple)} ranks or dip.decomposition: angles")
    return slab


#: ``dip.decomposition: auto`` splits the volume when every rank gets at least this many
#: blocks of ``prod(dip.strides)`` slices (thinner slabs spend most of their convolutions
#: on the neighbours' planes).
AUTO_MIN_BLOCKS = 2


def dip_decomposition(cfg: Config, size: int) -> str:
    """``angles`` or ``volume``: ``dip.decomposition``, with ``auto`` resolved for
    ``size`` ranks (volume when every rank gets :data:`AUTO_MIN_BLOCKS` blocks)."""
    choice = cfg.dip.decomposition
    if choice != "auto":
        return choice
    blocks = cfg.recon.volume_shape[0] // math.prod(cfg.dip.strides)
    return "volume" if size > 1 and blocks >= AUTO_MIN_BLOCKS * size else "angles"


def plan_recon(cfg: Config) -> ReconPlan:
    """Check the config and the run directory; no work, no output."""
    for method in cfg.recon.methods:
        if method not in IMPLEMENTED_METHODS:
            raise ConfigError(
                f"recon.methods: {method!r} is not available in this version "
                f"(available: {', '.join(IMPLEMENTED_METHODS)})"
            )
    if "dip" in cfg.recon.methods:
        _plan_dip(cfg)
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
    return ReconPlan(path, run_dir, tuple(cfg.recon.methods), cfg)


def check_dip_memory(cfg: Config, input_path: Path, ctx: ParallelContext) -> None:
    """DataError (one line, with what to change) when the DIP would exceed the memory."""
    from hpc_adept.backend import memory_shortfall, peak_memory_bytes, select_torch_device
    from hpc_adept.dip.memory import estimate_dip_bytes

    # the validating reader: a junk file or a missing/2-D /projections is one DataError line
    n_angles, nv, nu = stored_projection_shape(input_path)
    d = cfg.dip
    per_step = min(n_angles, d.angles_per_step or n_angles)
    shape = planned_region(cfg, input_path).shape  # the widened volume the network computes
    if dip_decomposition(cfg, ctx.size) == "volume":  # a slab, projected for every angle
        longest = max(len(dip_slab(cfg, ctx.size, r)) for r in range(ctx.size))
        shape, local = (longest, *shape[1:]), per_step
    else:
        local = -(-per_step // ctx.size)
    need = estimate_dip_bytes(d.in_channels, d.channels, d.strides, d.skip_channels,
                              shape, local, (nv, nu), d.bf16, d.activation_checkpointing)
    device = select_torch_device(cfg.runtime.device, ctx.local_rank)
    estimate, need = need, peak_memory_bytes(need, device, cfg.runtime.keep_host_memory)
    kept = need > estimate
    shortfall = memory_shortfall("dip", need, device, ctx.local_size)
    if shortfall:
        raise DataError(
            f"{shortfall}; reduce dip.channels / dip.in_channels or "
            f"recon.volume_shape, set dip.activation_checkpointing: true (or dip.bf16), "
            f"fewer dip.angles_per_step, "
            + ("dip.decomposition: volume (a z slab of the network per rank), "
               if dip_decomposition(cfg, ctx.size) == "angles" and ctx.size > 1 else "")
            + ("runtime.keep_host_memory: false, " if kept else "")
            + "or use larger nodes (dip.memory_guard: false skips this check)")
    log.info("dip: about %.2f GiB per rank", need / 2**30)


def fbp_memory_bytes(projection_shape: tuple[int, int, int],
                     volume_shape: tuple[int, int, int], n_ranks: int,
                     on_gpu: bool) -> tuple[int, int]:
    """(host, device) peak bytes of one rank's FBP; device is 0 when it runs on the host.

    Host: the projections as read (with probes and extras, counted as two more copies)
    and four volumes (the partial sum, its float32 copy, the all-reduced sum, rank 0's
    reference for the figure). Device: the backprojected volume, a second one inside the
    backprojector, this rank's projections filtered (complex, padded) and the chunk buffer.
    """
    n, nv, nu = projection_shape
    voxels = math.prod(volume_shape)
    n_local = -(-n // n_ranks)
    host = (512 << 20) + 3 * 4 * n * nv * nu + 4 * 4 * voxels
    device = 2 * 4 * voxels + 4 * 4 * n_local * nv * nu + (1 << 30 if on_gpu else 32 << 20)
    return (host, device) if on_gpu else (host + device, 0)


def check_fbp_memory(cfg: Config, input_path: Path, ctx: ParallelContext) -> None:
    """DataError (one line: estimate and available memory) when FBP will not fit.

    Collective: every rank checks its node and all stop with the first problem found.
    """
    import torch

    from hpc_adept.backend import (
        MEMORY_GUARD_HINT,
        memory_shortfall,
        peak_memory_bytes,
        select_torch_device,
    )
    from hpc_adept.parallel import first_failure

    def local_check() -> str | None:
        shape = stored_projection_shape(input_path)
        device = select_torch_device(cfg.runtime.device, ctx.local_rank)
        on_gpu = device.type == "cuda"
        region = planned_region(cfg, input_path)
        if region.extended:  # the projections continued beyond the window, twice as wide
            shape = (shape[0], shape[1], 2 * shape[2])
        host, on_device = fbp_memory_bytes(shape, region.shape, ctx.size, on_gpu)
        host = peak_memory_bytes(host, torch.device("cpu"), cfg.runtime.keep_host_memory)
        for need, where_device in ((host, torch.device("cpu")), (on_device, device)):
            shortfall = need and memory_shortfall("fbp", need, where_device, ctx.local_size)
            if shortfall:
                return (f"{shortfall}, for a {list(cfg.recon.volume_shape)} volume from "
                        f"{list(shape)} projections in {input_path.name}; set a smaller "
                        f"recon.volume_shape or use larger nodes{MEMORY_GUARD_HINT}")
        return None

    problem = first_failure(ctx, local_check)
    if problem is not None:
        raise DataError(problem)


def fbp_distributed(ps: ProjectionSet, volume_shape: tuple[int, int, int],
                    ctx: ParallelContext, device: object, kernel: str = "torch",
                    exact: bool = False) -> np.ndarray:
    """FBP with angles split over ranks and partial volumes summed (every rank gets it).

    Each rank moves only its block of projections to ``device`` and backprojects it with
    ``kernel`` (``runtime.projector``), weighted by its share of the whole scan's angular
    weights. ``exact`` (``runtime.deterministic``): the same bits on any number of ranks
    (:func:`fbp_exact`).

    Returns
    -------
    ndarray, float32, [nz, ny, nx]
    """
    import torch

    from hpc_adept.lamino import Geometry, LaminoOperator, angular_weights

    full = Geometry(ps.angles_deg, ps.tilt_deg, volume_shape, ps.projections.shape[1:])
    weights = angular_weights(full)
    if exact:
        return fbp_exact(ps, full, weights, ctx, device, kernel)
    mine = block_range(len(ps.angles_deg), ctx.size, ctx.rank)
    part = np.zeros(volume_shape, np.float32)
    if len(mine):
        block = slice(mine.start, mine.stop)
        op = LaminoOperator(full, kernel=kernel).angles_subset(block)
        with torch.no_grad():
            proj = torch.from_numpy(ps.projections[block]).to(device)
            part = op.fbp(proj, weights=weights[block]).cpu().numpy()
    return allreduce_sum(ctx, part.astype(np.float32))


def planned_region(cfg: Config, input_path: Path) -> RegionPlan:
    """:func:`recon_region` before the work, from a few of the stored projections."""
    from hpc_adept.io.runfiles import read_projection_sample, read_sample_kind

    sample, tilt = read_projection_sample(input_path)
    return _region(cfg, tilt, lambda: looks_isolated(sample), read_sample_kind(input_path))


def _region(cfg: Config, tilt_deg: float, isolated: Callable[[], bool],
            decided: str | None, offsets_arbitrary: bool = False) -> RegionPlan:
    """``decided``: the kind ``adept align`` stored (it saw the uncropped window), which
    ``auto`` follows; without one ``auto`` looks at the border."""
    r = cfg.recon
    if r.sample == "auto" and decided is not None:
        extended = decided == "extended"
    else:
        extended = r.sample == "extended" or (r.sample == "auto" and not isolated())
    multiple = math.prod(cfg.dip.strides) if "dip" in r.methods else 1
    plan = plan_region(tuple(r.volume_shape), tilt_deg, extended, r.lateral_margin, multiple)
    # isolated (by its empty border, or as align decided from the whole window): a border
    # of vacuum is the phase's reference (recon_inputs checks every projection's first)
    if not extended and r.sample == "auto" and offsets_arbitrary:
        plan = dataclasses.replace(plan, border_referenced=True)
    return plan


def recon_region(cfg: Config, ps: ProjectionSet) -> RegionPlan:
    """The region plan of ``recon.sample`` and ``recon.lateral_margin`` for these data
    (``auto``: the kind ``adept align`` stored in ``aligned.h5``, else extended unless the
    projections' border is empty)."""
    picks = sample_indices(len(ps.projections))  # as planned_region reads them
    arbitrary = ps.extra.get("phase_offset_arbitrary")  # written by adept ptycho
    if cfg.recon.sample == "auto" and ps.sample_kind is not None:
        border = "isolated" if looks_isolated(ps.projections[picks]) else "extended"
        if border != ps.sample_kind:
            log.info("recon: the border of these projections looks %s, adept align decided "
                     "%s from the uncropped window: %s it is (set recon.sample to choose)",
                     border, ps.sample_kind, ps.sample_kind)
    return _region(cfg, ps.tilt_deg, lambda: looks_isolated(ps.projections[picks]),
                   ps.sample_kind, arbitrary is not None and bool(np.any(arbitrary)))


def recon_inputs(cfg: Config, ps: ProjectionSet) -> tuple[ProjectionSet, RegionPlan]:
    """The projections as the methods use them, and the region plan.

    An isolated sample whose offsets and ramps are arbitrary is referenced to its empty
    border (:func:`~hpc_adept.lamino.region.reference_to_border`), which keeps its own low
    frequencies, when every projection's border is empty (the plan looked at eight);
    otherwise, and for an extended sample, it is reconstructed blind to them
    (``plane_free``).

    Parameters
    ----------
    cfg : Config
    ps : ProjectionSet
        As read from ``projections.h5`` / ``aligned.h5``.

    Returns
    -------
    (ProjectionSet, RegionPlan)
        The projections to reconstruct (a referenced copy, or ``ps`` itself) and the plan;
        :func:`fbp_region` and :func:`dip_distributed` take the two together.
    """
    region = recon_region(cfg, ps)
    if region.border_referenced and not all(
            looks_isolated(ps.projections[i:i + 1]) for i in range(len(ps.projections))):
        # eight projections looked isolated, not all: no border to trust; stay blind
        log.info("recon: some projections' border is not empty: each projection's offset "
                 "and ramp ignored instead of referenced to the border")
        region = dataclasses.replace(region, border_referenced=False, plane_free=True)
    if region.border_referenced:
        ps = dataclasses.replace(ps, projections=reference_to_border(ps.projections))
    return ps, region


def fbp_region(ps: ProjectionSet, region: RegionPlan, ctx: ParallelContext, device: object,
               kernel: str = "torch", exact: bool = False) -> np.ndarray:
    """FBP of the region: from projections without their constant and ramp (plane fit per
    projection) when those are unknown; for an extended sample, of the widened volume from
    projections continued beyond the window before the ramp filter
    (:func:`~hpc_adept.lamino.region.extend_columns`), then cut to the region. ``exact``:
    see :func:`fbp_distributed`. float32 [nz, ny, nx]."""
    projections = ps.projections
    if region.plane_free:
        import torch

        from hpc_adept.lamino.planes import remove_planes

        projections = remove_planes(torch.from_numpy(projections.astype(np.float64))).numpy()
    if not region.extended:
        ps = ProjectionSet(projections=projections.astype(np.float32),
                           angles_deg=ps.angles_deg, tilt_deg=ps.tilt_deg,
                           pixel_size_m=ps.pixel_size_m)
        return region.crop(fbp_distributed(ps, region.shape, ctx, device, kernel, exact))
    flat = projections
    pad = ps.projections.shape[-1] // 2
    wide = ProjectionSet(projections=extend_columns(flat, pad).astype(np.float32),
                         angles_deg=ps.angles_deg, tilt_deg=ps.tilt_deg,
                         pixel_size_m=ps.pixel_size_m)
    return region.crop(fbp_distributed(wide, region.shape, ctx, device, kernel, exact))


def fbp_exact(ps: ProjectionSet, full: object, weights: np.ndarray, ctx: ParallelContext,
              device: object, kernel: str) -> np.ndarray:
    """FBP whose volume has the same bits on any number of ranks: each angle filtered and
    backprojected on its own, the volumes summed exactly
    (:func:`hpc_adept.parallel.distops.exact_angle_sum`); float32 [nz, ny, nx]."""
    import torch

    from hpc_adept.lamino import LaminoOperator
    from hpc_adept.parallel.distops import exact_angle_sum

    op = LaminoOperator(full, kernel=kernel)

    def one_angle(n: int) -> torch.Tensor:
        proj = torch.from_numpy(ps.projections[n:n + 1]).to(device)
        with torch.no_grad():
            return op.angles_subset([n]).fbp(proj, weights=weights[n:n + 1])

    mine = block_range(len(ps.angles_deg), ctx.size, ctx.rank)
    return exact_angle_sum(ctx, one_angle, mine, len(ps.angles_deg), full.volume_shape,
                           device).cpu().numpy()


def run_recon(cfg: Config, ctx: ParallelContext, plan: ReconPlan, device: object) -> None:
    """Run the stage on all ranks."""
    from hpc_adept.report.figures import save_orthoslices

    ps = read_projections(plan.input_path)
    if len(ps.angles_deg) < ctx.size and "dip" in plan.methods:
        log.warning("recon: %d ranks for %d angles: some ranks only run the network",
                    ctx.size, len(ps.angles_deg))
    ps, region = recon_inputs(cfg, ps)
    how = ""
    if cfg.recon.sample == "auto":
        how = " (as adept align decided)" if ps.sample_kind else " (from the projections' border)"
    log.info("recon: %d projections %s from %s, tilt %.2f deg, volume %s, %s sample%s%s%s%s",
             len(ps.angles_deg), list(ps.projections.shape[1:]), plan.input_path.name,
             ps.tilt_deg, list(cfg.recon.volume_shape),
             "extended" if region.extended else "isolated", how,
             f", reconstructed {list(region.shape)} (lateral margin {region.margin_px})"
             if region.margin_px else "",
             ", each projection's offset and ramp ignored" if region.plane_free else "",
             ", each projection referenced to its empty border" if region.border_referenced
             else "")
    for method in plan.methods:
        t0 = time.perf_counter()
        attrs: dict[str, object] = {"method": method}
        if method == "fbp":
            with timing.region("recon/fbp", device):
                volume = fbp_region(ps, region, ctx, device, cfg.runtime.projector,
                                    cfg.runtime.deterministic)
        elif method == "dip":
            with timing.region("recon/dip", device):
                volume, attrs = dip_distributed(cfg, ps, ctx, device, plan.run_dir, region)
        else:  # plan_recon admits implemented methods only
            raise AssertionError(method)
        leveled = cfg.recon.level_slices and region.extended and region.plane_free
        if leveled:
            from hpc_adept.lamino.planes import level_slices

            volume = level_slices(volume)
        attrs.update(sample="extended" if region.extended else "isolated",
                     lateral_margin_px=region.margin_px, plane_free=int(region.plane_free),
                     border_referenced=int(region.border_referenced),
                     slices_leveled=int(leveled))
        if not np.all(np.isfinite(volume)):
            raise DataError(f"recon: the {method} volume holds NaN/Inf (input {plan.input_path})")
        if ctx.is_root:
            out = plan.run_dir / f"volume_{method}.h5"
            write_volume(out, volume, ps.pixel_size_m, attrs=attrs)
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


def _plan_dip(cfg: Config) -> None:
    """DIP checks that need no data: the wavelet and the checkpoint directory."""
    d = cfg.dip
    if d.hpf == "wavelet":
        import pywt

        if d.hpf_wavelet not in pywt.wavelist(kind="discrete"):
            raise ConfigError(f"dip.hpf_wavelet: {d.hpf_wavelet!r} is not a discrete "
                              f"PyWavelets wavelet (e.g. db8, sym8, haar)")
    ckpt = Path(cfg.output.dir) / "checkpoints" / "dip"
    if ckpt.exists() and not ckpt.is_dir():
        raise ConfigError(f"output.dir: {ckpt} exists and is not a directory")


def dip_distributed(cfg: Config, ps: ProjectionSet, ctx: ParallelContext, device: object,
                    run_dir: Path, region: RegionPlan | None = None
                    ) -> tuple[np.ndarray, dict[str, object]]:
    """Deep image prior over the ranks (angles or volume split); every rank gets the volume.

    With ``region`` (default: :func:`recon_inputs`, which also references an isolated
    sample's projections to their border when needed) the network computes the widened
    volume and the region is returned.

    Returns
    -------
    (volume, attrs) : ndarray float32 [nz, ny, nx] (the lowest-loss state) and attributes
        for ``volume_dip.h5``.

    Raises
    ------
    StopRequested
        When a stop signal ended the training early (after the checkpoint was written).
    """
    from hpc_adept.dip.network import count_parameters, input_from_config, network_from_config

    if region is None:
        ps, region = recon_inputs(cfg, ps)
    layout, shard = _dip_shard(cfg, ps, ctx, device, region)
    model = network_from_config(cfg.dip, cfg.runtime.seed).to(device)
    noise = input_from_config(cfg.dip, region.shape, cfg.runtime.seed, layout.z).to(device)
    log.info("dip: network with %d parameters, input %s, device %s",
             count_parameters(model), list(noise.shape), device)
    checkpoints = _dip_checkpoints(cfg, ps, ctx, run_dir, device)
    result = _train_dip(cfg, ctx, device, layout, model, noise, shard, checkpoints)
    volume, attrs = _dip_outputs(result, ctx, run_dir, checkpoints.directory,
                                 layout.by_volume)
    return region.crop(volume), attrs


def _dip_shard(cfg: Config, ps: ProjectionSet, ctx: ParallelContext, device: object,
               region: RegionPlan) -> tuple[DipLayout, ShardData]:
    """This rank's angles and slab of the DIP problem, and its targets on ``device``."""
    from hpc_adept.dip.sharding import build_shard, dip_layout, volume_tv_weights
    from hpc_adept.lamino import Geometry
    from hpc_adept.lamino.coverage import full_path_mask

    d, shape = cfg.dip, region.shape
    by_volume = dip_decomposition(cfg, ctx.size) == "volume" and ctx.is_parallel
    slab = dip_slab(cfg, ctx.size, ctx.rank) if by_volume else None
    layout = dip_layout(len(ps.angles_deg), shape[0], ctx.size, ctx.rank, slab)
    weights = volume_tv_weights(ps, d, shape[0])
    mask = None
    if region.margin_px:  # rays that leave the widened volume crossed unmodelled chip
        geometry = Geometry(ps.angles_deg, ps.tilt_deg, shape, ps.projections.shape[1:])
        mask = full_path_mask(geometry, cfg.runtime.projector, device=device)
    shard = build_shard(ps, d, shape, layout, weights, device, mask, region.plane_free)
    log.info("dip: %d angles (%d on rank 0), hpf %s, data term %s, TV weight per slice "
             "from bottom %s ... top %s", len(ps.angles_deg), len(layout.angles), d.hpf,
             d.data_term, weights[0], weights[-1])
    if by_volume:
        log.info("dip: volume split in z slabs, rank 0 computes slices %d-%d of %d",
                 slab.start, slab.stop - 1, shape[0])
    return layout, shard


def _dip_checkpoints(cfg: Config, ps: ProjectionSet, ctx: ParallelContext, run_dir: Path,
                     device: object) -> CheckpointSet:
    """The checkpoint set of this problem (prepared by rank 0) and the state every rank
    resumes from (DataError when the ranks see different checkpoints)."""
    from hpc_adept.dip.checkpoint import checkpoint_set, prepare_checkpoint_set
    from hpc_adept.dip.resume import CheckpointSet, find_resume_state, problem_fingerprint
    from hpc_adept.parallel import barrier, bcast

    fp = problem_fingerprint(cfg, ps)
    ckpt_dir = checkpoint_set(run_dir / "checkpoints" / "dip", fp)
    if ctx.is_root:  # the set of this problem, emptied with dip.resume=false
        prepare_checkpoint_set(ckpt_dir.parent, fp, resume=cfg.dip.resume)
    barrier(ctx)
    found = CheckpointSet(ckpt_dir, fp, find_resume_state(ckpt_dir, fp, cfg.dip, device,
                                                          explain=ctx.is_root))
    root_start = bcast(ctx, found.start)
    if root_start != found.start:
        raise DataError(f"dip: rank {ctx.rank} sees checkpoint iteration {found.start} in "
                        f"{ckpt_dir}, rank 0 sees {root_start} (output.dir must be shared)")
    return found


def _train_dip(cfg: Config, ctx: ParallelContext, device: object, layout: DipLayout,
               model: object, noise: object, shard: ShardData,
               checkpoints: CheckpointSet) -> TrainResult:
    """Run the trainer on every rank, with progress, checkpoints (rank 0 writes) and the
    collective stop on SIGTERM/SIGUSR1."""
    from hpc_adept.dip import DipTrainer
    from hpc_adept.lamino.projector import clear_grid_cache
    from hpc_adept.log import Progress
    from hpc_adept.parallel.ddp import StopFlag
    from hpc_adept.parallel.torchdist import destroy_torch_distributed

    d = cfg.dip
    if d.bf16 and device.type == "cpu" and cpu_has_native_bf16() is False:
        log.warning("dip.bf16: this CPU has no AVX512-BF16 or AMX, so bf16 convolutions "
                    "are emulated and may be slower than float32")
    progress = Progress(max(1, d.iterations - checkpoints.start), "dip iterations", log)

    def on_iteration(it: int, values: dict[str, float]) -> None:
        progress.update(extra=f"loss {values['loss']:.5g}, lr {values['lr']:.2g}")

    comm = dip_communicator(cfg, ctx, device, layout)
    with StopFlag() as stop:
        # no name holds the trainer (and its DDP-wrapped model) past the training: it is
        # released before the process group it uses is torn down
        result = DipTrainer(model, noise, shard, d, comm, seed=cfg.runtime.seed,
                            kernel=cfg.runtime.projector, stop_requested=stop,
                            on_iteration=on_iteration,
                            save_checkpoint=checkpoints.save if ctx.is_root else None,
                            ).fit(checkpoints.resume_state)
    # Only after training ends on every rank: a failing rank that tore its process group
    # down while unwinding broke the others' all-reduce, and they could end the job (gloo
    # terminates the process) before this rank had printed its error; the CLI aborts instead.
    destroy_torch_distributed()
    clear_grid_cache()  # the projector's rotation grids: device memory the next stage can use
    return result


def dip_communicator(cfg: Config, ctx: ParallelContext, device: object,
                     layout: DipLayout) -> object:
    """How the ranks share the DIP: z slabs (volume split); with the angles split, exact
    partition-independent sums (``runtime.deterministic``: the same bits on any number of
    ranks) or DDP's gradient averaging."""
    from hpc_adept.parallel.ddp import DdpCommunicator
    from hpc_adept.parallel.replica import ReplicaCommunicator
    from hpc_adept.parallel.slabs import SlabCommunicator

    if layout.by_volume:
        return SlabCommunicator(ctx, device, layout.nz, math.prod(cfg.dip.strides))
    if cfg.runtime.deterministic:
        return ReplicaCommunicator(ctx, device)
    return DdpCommunicator(ctx, device)


def _dip_outputs(result: TrainResult, ctx: ParallelContext, run_dir: Path, ckpt_dir: Path,
                 by_volume: bool) -> tuple[np.ndarray, dict[str, object]]:
    """Write ``dip_history.json`` and the loss curve (rank 0); the volume and its
    attributes, or StopRequested when a stop ended the training."""
    from hpc_adept.io import write_json_atomic

    history = {**result.history, "best_iteration": result.best_iteration,
               "best_loss": result.best_loss, "iterations_done": result.next_iteration,
               "stopped": result.stopped, "n_ranks": ctx.size}
    if ctx.is_root:
        write_json_atomic(run_dir / "dip_history.json", history)
    if result.stopped:
        raise StopRequested(f"dip: stopped at iteration {result.next_iteration}, checkpoint "
                            f"written in {ckpt_dir}; run the same command again to resume")
    if ctx.is_root:
        from hpc_adept.report.dip_plots import save_loss_curve

        save_loss_curve(run_dir / "figures" / "dip_loss.png", history)
    log.info("dip: best loss %.5g at iteration %d of %d, %d rollback(s)", result.best_loss,
             result.best_iteration, result.next_iteration, len(result.history["rollbacks"]))
    attrs = {"method": "dip", "best_iteration": result.best_iteration,
             "best_loss": result.best_loss, "iterations": result.next_iteration,
             "n_ranks": ctx.size, "decomposition": "volume" if by_volume else "angles"}
    return result.volume, attrs
