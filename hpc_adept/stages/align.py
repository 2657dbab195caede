"""``adept align``: projection-matching alignment and centre crop -> ``aligned.h5``.

Rank 0 reads ``projections.h5`` and broadcasts it; every rank runs the same projection
matching loop (:func:`hpc_adept.align.projection_matching`) with the reconstruct and
reproject steps shared out by angle (:class:`hpc_adept.parallel.DistributedLaminoOperator`,
kernel ``runtime.projector``), so the heavy work per iteration divides by the number of
ranks while the cheap per-projection shift updates are computed identically everywhere.
Rank 0 writes ``aligned.h5`` (shifted, centre-cropped projections, ``/shifts_px``,
``/align_residual``, the root attribute ``sample``: the kind of sample it decided),
``align_history.json`` and the figures ``figures/align_shifts.png``
and ``figures/align_convergence.png``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hpc_adept.config import AlignConfig, Config
from hpc_adept.errors import ConfigError, DataError
from hpc_adept.io import ProjectionSet, read_projections, write_json_atomic, write_projections
from hpc_adept.io.h5read import open_h5, require_dataset
from hpc_adept.io.runfiles import HISTORY_NAME, TILT_ATTR
from hpc_adept.parallel import ParallelContext, bcast, bcast_array

if TYPE_CHECKING:  # torch only where the stage runs
    from hpc_adept.align import AlignResult

log = logging.getLogger(__name__)

# Smallest projection side at the coarsest binning level that still carries structure.
MIN_BINNED_PX = 8


@dataclass(frozen=True)
class AlignPlan:
    """Inputs, outputs and settings of the stage, checked before any work.

    Attributes
    ----------
    input_path, output_path, history_path : Path
        ``projections.h5``, ``aligned.h5``, ``align_history.json`` of the run directory.
    run_dir : Path
    projection_shape : (n_angles, nv, nu)
        Shape of the input projections.
    crop_shape : (nv, nu)
        Centre crop written (``align.crop_shape``, limited to the projection size).
    volume_shape : (nz, ny, nx)
        Volume of the projection matching reconstructions (the region).
    widened_shape : (nz, ny, nx)
        ``volume_shape`` with ``align.lateral_margin`` at full resolution (the largest
        volume reconstructed); equal to ``volume_shape`` for a margin of 0.
    volumes : int
        Widened volumes kept between iterations (``align.cross_folds`` with a margin).
    extended : bool
        ``align.sample`` resolved (``auto``: from the border of eight projections, as
        ``recon.sample: auto``): a region of an extended sample.
    """

    input_path: Path
    output_path: Path
    history_path: Path
    run_dir: Path
    projection_shape: tuple[int, int, int]
    crop_shape: tuple[int, int]
    volume_shape: tuple[int, int, int]
    widened_shape: tuple[int, int, int] | None = None
    volumes: int = 1
    extended: bool = False
    device_choice: str = "auto"
    enabled: bool = True
    keep_host_memory: bool = True
    memory_guard: bool = True
    layer_interfaces_um: tuple[float, ...] = ()

    def validate(self, ctx: ParallelContext, device: object) -> None:
        """Stop before any work when projection matching will not fit in memory.

        Every rank holds all projections (several working copies), the widened volumes
        kept between iterations and a few more (the CGLS vectors) plus the projector's
        chunk buffer.
        """
        if not (self.enabled and self.memory_guard):
            return
        from hpc_adept.backend import (
            MEMORY_GUARD_HINT,
            memory_shortfall,
            peak_memory_bytes,
            select_torch_device,
        )

        n, nv, nu = self.projection_shape
        voxels = int(np.prod(self.widened_shape or self.volume_shape))
        device = select_torch_device(self.device_choice, ctx.local_rank)
        chunk = 1 << 30 if device.type == "cuda" else 32 << 20
        estimate = (512 << 20) + 4 * (8 * n * nv * nu + (7 + self.volumes) * voxels) + chunk
        need = peak_memory_bytes(estimate, device, self.keep_host_memory)
        shortfall = memory_shortfall("align", need, device, ctx.local_size)
        if shortfall:
            raise DataError(
                f"{shortfall}; set a smaller align.volume_shape or align.lateral_margin "
                f"(or align.sample: isolated, the region only), "
                f"align.enabled: false (crop only), "
                + ("runtime.keep_host_memory: false, " if need > estimate else "")
                + f"or use larger nodes{MEMORY_GUARD_HINT}")


def _stored_shape(path: Path) -> tuple[tuple[int, int, int], float | None]:
    """Shape of ``/projections`` in ``path`` and its tilt (degrees, None when absent or
    not a number) without reading the data."""
    with open_h5(path) as f:
        shape = tuple(int(n) for n in require_dataset(f, "projections", path).shape)
        tilt = f.attrs.get(TILT_ATTR)
    if len(shape) != 3 or 0 in shape:
        raise DataError(f"{path}: /projections must be [n_angles, nv, nu], got {list(shape)}")
    try:
        tilt = float(tilt) if tilt is not None else None
    except (TypeError, ValueError):
        tilt = None
    return shape, tilt  # type: ignore[return-value]


def widened_volume(options: AlignConfig, volume_shape: tuple[int, int, int],
                   detector_shape: tuple[int, int], tilt_deg: float | None
                   ) -> tuple[int, int, int]:
    """The full-resolution volume projection matching reconstructs: ``volume_shape`` with
    ``align.lateral_margin`` (``auto``: :func:`~hpc_adept.lamino.region.lateral_margin_px`
    of the detector window). ``options`` with ``sample`` resolved
    (:func:`hpc_adept.align.sample.method_for`: an isolated sample's margin is 0). A
    missing or invalid tilt (the reader refuses it later) leaves the region as it is."""
    from hpc_adept.align.support import level_margin_px
    from hpc_adept.lamino.region import extended_shape

    if tilt_deg is None or not 0.0 < tilt_deg < 90.0:
        return volume_shape
    margin = level_margin_px(options.lateral_margin, volume_shape, detector_shape, tilt_deg,
                             1)
    return extended_shape(volume_shape, margin)


def plan_align(cfg: Config) -> AlignPlan:
    """Check the config and the run directory; no work, no output.

    Raises
    ------
    ConfigError
        ``projections.h5`` missing, or settings that do not fit the projections.
    DataError
        ``projections.h5`` unreadable or of the wrong layout.
    """
    a = cfg.align
    run_dir = Path(cfg.output.dir)
    source = run_dir / "projections.h5"
    if not source.is_file():
        raise ConfigError(
            f"align: {source} not found (run adept ptycho first, or adept simulate with "
            f"simulate.write_projections: true)"
        )
    shape, tilt = _stored_shape(source)
    crop = (min(a.crop_shape[0], shape[1]), min(a.crop_shape[1], shape[2]))
    if crop != tuple(a.crop_shape):
        log.warning("align.crop_shape %s is larger than the projections %s in %s: keeping "
                    "%s", list(a.crop_shape), list(shape[1:]), source.name, list(crop))
    volume_shape = tuple(a.volume_shape or cfg.recon.volume_shape)
    if a.enabled and min(shape[1:]) // a.binning[0] < MIN_BINNED_PX:
        raise ConfigError(
            f"align.binning: the coarsest level ({a.binning[0]}) leaves fewer than "
            f"{MIN_BINNED_PX} pixels of the {list(shape[1:])} projections in {source}"
        )
    from hpc_adept.align.sample import method_for

    extended = a.enabled and _looks_extended(a, source)
    method = method_for(a, extended)
    widened = widened_volume(method, volume_shape, shape[1:], tilt)  # type: ignore[arg-type]
    return AlignPlan(source, run_dir / "aligned.h5", run_dir / HISTORY_NAME, run_dir,
                     shape, crop, volume_shape,  # type: ignore[arg-type]
                     widened, a.cross_folds if widened != volume_shape else 1, extended,
                     cfg.runtime.device, a.enabled, cfg.runtime.keep_host_memory,
                     cfg.runtime.memory_guard,
                     layer_interfaces(cfg, volume_shape[0])
                     if _joint_level(method, widened, volume_shape) else ())


def _joint_level(options: AlignConfig, widened: tuple[int, ...], volume_shape: tuple[int, ...]
                 ) -> bool:
    """Whether the alignment ends in a joint last level of a widened volume, the one level
    a layer stack is used on (a stack set without one gets a warning)."""
    joint = (options.enabled and options.joint_last_level and len(options.binning) > 1
             and tuple(widened) != tuple(volume_shape))
    stack_set = options.layer_interfaces_um or options.layer_lef not in ("none", "auto")
    if stack_set and not joint:
        log.warning("align: the layer stack is not used: only a joint last level of a "
                    "widened volume fits one (an extended sample, align.joint_last_level, "
                    "more than one binning level)")
    return joint


def layer_interfaces(cfg: Config, volume_nz: int) -> tuple[float, ...]:
    """The chip's layer interfaces (um above the bottom face of the aligned volume of
    ``volume_nz`` slices) that ``align.layer_interfaces_um`` or ``align.layer_lef`` give;
    empty: none.

    ``layer_lef: auto`` takes ``simulate.layout_lef`` when the dataset (``data.path``)
    holds a ``ground_truth.h5`` that ``adept simulate`` wrote from a layout (its root
    attribute ``phantom``; only that attribute is read): the stack of the chip simulated,
    whose slab starts at the substrate; a volume of fewer slices shares its centre, so
    its bottom face lies half the difference higher (``layer_base_um`` is added).
    """
    a = cfg.align
    if a.layer_interfaces_um:
        return tuple(float(h) for h in a.layer_interfaces_um)
    if a.layer_lef == "none":
        return ()
    lef, base_um = a.layer_lef, a.layer_base_um
    if lef == "auto":
        if not _simulated_from_layout(cfg):
            return ()
        lef = cfg.simulate.layout_lef
        s = cfg.simulate
        base_um += 0.5 * (s.volume_shape[0] - volume_nz) * s.voxel_size_m * 1e6
    from hpc_adept.align.layers import lef_interfaces_um

    return lef_interfaces_um(lef, base_um)


def _simulated_from_layout(cfg: Config) -> bool:
    """Whether ``data.path`` holds a ground truth that ``adept simulate`` made of a layout
    whose LEF is still there."""
    if not cfg.data.path or not Path(cfg.simulate.layout_lef).is_file():
        return False
    truth = Path(cfg.data.path) / "ground_truth.h5"
    if not truth.is_file():
        return False
    try:
        with open_h5(truth) as f:
            phantom = f.attrs.get("phantom")
    except (DataError, OSError, TypeError, ValueError):
        log.info("align.layer_lef: auto: %s is unreadable: no layer stack", truth)
        return False
    if isinstance(phantom, bytes):
        phantom = phantom.decode("utf-8", "replace")
    return isinstance(phantom, str) and phantom == "layout"


def _looks_extended(options: AlignConfig, source: Path) -> bool:
    """``align.sample`` as set, or under ``auto`` from eight of the stored projections."""
    if options.sample != "auto":
        return options.sample == "extended"
    from hpc_adept.align.sample import resolve_sample
    from hpc_adept.io.runfiles import read_projection_sample

    looked_at, _ = read_projection_sample(source)
    return resolve_sample(options, looked_at).sample == "extended"


def align_options(cfg: Config, plan: AlignPlan) -> AlignConfig:
    """The ``align`` section with its ``volume_shape`` (default ``recon.volume_shape``)
    and ``sample`` resolved as in ``plan``: what :func:`projection_matching` takes."""
    from hpc_adept.align.sample import method_for

    return method_for(dataclasses.replace(cfg.align, volume_shape=plan.volume_shape),
                      plan.extended)


def shift_and_crop(projections: np.ndarray, shifts_px: np.ndarray, crop_shape: tuple[int, int],
                   device: object = "cpu") -> np.ndarray:
    """Undo the displacements and cut the centred window.

    Parameters
    ----------
    projections : ndarray, float32, [n, nv, nu]
    shifts_px : ndarray, [n, 2], pixels (row, col): ``measured = ideal(r - s)``
    crop_shape : (cv, cu)

    Returns
    -------
    ndarray, float32, [n, cv, cu]
        Each projection shifted by ``-s`` (Fourier shift, edge-replicated padding) and the
        centred crop taken; an odd size difference is compensated by a half-pixel shift, so
        the crop centre stays the detector centre.
    """
    import torch

    from hpc_adept.align import crop_window, shift_images

    (r0, off_r), (c0, off_c) = (crop_window(projections.shape[1], crop_shape[0]),
                                crop_window(projections.shape[2], crop_shape[1]))
    total = -(np.asarray(shifts_px, np.float64) + np.array([off_r, off_c]))
    pad = int(math.ceil(np.abs(total).max(initial=0.0))) + 2
    with torch.no_grad():
        moved = shift_images(torch.from_numpy(projections).to(device),
                             torch.from_numpy(total).to(device), pad=pad)
    out = moved[:, r0:r0 + crop_shape[0], c0:c0 + crop_shape[1]].cpu().numpy()
    return np.ascontiguousarray(out, dtype=np.float32)


def _shared_input(ctx: ParallelContext, plan: AlignPlan) -> tuple[ProjectionSet | None,
                                                                  np.ndarray, np.ndarray, float]:
    """Rank 0 reads the file; projections, angles and tilt go to every rank."""
    ps = read_projections(plan.input_path) if ctx.is_root else None
    projections = bcast_array(ctx, ps.projections if ps is not None else None)
    angles = bcast_array(ctx, ps.angles_deg if ps is not None else None)
    tilt = float(bcast(ctx, ps.tilt_deg if ps is not None else None))
    return ps, projections, angles, tilt


def _layer_edges_px(plan: AlignPlan, ctx: ParallelContext, ps: ProjectionSet | None
                    ) -> tuple[float, ...]:
    """The plan's layer interfaces in voxels (one voxel = one projection pixel of
    rank 0's file)."""
    pixel_m = float(bcast(ctx, ps.pixel_size_m if ps is not None else None))
    if not plan.layer_interfaces_um:
        return ()
    edges = tuple(h * 1e-6 / pixel_m for h in plan.layer_interfaces_um)
    log.info("align: the chip's layer stack is the last level's volume prior: interfaces "
             "at %s voxels", ", ".join(f"{e:.2f}" for e in edges))
    return edges


def _history(cfg: Config, options: AlignConfig | None, plan: AlignPlan, n_ranks: int,
             result: AlignResult, pixel_m: float) -> dict:
    """The content of ``align_history.json`` (docs/formats.md)."""
    return {
        "enabled": cfg.align.enabled,
        "options": dataclasses.asdict(options) if options is not None else None,
        "volume_shape": list(plan.volume_shape),
        "widened_shape": list(plan.widened_shape or plan.volume_shape),
        "phase_planes": result.phase_planes.tolist(),
        "crop_shape": list(plan.crop_shape),
        "n_ranks": n_ranks,
        "iterations": result.history,
        "shifts_px": result.shifts_px.tolist(),
        "smooth_check": (dataclasses.asdict(result.smooth_check)
                         if result.smooth_check is not None else None),
        "structure_ratio": result.structure_ratio,
        "outlier_angles": result.outlier_angles,
        "reregistered_angles": result.reregistered_angles,
        "layer_interfaces_um": list(plan.layer_interfaces_um),
        # where the data's layers sit against that stack, along z (None: no stack fitted)
        "stack_offset_um": (None if result.stack_offset_px is None
                            else result.stack_offset_px * pixel_m * 1e6),
        # whether /shifts_px keep it (align.place_on_stack): the layers at the stack's heights
        "placed_on_stack": result.placed_on_stack,
    }


def run_align(cfg: Config, ctx: ParallelContext, plan: AlignPlan, device: object) -> None:
    """Run the stage on all ranks."""
    import functools

    import torch

    from hpc_adept.align import AlignResult, projection_matching
    from hpc_adept.parallel import DistributedLaminoOperator

    t0 = time.perf_counter()
    ps, projections, angles, tilt = _shared_input(ctx, plan)
    n = len(angles)
    if cfg.align.enabled:
        # rank 0's look at the border decides for all: ranks must run one method
        plan = dataclasses.replace(plan, extended=bool(bcast(ctx, plan.extended)))
        options = align_options(cfg, plan)
        log.info("align: %d projections %s, tilt %.2f deg, %s sample (align.sample: %s), "
                 "volume %s (widened to %s), binning %s, %d rank(s)", n,
                 list(projections.shape[1:]), tilt, options.sample, cfg.align.sample,
                 list(plan.volume_shape), list(plan.widened_shape or plan.volume_shape),
                 list(options.binning), ctx.size)

        def report(entry: dict) -> None:
            log.info("align: bin %d it %2d %-5s residual %.4e  max update %.4f px  "
                     "(%.2f s)", entry["level"], entry["iteration"], entry["step"],
                     entry["residual_rms"], entry["max_update_px"], entry["seconds"])

        result = projection_matching(
            torch.from_numpy(projections).to(device), angles, tilt, options, callback=report,
            ops=functools.partial(DistributedLaminoOperator, kernel=cfg.runtime.projector,
                                  ctx=ctx),
            layer_edges_px=_layer_edges_px(plan, ctx, ps))
    else:
        options = None
        result = AlignResult(shifts_px=np.zeros((n, 2)))
        log.info("align: align.enabled is false: centre crop only")
    if not np.all(np.isfinite(result.shifts_px)):
        raise DataError(f"align: the shift estimates of {plan.input_path} are not finite")
    if not ctx.is_root:
        return
    assert ps is not None
    aligned = shift_and_crop(projections, result.shifts_px, plan.crop_shape, device)
    extra = {k: v for k, v in ps.extra.items() if k != "shifts_px"}
    extra["shifts_px"] = result.shifts_px.astype(np.float64)
    if result.residual_per_angle.size:
        extra["align_residual"] = result.residual_per_angle.astype(np.float64)
    write_projections(plan.output_path, ProjectionSet(
        aligned, ps.angles_deg, ps.tilt_deg, ps.pixel_size_m, probes=ps.probes, extra=extra,
        # the decision for recon.sample: auto (the crop may cut the border it came from)
        sample_kind=options.sample if options is not None else ps.sample_kind))
    write_json_atomic(plan.history_path, _history(cfg, options, plan, ctx.size, result,
                                                  ps.pixel_size_m))
    if result.history:
        from hpc_adept.report.align_plots import plot_convergence, plot_shifts

        figures = plan.run_dir / "figures"
        levels = [h["level"] for h in result.history]
        last_of = {b: i for i, b in enumerate(levels)}  # last iteration of each level
        ends = {f"after binning {b}": result.shifts_per_iteration[i]
                for b, i in last_of.items() if b != levels[-1]}
        plot_shifts(figures / "align_shifts.png", ps.angles_deg, result.shifts_px,
                    intermediate=ends)
        plot_convergence(figures / "align_convergence.png", result.history)
    max_shift = float(np.abs(result.shifts_px).max(initial=0.0))
    log.info("align: done in %.1f s, %d iterations, largest shift %.2f px -> %s %s",
             time.perf_counter() - t0, len(result.history), max_shift, plan.output_path,
             list(aligned.shape))
