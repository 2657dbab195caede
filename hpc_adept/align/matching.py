"""Projection-matching alignment (Odstrcil et al., Opt. Express 27, 36637, 2019).

Coarse to fine over binning levels; at each level iterate: shift the measured projections
by the current estimates, reconstruct (an FBP at the start of the level, then a few
warm-started least-squares iterations per alignment iteration), reproject, fit and remove
each projection's phase offset and linear ramp against the reprojection, and update every
projection's shift from the high-pass filtered residual by linearised optical flow
(clamped), then project out the rigid-translation drift that laminography cannot observe.

Extended samples (issue 18; REFERENCE.md, "Extended samples"): a chip is far wider than
the region, and every projection of the region's detector window also holds the chip
around it, out to :func:`hpc_adept.lamino.region.window_reach_px`. A reconstruction of the
region alone cannot reproject that material, and the residual it leaves pulls the shifts
off by many pixels. So each level reconstructs the region widened by
``align.lateral_margin`` (``auto``: every point the level's window sees; cheap at binned
levels), weights out the pixels whose rays leave the widened volume (a smaller margin) in
both the least-squares fit and the shift update, and fits the per-projection offset and
ramp that ptychography leaves without a vacuum reference (``align.fit_phase_plane``;
REFERENCE: "fit and remove them against the reprojection of the current volume during
alignment"). Pixels that a shift fills with edge padding get weight 0 too: a window cut
out of a chip is followed by chip, not by the vacuum the padding stands for. A widened
volume explains misaligned data nearly as well as aligned ones (it has far more unknowns
than the projections have pixels), so the coarse levels compare each angle with a volume
fitted to the others (``align.cross_folds``), and a fold level ends at the shifts of its
lowest held-out residual (a validation error). That prediction is biased by a few tenths of
a pixel, so the last level fits one volume to all angles (``align.joint_last_level``),
which stays at the true shifts. What the folds leave is smooth over the angles (the
outside material, seen by neighbouring angles only, follows such a pattern); only the
region that every angle sees pulls it back, and slowly: that level weights the shift update
by each pixel's angular coverage (``align.coverage_power``), accelerates its steps and runs
all its iterations (docs/extended_samples.md, "Alignment"); then ``align.smooth_check_px``
reruns it from the estimate plus a smooth pattern and warns where the pattern is not taken
back (the estimate may be off by such a pattern). On a widened volume the optical
flow's filters keep to the fitted pixels of the window: periodic ones would carry the
wrap-around across a chip's window edges, and the residual of the unfitted edge pixels,
into every step.
Which of the two methods runs is ``align.sample`` (:mod:`hpc_adept.align.sample`; ``auto``
decides from the projections' border). The isolated-region method (``isolated``, or
``lateral_margin: 0``): the region only, with a loose support mask (voxels that leave the
window at some angle are zero) and weights on the region's shadow.
A level ends when the largest update falls below the tolerance. Before the first optical
flow step, a few rounds of low-pass, window-bounded cross-correlation against the
reprojections give a coarse estimate that periodic IC patterns cannot pull onto the wrong
period (with held-out folds they stop where the held-out residual rises).

The reconstruct and reproject steps come from the laminography operator of each level,
built by a factory (:class:`LaminoOps`), so a stage can pass a distributed one; this module
knows nothing about MPI.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from hpc_adept.align.drift import fit_rigid_drift, remove_rigid_drift, rigid_drift_basis
from hpc_adept.align.estimate import optical_flow_update, structure_ratio, xcorr_shift
from hpc_adept.align.imaging import (
    bin_images,
    border_taper,
    crop_window,
    highpass,
    shift_images,
)
from hpc_adept.align.layers import LayeredOperator, layer_profiles
from hpc_adept.align.patterns import harmonic_patterns
from hpc_adept.align.plane import (
    fit_planes,
    orthonormal_planes,
    plane_basis,
    plane_images,
    remove_planes,
)
from hpc_adept.align.sample import resolve_sample
from hpc_adept.align.support import (
    angular_coverage,
    level_margin_px,
    ray_trust,
    visible_support,
)
from hpc_adept.config import (
    ONE_WAY_RATIO,
    OUTLIER_RESIDUAL_RATIO,
    SMOOTH_CHECK_LIMIT,
    AlignConfig,
)
from hpc_adept.lamino import Geometry, LaminoOperator
from hpc_adept.lamino.region import extended_shape, sample_indices
from hpc_adept.linop import LinearOperator

log = logging.getLogger(__name__)

# CGLS stops where the normal-equation residual has fallen by this factor (float64 only
# gets there: float32 rounding stays far above it).
CGLS_RELATIVE_TOLERANCE = 1e-12
# Stop of the levels before the last, in pixels of the level.
COARSE_TOLERANCE = 0.05
# Least-squares steps, from the FBP, of the volume that predicts the projections searched
# again: four alignment iterations' worth (reconstruct_iterations 5), enough on the two
# crops measured (docs/extended_samples.md, "Searching a named projection again").
REREGISTER_ITERATIONS = 20
# A projection searched again moves only to a peak at least this far (full-resolution px)
# from its shift: a nearer one is the same match, which the level's steps reach.
REREGISTER_MIN_MOVE_PX = 1.0


class LaminoOps(Protocol):
    """Builds the laminography operator of a geometry (each binning level has its own).

    Called as ``ops(geometry)``; the operator's ``forward`` / ``adjoint`` / ``fbp`` take
    and return full stacks (every angle of ``geometry``) on the caller's device. A
    distributed operator (e.g. ``functools.partial(DistributedLaminoOperator, ctx=ctx,
    kernel=kernel)``) shares the work between ranks and returns the same full result on
    every rank.
    """

    def __call__(self, geometry: Geometry) -> LaminoOperator:
        """The operator of ``geometry``."""
        ...


def _outlier_ratios(residuals: Sequence[np.ndarray]) -> np.ndarray:
    """Each projection's residual at the last iteration (``residuals[-1]`` [n_angles], data
    units) over the median of the finite ones (inf where not finite); empty without
    iterations or a positive median (logged)."""
    if not residuals:
        return np.zeros(0)
    last = np.asarray(residuals[-1], dtype=np.float64)
    finite = np.isfinite(last)
    median = float(np.median(last[finite])) if finite.any() else math.nan
    if not median > 0:
        log.debug("projection matching: no outlier test (median residual %g)", median)
        return np.zeros(0)
    return np.where(finite, last / median, math.inf)


def _outlier_angles(residuals: Sequence[np.ndarray]) -> list[int]:
    """The projections whose residual at the last iteration is at least
    :data:`OUTLIER_RESIDUAL_RATIO` times the median of the finite ones, or not finite."""
    ratios = _outlier_ratios(residuals)
    return [int(i) for i in np.flatnonzero(ratios >= OUTLIER_RESIDUAL_RATIO)]


def _warn_outlier_angles(residuals: Sequence[np.ndarray]) -> list[int]:
    """One warning line naming :func:`_outlier_angles` of ``residuals`` (the last column
    of ``AlignResult.residual_per_angle`` counts): each most likely registered onto a
    wrong match (a pattern that repeats along one-way wiring), which the levels' local
    steps cannot leave. The ratio was measured on extended samples (the joint last level).
    It cannot name anything with fewer than three angles, nor when half of them or more
    are off. Returns their indices."""
    outliers = _outlier_angles(residuals)
    if outliers:
        ratios = _outlier_ratios(residuals)
        log.warning("projection matching: %d projection(s) (indices %s) end with %s times the "
                    "median residual (>= %g): probably registered onto a wrong match, e.g. a "
                    "pattern repeating along the wires; their shifts are not to be trusted",
                    len(outliers), outliers[:10],
                    ", ".join(f"{ratios[i]:.1f}" for i in outliers[:10]),
                    OUTLIER_RESIDUAL_RATIO)
    return outliers


@dataclass(frozen=True)
class LocalLamino:
    """:class:`LaminoOps` in this process: :class:`~hpc_adept.lamino.LaminoOperator` with
    ``kernel`` (:data:`hpc_adept.lamino.KERNELS`)."""

    kernel: str = "torch"

    def __call__(self, geometry: Geometry) -> LaminoOperator:
        return LaminoOperator(geometry, kernel=self.kernel)


def least_squares(op: LinearOperator, data: torch.Tensor, volume: torch.Tensor,
                  support: torch.Tensor, iterations: int, weights: torch.Tensor | None = None,
                  blind: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """CGLS iterations on ``min sum w (P (A (m x) - data))^2`` from ``volume`` (warm start).

    ``A`` is the operator ``op`` (the projector of a geometry) and ``m`` the support mask
    (the returned volume is zero outside it). A laminographic FBP is not data-consistent
    (the missing cone): its reprojections differ from the data by structure-dependent
    sub-pixel displacements that projection matching would take for misalignment; a few
    warm-started least-squares iterations per alignment iteration remove that bias.

    Parameters
    ----------
    op : LinearOperator
        ``forward`` [nz, ny, nx] -> [n, nv, nu] and its ``adjoint``.
    data : torch.Tensor, [n, nv, nu]
    volume : torch.Tensor, [nz, ny, nx]
        Starting volume.
    support : torch.Tensor, bool or float, [nz, ny, nx]
    iterations : int
    weights : torch.Tensor, float, [n, nv, nu] or [nv, nu], optional
        Non-negative pixel weights ``w`` (default 1): pixels whose rays leave the volume
        get 0 so that the material they miss is not forced into the volume.
    blind : callable, optional
        An orthogonal projector ``P`` on projection stacks (default identity), e.g. the
        removal of each projection's offset and linear ramp: the fit is blind to what it
        removes, so unknown phase offsets and ramps do not enter the volume.

    Returns
    -------
    (volume, reprojection) : torch.Tensor [nz, ny, nx], torch.Tensor [n, nv, nu]
        The volume and its projections ``A (m x)``, the latter from the CGLS residual
        recursion (``data - r``), which saves one projection per call.
    """
    mask = support.to(volume.dtype)

    def weighted(image: torch.Tensor) -> torch.Tensor:
        image = image if blind is None else blind(image)
        return image if weights is None else image * weights

    def normal(image: torch.Tensor) -> torch.Tensor:  # P W P, self-adjoint
        image = weighted(image)
        return image if blind is None else blind(image)

    x = volume * mask
    r = data - op.forward(x)  # the plain residual: its recursion gives A (m x)
    s = op.adjoint(normal(r)) * mask
    p = s.clone()
    gamma = float((s.double() ** 2).sum())
    # converged to rounding: more steps divide rounding by rounding and blow up
    converged = gamma * CGLS_RELATIVE_TOLERANCE ** 2
    for _ in range(iterations):
        if gamma <= converged or gamma <= 0.0:
            break
        q = op.forward(p)
        qq = float((normal(q).double() * q.double()).sum())
        if qq <= 0.0:
            break
        alpha = gamma / qq
        x = x + alpha * p
        r = r - alpha * q
        s = op.adjoint(normal(r)) * mask
        gamma_new = float((s.double() ** 2).sum())
        p = s + (gamma_new / gamma) * p
        gamma = gamma_new
    return x, data - r


@dataclass
class AlignResult:
    """Outcome of :func:`projection_matching`.

    Attributes
    ----------
    shifts_px : ndarray, float64, [n_angles, 2]
        ``(row, col)`` displacement found in each measured projection, full-resolution
        pixels: ``measured[r, c] = ideal[r - s_r, c - s_c]``; rigid-drift free (nearly,
        where a projection is held at ``align.coarse_search_px``) but for the z
        translation ``stack_offset_px`` where ``placed_on_stack``. A level with held-out
        folds ends at its shifts of lowest held-out residual (its last entry of
        ``shifts_per_iteration`` holds them).
    history : list of dict
        One entry per iteration: ``level`` (binning), ``iteration`` (within the level),
        ``step`` (``xcorr`` or ``flow``), ``residual_rms`` (weighted RMS of the high-pass
        filtered residual data - reprojection over all projections, data units; on a
        level with ``align.coverage_power`` weighted by the coverage too),
        ``max_update_px``, ``rms_update_px`` (change of the estimates after drift removal,
        full-resolution pixels), ``at_bound`` (the projections whose shift was held at
        ``align.coarse_search_px`` from its start: a runaway), ``seconds``.
    residual_per_angle : ndarray, float64, [n_angles, n_iterations]
        Weighted RMS of each projection's filtered residual at each iteration (at the
        shifts the iteration started from; a level that goes back to the shifts of its
        lowest held-out residual puts their residual in its last column).
    shifts_per_iteration : ndarray, float64, [n_iterations, n_angles, 2]
        Shift estimates after each iteration (for plots; where the cross-correlation rounds
        stopped, the last round's entry holds the shifts it moved to, which were taken back
        before the next iteration).
    phase_planes : ndarray, float64, [n_angles, 3]
        The offset (rad) and row / column slopes (rad per pixel, about the centre of the
        aligned projection) removed from each projection (zeros without
        ``fit_phase_plane``).
    smooth_check : SmoothCheck or None
        What ``align.smooth_check_px`` measured: whether this method takes back a shift
        pattern smooth over the angles near its estimate; None when it did not run.
    stack_offset_px : float or None
        Where a joint last level fitted a layer stack (``layer_edges_px``): the z
        translation (voxels, up positive) of the data's layers from that stack, which the
        stack observes (that level's entries of ``shifts_per_iteration`` hold it); the
        returned shifts keep it where ``placed_on_stack`` (their z translation is this),
        else they are drift free. None otherwise.
    placed_on_stack : bool
        Whether the shifts keep ``stack_offset_px`` (``options.place_on_stack``, unless the
        offset looked like a wrong stack height: over half ``coarse_search_px`` as a row
        shift, or a shift at that bound; a warning says so).
    structure_ratio : float or None
        The measured projections' median ratio of the small to the large eigenvalue of
        their high-passed structure tensors (0: every projection's structure runs one
        way, its shift along it not in the data; below :data:`ONE_WAY_RATIO` a warning);
        None for a result not made by :func:`projection_matching`.
    outlier_angles : list of int
        The projections whose residual at the last iteration is at least
        :data:`~hpc_adept.config.OUTLIER_RESIDUAL_RATIO` times the median (a warning names
        them): most likely registered onto a wrong match; their shifts are not to be
        trusted.
    reregistered_angles : list of int
        The projections named so after the last level (before the level ran again) that
        ``reregister_outliers`` moved to a better match; the level then ran once more.
    """

    shifts_px: np.ndarray
    history: list[dict] = field(default_factory=list)
    residual_per_angle: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    shifts_per_iteration: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 2)))
    phase_planes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    smooth_check: SmoothCheck | None = None
    structure_ratio: float | None = None
    stack_offset_px: float | None = None
    placed_on_stack: bool = False
    outlier_angles: list[int] = field(default_factory=list)
    reregistered_angles: list[int] = field(default_factory=list)


def working_frame(shape: tuple[int, int], factor: int) -> tuple[tuple[int, int], np.ndarray,
                                                                  tuple[int, int]]:
    """Largest centred crop of ``shape`` divisible by ``factor``.

    Returns
    -------
    (start, centre_offset, size) : (int, int), ndarray [2] float64, (int, int)
        Crop origin, the half-pixel centre offset of :func:`crop_window` per axis, and
        the crop size.
    """
    starts, offsets, sizes = [], [], []
    for n in shape:
        size = (n // factor) * factor
        start, offset = crop_window(n, size)
        starts.append(start)
        offsets.append(offset)
        sizes.append(size)
    return (starts[0], starts[1]), np.asarray(offsets), (sizes[0], sizes[1])


def _binned(shape: tuple[int, ...], factor: int) -> tuple[int, ...]:
    return tuple(max(1, int(round(n / factor))) for n in shape)


def projection_matching(
    projections: torch.Tensor,
    angles_deg: np.ndarray,
    tilt_deg: float,
    options: AlignConfig,
    ops: LaminoOps | None = None,
    initial_shifts_px: np.ndarray | None = None,
    callback: Callable[[dict], None] | None = None,
    layer_edges_px: Sequence[float] | None = None,
) -> AlignResult:
    """Estimate per-projection shifts by projection matching.

    Parameters
    ----------
    projections : torch.Tensor, float32/float64, [n_angles, nv, nu]
        Measured projections (phase, radians) on the compute device.
    angles_deg : ndarray, [n_angles], degrees
    tilt_deg : float, degrees (laminography angle L)
    options : AlignConfig
        The ``align`` config section; its ``volume_shape`` (the reconstruction volume at
        full resolution, voxel = pixel, binned with the projections at coarse levels) must
        be set: the stage fills in ``recon.volume_shape``. ``sample: auto`` is decided from
        ``projections`` (:func:`~hpc_adept.align.sample.resolve_sample`); the stage
        decides it before and passes the kind. ``enabled`` and ``crop_shape`` are the
        stage's business.
    ops : LaminoOps, optional
        Builds each level's operator (default :class:`LocalLamino`: serial, ``torch``).
    initial_shifts_px : ndarray [n_angles, 2], optional
        Starting estimate (default zeros).
    callback : callable, optional
        Called with each history entry (e.g. for progress logging).
    layer_edges_px : sequence of float, voxels, optional
        Interface heights of the chip's layer stack along the volume's z axis from the
        bottom face of its first slice (``align.layer_lef``, the stage converts): the
        joint last level's volume is then a stack of layers
        (:class:`~hpc_adept.align.layers.LayeredOperator`). None or empty: voxels.

    Returns
    -------
    AlignResult
    """
    ops = ops or LocalLamino()
    if options.volume_shape is None:
        raise ValueError("projection_matching: options.volume_shape is not set")
    options = _resolved(options, projections)
    n = projections.shape[0]
    angles = np.asarray(angles_deg, dtype=np.float64)
    shifts = np.zeros((n, 2)) if initial_shifts_px is None else \
        np.asarray(initial_shifts_px, np.float64).copy()
    start = remove_rigid_drift(shifts, angles, tilt_deg)[0]
    largest = max(float(np.abs(shifts).max(initial=0.0)), float(np.abs(start).max(initial=0.0)))
    frame = _Frame.of(projections, options, largest)
    ratio = _warn_one_way(projections, options)
    track = _Track(shifts, angles, tilt_deg,
                   torch.zeros(n, 3, dtype=torch.float64, device=projections.device),
                   np.zeros((n, 2)), start=start, reach_px=options.coarse_search_px)
    level = None
    for level_index, factor in enumerate(options.binning):
        level = _make_level(ops, options, level_index, factor, frame, tilt_deg, angles,
                            layer_edges_px)
        _run_level(options, level, frame, track, callback)
    moved = _reregister_outliers(options, level, frame, track, callback) \
        if level is not None and options.reregister_outliers else []
    # after a joint last level (it can leave smooth patterns), with voxels also after a
    # stack's, which takes back what voxels do not (extended_samples.md, "The stack observes")
    check = _smooth_check(options, _with_voxels(level, options), frame, track) \
        if level is not None and level.joint and options.smooth_check_px > 0 else None
    stack_offset, placed = track.end_stack_level(options.place_on_stack)
    return AlignResult(
        shifts_px=track.shifts, stack_offset_px=stack_offset, placed_on_stack=placed,
        reregistered_angles=moved, history=track.history,
        residual_per_angle=(np.stack(track.residuals, axis=1) if track.residuals
                            else np.zeros((n, 0))),
        shifts_per_iteration=(np.stack(track.snapshots) if track.snapshots
                              else np.zeros((0, n, 2))),
        phase_planes=track.planes.cpu().numpy(),
        smooth_check=check,
        structure_ratio=ratio,
        outlier_angles=_warn_outlier_angles(track.residuals),  # the check has its own track
    )


def _with_voxels(level: _Level, options: AlignConfig) -> _Level:
    """``level`` with a volume of voxels instead of a layer stack (and their momentum)."""
    if level.layers is None:
        return level
    return dataclasses.replace(level, layers=None, momentum=_level_momentum(
        options, len(level.folds) > 1, level.full_run, layered=False))


def _level_momentum(options: AlignConfig, held_out: bool, refine: bool, layered: bool
                    ) -> float:
    """Heavy-ball momentum of a level's optical-flow steps: ``momentum`` with held-out
    folds and on a refining joint level (``coverage_power``), ``layer_momentum`` where that
    level fits a layer stack (better conditioned: the folds' 0.7 overshoots there), none
    otherwise (plain steps, stopped by the tolerance)."""
    if refine and layered:
        return options.layer_momentum
    return options.momentum if held_out or refine else 0.0


def _resolved(options: AlignConfig, projections: torch.Tensor) -> AlignConfig:
    """``options`` with ``align.sample`` and the settings it governs resolved, and one line
    that says which method runs."""
    looked_at = None
    if options.sample == "auto":
        picks = sample_indices(projections.shape[0])
        looked_at = projections[picks].detach().cpu().numpy()
    chosen = resolve_sample(options, looked_at)
    how = " (the projections' border holds material)" if options.sample == "auto" else ""
    if chosen.sample == "extended":
        coarser = (f" ({chosen.coarse_flow_eigen_floor:g} on the coarser levels)"
                   if len(chosen.binning) > 1 else "")
        log.info("projection matching: extended sample%s: the region widened by "
                 "align.lateral_margin %s, phase planes %s, flow eigen floor %g%s", how,
                 chosen.lateral_margin, "fitted" if chosen.fit_phase_plane else "not fitted",
                 chosen.flow_eigen_floor, coarser)
    else:
        log.info("projection matching: isolated sample: the region only")
    return chosen


def _warn_one_way(projections: torch.Tensor, options: AlignConfig) -> float:
    """One warning line when most projections' structure runs one way (the median
    :func:`~hpc_adept.align.estimate.structure_ratio` below :data:`ONE_WAY_RATIO`): their
    shifts along the wires are barely in the data. Returns that median."""
    ratio = float(structure_ratio(projections, options.highpass_sigma_px).median())
    if ratio <= 0.0:
        log.warning("projection matching: most projections hold no structure after the "
                    "high-pass of %g px: their shifts are not in the data",
                    options.highpass_sigma_px)
    elif ratio < ONE_WAY_RATIO:
        floor, coarse = options.flow_eigen_floor, options.coarse_flow_eigen_floor
        coarse = coarse if isinstance(coarse, str) else f"{coarse:g}"  # 'auto' unresolved
        advice = (f"align.flow_eigen_floor ({floor:g}; {coarse} on the coarser levels) "
                  f"damps the steps along them"
                  + (" (0.3 on the last level too holds runaways better, costs good data "
                     "more)" if floor < 0.3 else "")
                  if floor > 0 else
                  "consider align.flow_eigen_floor: 0.1, which damps the steps along them")
        log.warning("projection matching: the projections' structure runs mostly one way "
                    "(median eigenvalue ratio %.2f < %.2f): the shifts along the wires are "
                    "poorly determined by these data; %s, or choose a region with structure "
                    "in both directions", ratio, ONE_WAY_RATIO, advice)
    return ratio


@dataclass(frozen=True)
class _Frame:
    """The measured projections and the working window all levels share.

    ``start``, ``size``: the largest centred crop divisible by the first binning factor;
    ``centre_offset``: its half-pixel centre offset per axis; ``pad``: the shifts' edge
    padding, pixels (room for the largest shift the search may reach).
    """

    projections: torch.Tensor
    start: tuple[int, int]
    centre_offset: np.ndarray
    size: tuple[int, int]
    pad: int

    @classmethod
    def of(cls, projections: torch.Tensor, options: AlignConfig,
           initial_px: float = 0.0) -> _Frame:
        """The frame of ``projections``; ``initial_px``: the largest starting shift."""
        start, centre_offset, size = working_frame(tuple(projections.shape[1:]),
                                                   options.binning[0])
        return cls(projections, start, centre_offset, size,
                   int(math.ceil(initial_px + options.coarse_search_px + 2)))

    def aligned(self, shifts: np.ndarray, factor: int) -> torch.Tensor:
        """The projections shifted by ``-shifts``, cropped and binned by ``factor``."""
        projections = self.projections
        # shift by -s (undo the measured displacement) and by the crop's centre offset
        total = torch.as_tensor(-(shifts + self.centre_offset), dtype=projections.dtype,
                                device=projections.device)
        moved = shift_images(projections, total, pad=self.pad)
        start, size = self.start, self.size
        frame = moved[:, start[0]:start[0] + size[0], start[1]:start[1] + size[1]]
        return bin_images(frame, factor)

    def measured(self, shifts: np.ndarray, factor: int, taper_px: int) -> torch.Tensor:
        """Weights ``[n, h, w]`` in [0, 1] of :meth:`aligned`'s pixels by how far inside the
        measured window their source lies: 0 where a shift brought in the edge padding (no
        data), rising to 1 over ``taper_px`` pixels of the level (raised cosine).

        An isolated sample's window ends in vacuum, so padding there is what was measured;
        a window cut out of a chip is followed by chip, and the padding would be matched
        against a reprojection of it.
        """
        like = self.projections
        ramps = []
        for axis in (0, 1):
            n_px = like.shape[1 + axis]
            idx = torch.arange(self.size[axis], dtype=torch.float64, device=like.device)
            source = idx[None, :] + self.start[axis] + torch.as_tensor(
                shifts[:, axis] + self.centre_offset[axis], device=like.device)[:, None]
            inside = torch.minimum(source, (n_px - 1) - source)
            t = (inside / float(max(taper_px, 1) * factor)).clamp(0.0, 1.0)
            ramps.append((0.5 - 0.5 * torch.cos(math.pi * t)).to(like.dtype))
        weights = ramps[0][:, :, None] * ramps[1][:, None, :]
        return bin_images(weights, factor)


@dataclass(frozen=True)
class _Fold:
    """One reconstruction of a level: it fits the angles ``fit`` (operator ``op``) and
    predicts the angles ``predict`` (operator ``op_predict``; None: it predicts what it
    fits)."""

    fit: torch.Tensor                     # long, indices of the fitted angles
    op: LaminoOperator
    predict: torch.Tensor | None = None   # long, indices of the predicted angles
    op_predict: LaminoOperator | None = None


@dataclass(frozen=True)
class _Level:
    """What one binning level fixes: geometry, support mask, residual weights, stop."""

    factor: int
    folds: tuple[_Fold, ...]  # reconstructions (region widened by the margin)
    support: torch.Tensor     # bool, [nz, ny, nx] of the level
    weights: torch.Tensor     # float, [n, nv, nu] of the level: shift update, plane fit
    trust: torch.Tensor | None  # float, [n, nv, nu]: least-squares weights (None: all 1)
    basis: torch.Tensor | None  # [3, nv, nu] plane images (None: no plane fit)
    orthonormal: torch.Tensor | None  # [3, nv, nu] the same, orthonormalised
    rounds: int               # at most this many cross-correlation rounds before the flow
    tolerance: float          # stop when the largest update is below, full-resolution px
    momentum: float           # of the optical-flow steps (0 for the region alone)
    taper_px: int = 0         # > 0: weight out pixels with no measured data (widened volume)
    flow_gain: torch.Tensor | None = None  # [n, nv, nu]: optical-flow weights only
    full_run: bool = False    # run all iterations: steps along smooth patterns stay small
    joint: bool = False       # a joint last level of a widened volume (after fold levels)
    eigen_floor: float = 0.0  # of the optical-flow normal matrices (the aperture problem)
    smooth: torch.Tensor | None = None  # [n, 2K+1] orthonormal angular harmonics
    layers: torch.Tensor | None = None  # [K, nz] layer profiles (None: a volume of voxels)


def _folds(ops: LaminoOps, angles: np.ndarray, tilt_deg: float, vol: tuple[int, int, int],
           det: tuple[int, int], split: int, device: torch.device) -> tuple[_Fold, ...]:
    """``split`` interleaved groups of angles (at most one group per angle), each predicted
    from the others (1: one reconstruction of all angles that predicts itself)."""
    n = len(angles)
    split = min(split, n)
    if split <= 1:
        return (_Fold(torch.arange(n, device=device), ops(Geometry(angles, tilt_deg, vol, det))),)
    folds = []
    for k in range(split):
        held = np.arange(k, n, split)
        fit = np.setdiff1d(np.arange(n), held)
        folds.append(_Fold(torch.as_tensor(fit, device=device),
                           ops(Geometry(angles[fit], tilt_deg, vol, det)),
                           torch.as_tensor(held, device=device),
                           ops(Geometry(angles[held], tilt_deg, vol, det))))
    return tuple(folds)


def _make_level(ops: LaminoOps, options: AlignConfig, level_index: int, factor: int,
                frame: _Frame, tilt_deg: float, angles: np.ndarray,
                layer_edges_px: Sequence[float] | None = None) -> _Level:
    like = frame.projections
    det = (frame.size[0] // factor, frame.size[1] // factor)
    region = _binned(options.volume_shape, factor)
    margin = level_margin_px(options.lateral_margin, region, det, tilt_deg, factor)
    vol = extended_shape(region, margin)
    last_level = level_index == len(options.binning) - 1
    # a widened volume fits what few angles see: predict each angle from the others; near
    # the solution one volume of all angles refines without the held-out prediction's bias
    joint = last_level and level_index > 0 and options.joint_last_level
    split = options.cross_folds if margin > 0 and not joint else 1
    folds = _folds(ops, angles, tilt_deg, vol, det, split, like.device)
    path = torch.empty(len(angles), *det, dtype=like.dtype, device=like.device)
    ones = torch.ones(vol, dtype=like.dtype, device=like.device)
    for fold in folds:
        path[fold.fit] = fold.op.forward(ones)
    if margin == 0:
        support, weights, trust = _isolated_masks(options, path, vol, det, tilt_deg)
    else:
        support, weights, trust = _widened_masks(path, vol, tilt_deg)
    taper_px = max(2, int(math.ceil(options.highpass_sigma_px)))
    weights = weights * border_taper(det, taper_px, like)
    # one volume of a widened slab, near the solution: smooth shift patterns over the
    # angles move slowly (the outside material follows them); weight the region that
    # every angle sees and accelerate (docs/extended_samples.md, "Alignment")
    refine = joint and margin > 0 and options.coverage_power > 0
    gain = angular_coverage(folds[0].op, path, options.coverage_power) if refine else None
    basis = plane_basis(det, factor, like) if options.fit_phase_plane else None
    rounds = options.coarse_rounds if level_index == 0 else 0
    # coarse levels only prepare the next one: a looser stop saves iterations there
    tolerance = options.tolerance_px if last_level else \
        max(options.tolerance_px, COARSE_TOLERANCE) * factor
    if level_index == 0 or last_level:
        log.info("projection matching: binning %d reconstructs %s (margin %d voxels)",
                 factor, list(vol), margin)
    orthonormal = None if basis is None else orthonormal_planes(basis)
    layers = _layer_profiles(layer_edges_px, options, factor, vol[0], like) \
        if joint and margin > 0 else None
    momentum = _level_momentum(options, split > 1, refine, layers is not None)
    return _Level(factor, folds, support, weights, trust, basis, orthonormal, rounds,
                  tolerance, momentum, taper_px if margin > 0 else 0, gain, full_run=refine,
                  joint=joint and margin > 0,
                  smooth=_harmonic_basis(angles, options, like) if refine else None,
                  eigen_floor=options.flow_eigen_floor if last_level
                  else options.coarse_flow_eigen_floor, layers=layers)


def _layer_profiles(edges_px: Sequence[float] | None, options: AlignConfig, factor: int,
                    level_nz: int, like: torch.Tensor) -> torch.Tensor | None:
    """The joint last level's layer profiles ``[K, level_nz]`` (None: no stack given).
    Only there: on every level (six crops, momentum 0.7) it brought none below 0.15 px
    that the last level alone leaves above (docs/extended_samples.md, "The stack observes
    the height")."""
    if edges_px is None or len(edges_px) == 0:
        return None
    profiles = layer_profiles(edges_px, options.volume_shape[0], level_nz)
    if len(profiles) == 1:
        log.warning("projection matching: no layer interface lies inside the volume's %d "
                    "slices: the stack is one layer, constant in height (check "
                    "align.layer_base_um and the interfaces)", options.volume_shape[0])
    log.info("projection matching: binning %d fits a stack of %d layers (%s voxels thick)",
             factor, len(profiles), ", ".join(f"{t:.1f}" for t in profiles.sum(axis=1)))
    return torch.as_tensor(profiles, dtype=like.dtype, device=like.device)


def _harmonic_basis(angles: np.ndarray, options: AlignConfig, like: torch.Tensor
                    ) -> torch.Tensor | None:
    """``[n, 2K + 1]`` float64 orthonormal columns spanning the harmonics of the rotation
    angle up to ``K = options.smooth_harmonics`` (their least-squares fit of a per-angle
    quantity ``u`` is ``Q (Q^T u)``); None when ``options.smooth_gain`` is 0 or when the
    fit would follow single angles (a leverage above 1/2: fewer than twice as many evenly
    spaced angles as terms, a partial arc, repeated angles), with a log line either way."""
    if options.smooth_gain <= 0:
        return None
    theta = np.deg2rad(np.asarray(angles, np.float64))
    k = np.arange(1, options.smooth_harmonics + 1)
    basis = np.concatenate([np.ones((len(theta), 1)), np.cos(np.outer(theta, k)),
                            np.sin(np.outer(theta, k))], axis=1)
    u, singular, _ = np.linalg.svd(basis, full_matrices=False)
    q = u[:, singular > 1e-10 * singular[0]]
    leverage = float((q ** 2).sum(axis=1).max())
    if leverage > 0.5:
        log.info("projection matching: align.smooth_gain off: %d angles do not tell a "
                 "pattern of %d angular harmonics from one of single angles (leverage %.2f)",
                 len(theta), options.smooth_harmonics, leverage)
        return None
    log.info("projection matching: the last level's steps over-relaxed by %g along the "
             "angular harmonics up to %d (align.smooth_gain)", options.smooth_gain,
             options.smooth_harmonics)
    return torch.as_tensor(q, device=like.device)


def _isolated_masks(options: AlignConfig, path: torch.Tensor, vol: tuple[int, int, int],
                    det: tuple[int, int], tilt_deg: float
                    ) -> tuple[torch.Tensor, torch.Tensor, None]:
    """The region alone: loose support, weights on its shadow (path length through it)."""
    support = torch.as_tensor(
        visible_support(vol, det, tilt_deg) if options.support else np.ones(vol, bool),
        device=path.device)
    shadow = (path / path.amax().clamp_min(1e-30) * 4.0).clamp(0.0, 1.0)
    return support, shadow, None


def _widened_masks(path: torch.Tensor, vol: tuple[int, int, int], tilt_deg: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A widened volume: every voxel free (the margin holds what only some angles see);
    pixels weighted by how much of their ray runs inside it."""
    support = torch.ones(vol, dtype=torch.bool, device=path.device)
    trust = ray_trust(path, vol[0], tilt_deg)
    return support, trust, (None if bool((trust >= 1.0).all()) else trust)


def _reconstruct(level: _Level, data: torch.Tensor, volumes: list[torch.Tensor | None],
                 iterations: int) -> torch.Tensor:
    """Update every fold's volume (an FBP where there is none yet, then ``iterations``
    warm-started least-squares steps) and return the model ``[n, nv, nu]``: each angle's
    prediction by the fold that predicts it."""
    model = torch.empty_like(data)
    for k, fold in enumerate(level.folds):
        part = data[fold.fit]
        blind = None if level.basis is None else functools.partial(
            remove_planes, orthonormal=level.orthonormal)
        if volumes[k] is None:
            volumes[k] = fold.op.fbp(part if blind is None else blind(part)) * level.support
        trust = None if level.trust is None else level.trust[fold.fit]
        volumes[k], reprojection = _fit(level, fold.op, part, volumes[k], iterations, trust,
                                        blind)
        if fold.predict is None:
            model[fold.fit] = reprojection
        else:
            model[fold.predict] = fold.op_predict.forward(volumes[k])
    return model


def _fit(level: _Level, op: LaminoOperator, data: torch.Tensor, volume: torch.Tensor,
         iterations: int, trust: torch.Tensor | None,
         blind: Callable[[torch.Tensor], torch.Tensor] | None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`least_squares` of the level's volume: of voxels, or of its layer maps (the
    volume they make is returned; a warm start of voxels is first made a stack)."""
    if level.layers is None:
        return least_squares(op, data, volume, level.support, iterations, trust, blind)
    layered = LayeredOperator(op, level.layers.to(volume.dtype),
                              level.support.to(volume.dtype))
    maps, reprojection = least_squares(layered, data, layered.layers_of(volume),
                                       layered.layer_support(), iterations, trust, blind)
    return layered.volume(maps), reprojection


def _run_level(options: AlignConfig, level: _Level, frame: _Frame,
               track: _Track, callback: Callable[[dict], None] | None,
               quiet: bool = False, until: Callable[[np.ndarray], bool] | None = None,
               first_iteration: int = 0) -> None:
    """Alignment iterations of one level until its tolerance or ``max_iterations`` (all of
    them on a ``full_run`` level); ``quiet``: no log lines (a probe run, not the estimate);
    ``until``: a probe's own stop, asked with the shifts after each optical-flow step (never
    after a cross-correlation round); where it says stop the level ends there as it is,
    without :func:`_end_level` (no return to the best held-out shifts, no warning).
    ``first_iteration`` numbers its first entry (a level run again)."""
    factor = level.factor
    # a layer stack sits at fixed heights: the data's height against it is observed
    # (not by a stack of one layer, constant in height), unless the track holds one
    stack = level.layers is not None and len(level.layers) > 1
    track.drift_axes = (0, 1) if stack and track.held_height is None else (0, 1, 2)
    volumes: list[torch.Tensor | None] = [None] * len(level.folds)
    rounds = first_iteration + _coarse_rounds(options, level, frame, track, volumes, callback,
                                              quiet)
    best = (math.inf, track.shifts, np.zeros(0))
    for iteration in range(rounds, rounds + options.max_iterations):
        t0 = time.perf_counter()
        before = track.shifts
        data, model, now = _level_model(options, level, frame, track, volumes)
        update, residual = _shift_update(data, model, now, options, False)
        entry = track.step(update, residual, factor, iteration, False, t0, level.momentum)
        if entry["residual_rms"] < best[0]:
            best = (entry["residual_rms"], before, track.residuals[-1])
        if callback is not None:
            callback(entry)
        if until is not None and until(track.shifts):
            return
        if not level.full_run and entry["max_update_px"] < level.tolerance:
            log.log(logging.DEBUG if quiet else logging.INFO,
                    "projection matching: binning %d converged after %d iterations",
                    factor, iteration + 1)
            _end_level(level, track, best, entry, options, quiet)
            return
    if level.full_run and not quiet:
        log.info("projection matching: binning %d ran its %d iterations (one widened volume "
                 "of all angles: no tolerance stop), last update %.4f px", factor,
                 options.max_iterations, track.history[-1]["max_update_px"])
    elif not quiet:
        log.warning("projection matching: binning %d stopped at %d iterations, largest "
                    "update %.4f px (tolerance %.4f px)", factor,
                    rounds + options.max_iterations,
                    track.history[-1]["max_update_px"], level.tolerance)
    _end_level(level, track, best, track.history[-1], options, quiet)


def _level_model(options: AlignConfig, level: _Level, frame: _Frame, track: _Track,
                 volumes: list[torch.Tensor | None]
                 ) -> tuple[torch.Tensor, torch.Tensor, _Level]:
    """The level's data at ``track.shifts`` (less their phase planes), its model (each
    angle's prediction, the ``volumes`` updated) and the level with the measured pixels'
    weights."""
    data = frame.aligned(track.shifts, level.factor)
    now = _with_measured(level, frame, track.shifts)
    model = _reconstruct(now, data, volumes, options.reconstruct_iterations)
    return _remove_planes(data, model, now, track), model, now


def _coarse_rounds(options: AlignConfig, level: _Level, frame: _Frame, track: _Track,
                   volumes: list[torch.Tensor | None],
                   callback: Callable[[dict], None] | None, quiet: bool) -> int:
    """Up to ``level.rounds`` cross-correlation rounds; return the number recorded in
    ``track.history`` (after a stop, the last of them had its move taken back).

    With held-out folds each round measures the held-out residual of the shifts the
    previous one left, and the rounds stop at the first that is no lower than the lowest
    so far and go back to that one's shifts: against one-way or periodic wiring further
    rounds can lock onto a wrong match across the wires, which the held-out residual shows
    by rising (docs/extended_samples.md, "Coarse rounds that stop"). Without folds the
    residual is that of a volume fitted to the shifts, no validation: all rounds run."""
    lowest = (math.inf, track.shifts)
    held_out = len(level.folds) > 1
    for iteration in range(level.rounds):
        t0 = time.perf_counter()
        data, model, now = _level_model(options, level, frame, track, volumes)
        update, residual = _shift_update(data, model, now, options, True)
        rms = float(torch.sqrt(torch.mean(residual.double() ** 2))) if held_out else 0.0
        if held_out and rms >= lowest[0]:
            # the taken-back move is no direction for the first flow step's momentum
            track.shifts, track.velocity = lowest[1], np.zeros_like(lowest[1])
            log.log(logging.DEBUG if quiet else logging.INFO,
                    "projection matching: binning %d stops its cross-correlation rounds "
                    "after %d (the residual rose: %.4g, lowest %.4g) and keeps the shifts "
                    "of the lowest", level.factor, iteration, rms, lowest[0])
            return iteration
        lowest = (rms, track.shifts)
        entry = track.step(update, residual, level.factor, iteration, True, t0)
        if callback is not None:
            callback(entry)
    return level.rounds


def _reregister_outliers(options: AlignConfig, level: _Level, frame: _Frame, track: _Track,
                         callback: Callable[[dict], None] | None) -> list[int]:
    """Search the projections :func:`_outlier_angles` names again and run the last
    ``level`` once more where one moved; returns the indices moved.

    A projection on a wrong match (a pattern repeating along one-way wiring) sits in a
    local minimum that the level's steps cannot leave. The named ones are predicted by a
    volume fitted to the others (:func:`_held_out_model`), each is cross-correlated with
    its prediction from its start over the whole searched range (``coarse_search_px``),
    low-passed by ``coarse_lowpass_px``, by half of it and not at all, and moved to the
    peak of lowest residual where that is lower than at its shift and at least
    :data:`REREGISTER_MIN_MOVE_PX` away. The level then runs again from the shifts (its
    iterations numbered on, no cross-correlation rounds), its volume from the FBP: one
    warm from the first run keeps what it fitted to the wrong shifts (on the procedural
    phantom at the demo's size the projection moved ended at 7.6 times the median
    residual, 0.16 px off).
    """
    named = _outlier_angles(track.residuals)
    if not named:
        return []
    model = _held_out_model(level, frame, track, named)
    before = _residual_at(options, level, frame, track.shifts, model, named)
    before = np.where(np.isfinite(before), before, math.inf)  # named for being not finite
    candidate, after = track.shifts.copy(), before.copy()
    for shifts, residual in _searched(options, level, frame, track, model, named):
        better = residual < after  # False where not finite
        rows = np.asarray(named)[better]
        candidate[rows], after = shifts[rows], np.where(better, residual, after)
    # a peak within a pixel is the same match: the level's own steps reach it
    far = np.abs(candidate - track.shifts).max(axis=1) >= REREGISTER_MIN_MOVE_PX
    moved = [i for i, a, b in zip(named, after, before, strict=True) if a < b and far[i]]
    log.info("projection matching: %d projection(s) named at %g times the median residual "
             "or more (indices %s) searched again over align.coarse_search_px: %d moved%s",
             len(named), OUTLIER_RESIDUAL_RATIO, named[:10], len(moved), "".join(
                 f"; {i}: ({candidate[i, 0] - track.shifts[i, 0]:+.2f}, "
                 f"{candidate[i, 1] - track.shifts[i, 1]:+.2f}) px, residual "
                 f"{b:.3g} -> {a:.3g}" for i, a, b in zip(named, after, before, strict=True)
                 if i in moved[:10]))
    if moved:
        shifts = track.shifts.copy()
        shifts[moved] = candidate[moved]
        track.shifts = track._bounded(shifts)  # a move adds a little rigid drift
        track.velocity = np.zeros_like(track.shifts)
        # optical-flow steps only: rounds would search every projection again
        _run_level(options, dataclasses.replace(level, rounds=0), frame, track, callback,
                   first_iteration=track.history[-1]["iteration"] + 1)
    return moved


def _held_out_model(level: _Level, frame: _Frame, track: _Track, named: list[int]
                    ) -> torch.Tensor:
    """The prediction [k, h, w] of the ``named`` projections by the level's volume fitted,
    from its FBP, in :data:`REREGISTER_ITERATIONS` least-squares steps to the other
    projections at their shifts. The level's own volume also fitted the named ones at
    their wrong shifts: where little else constrains it (the material around the region
    that few angles see, in voxels) it predicts what they show there, and a search
    against it keeps them (on the procedural phantom at the demo's size, the true shift's
    residual was 1.8 times the wrong one's)."""
    geometry = level.folds[0].op.geometry
    whole = level.folds[0].op.with_geometry(Geometry(
        track.angles, geometry.tilt_deg, geometry.volume_shape, geometry.detector_shape,
        geometry.z_offset))
    device = frame.projections.device
    others = np.setdiff1d(np.arange(len(track.angles)), named)
    held = dataclasses.replace(level, folds=(_Fold(
        torch.as_tensor(others, device=device), whole.angles_subset(others),
        torch.as_tensor(named, device=device), whole.angles_subset(named)),))
    data = frame.aligned(track.shifts, level.factor)
    now = _with_measured(held, frame, track.shifts)
    return _reconstruct(now, data, [None], REREGISTER_ITERATIONS)[named]


def _named_data(level: _Level, frame: _Frame, shifts: np.ndarray, model: torch.Tensor,
                named: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``named`` projections [k, h, w] at ``shifts``, less the planes of their
    difference from ``model`` [k, h, w], and their weights [k, h, w] there."""
    weights = _with_measured(level, frame, shifts).weights[named]
    data = _without_planes(frame.aligned(shifts, level.factor)[named], model, weights,
                           level.basis)[0]
    return data, weights


def _residual_at(options: AlignConfig, level: _Level, frame: _Frame, shifts: np.ndarray,
                 model: torch.Tensor, named: list[int]) -> np.ndarray:
    """The residual [k] (float64) of the ``named`` projections at ``shifts`` against their
    ``model`` [k, h, w], their planes removed (as an iteration's)."""
    data, weights = _named_data(level, frame, shifts, model, named)
    return _weighted_residual(data, model, weights, options.highpass_sigma_px).cpu().numpy()


def _searched(options: AlignConfig, level: _Level, frame: _Frame, track: _Track,
              model: torch.Tensor, named: list[int]
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each low-pass of the search (``coarse_lowpass_px``, half of it, none): the shifts
    [n, 2] with those of ``named`` at the peak of their cross-correlation with their
    ``model`` [k, h, w] within ``track.reach_px`` of their start, and their residual [k]
    there."""
    factor, start = level.factor, track.origin()
    shifts = track.shifts.copy()
    shifts[named] = start[named]
    data, weights = _named_data(level, frame, shifts, model, named)
    found = []
    for lowpass_px in (options.coarse_lowpass_px, options.coarse_lowpass_px / 2, 0.0):
        peak = xcorr_shift(data, model, weights.mean(dim=0), lowpass_px / factor,
                           track.reach_px / factor).cpu().numpy()
        shifts = shifts.copy()
        shifts[named] = np.clip(start[named] + peak * factor, start[named] - track.reach_px,
                                start[named] + track.reach_px)
        found.append((shifts, _residual_at(options, level, frame, shifts, model, named)))
    return found


@dataclass(frozen=True)
class SmoothCheck:
    """What ``align.smooth_check_px`` measured (:func:`_smooth_check`).

    Attributes
    ----------
    pattern_px : float, pixels
        RMS of the shift pattern added (after the clip to the search range).
    harmonics : tuple of int
        Its harmonics of the rotation angle (row and column, the translations that no
        alignment observes removed).
    smooth_distance : float
        How far from the estimate the rerun stopped, in those harmonics: the RMS of the
        smooth part of its last shifts less the estimate, over ``pattern_px`` (0: back at
        the estimate; 1: as far as the pattern put it, whether it stayed or moved on along
        another smooth pattern). The rerun stops as soon as this is within
        :data:`SMOOTH_CHECK_LIMIT`, else after the level's iterations.
    along_pattern : float
        That difference projected on the pattern added, over the pattern (1: it stayed,
        0: taken back or moved off it, < 0: overshot); like the distance, where the rerun
        stopped (0.4-0.5 where it stopped early, not where it would have converged).
    other_px : float, pixels
        RMS of the rest of that difference (not smooth over the angles), where it stopped.
    determined : bool
        ``smooth_distance <= SMOOTH_CHECK_LIMIT`` (half the pattern): the method takes
        such patterns back.
    iterations : int
        Of the rerun (fewer than the level's where it took the pattern back early).
    seconds : float
        Its wall time, s.
    """

    pattern_px: float
    harmonics: tuple[int, ...]
    smooth_distance: float
    along_pattern: float
    other_px: float
    determined: bool
    iterations: int
    seconds: float


def _smooth_check(options: AlignConfig, level: _Level, frame: _Frame, track: _Track
                  ) -> SmoothCheck | None:
    """Run the joint last ``level`` again, quietly, from the estimate in ``track`` plus a
    shift pattern smooth over the angles (``options.smooth_check_px`` RMS, harmonics 2 and
    3 in the row and the column) and measure how far from the estimate, in such patterns,
    the rerun stops (as soon as it is within :data:`SMOOTH_CHECK_LIMIT`). A method that
    fixes them takes the pattern back; where the widened volume follows it (one-way
    wiring) it stays or wanders on, and the estimate itself may be off by such a
    pattern. ``track`` is left as it is; None (logged) where the angles
    cannot tell those harmonics apart or leave no pattern to add.
    """
    t0 = time.perf_counter()
    try:
        patterns = harmonic_patterns(track.angles, 2, 3, gauge=rigid_drift_basis(
            track.angles, track.tilt_deg)).numpy().reshape(-1, 2 * len(track.angles))
    except ValueError:
        log.info("projection matching: %d angles do not tell harmonics 2 and 3 apart: no "
                 "smooth-pattern check (align.smooth_check_px)", len(track.angles))
        return None
    theta = np.deg2rad(track.angles)
    # one fixed pattern with both harmonics in both components (whatever the basis)
    wave = np.stack([np.cos(2 * theta) + np.sin(3 * theta),
                     np.sin(2 * theta) - np.cos(3 * theta)], axis=1).reshape(-1)
    pattern = patterns.T @ (patterns @ wave)  # less the translations (uneven angles)
    size = float(np.sqrt(np.mean(pattern ** 2)))
    if size < 1e-3:  # angles whose harmonics 2 and 3 nearly vanish without that wave
        log.info("projection matching: the angles leave no smooth-pattern check "
                 "(align.smooth_check_px)")
        return None
    pattern = pattern * options.smooth_check_px / size
    start = track.origin()
    probed = np.clip(track.shifts + pattern.reshape(-1, 2), start - track.reach_px,
                     start + track.reach_px)
    added = (probed - track.shifts).reshape(-1)  # what the clip left of the pattern
    if not np.any(added):
        log.info("projection matching: every shift is at align.coarse_search_px: no "
                 "smooth-pattern check")
        return None
    # the check asks about smooth patterns: a stack's height stays where the estimate has it
    height = fit_rigid_drift(track.shifts, track.angles, track.tilt_deg)[2] \
        if track.drift_axes == (0, 1) else None
    probe = _Track(probed, track.angles, track.tilt_deg, track.planes.clone(),
                   np.zeros_like(track.shifts), start=track.start, reach_px=track.reach_px,
                   held_height=height)

    def rms(values: np.ndarray) -> float:
        return float(np.sqrt(np.mean(values ** 2)))

    def smooth_distance(shifts: np.ndarray) -> float:
        change = (shifts - track.shifts).reshape(-1)
        return rms(patterns.T @ (patterns @ change)) / rms(added)

    # once within the limit the pattern is taken back: on the 16 crops measured the rerun
    # never left it again, and it got there in 2-10 of the level's 50 iterations
    _run_level(options, level, frame, probe, None, quiet=True,
               until=lambda shifts: smooth_distance(shifts) <= SMOOTH_CHECK_LIMIT)
    change = (probe.shifts - track.shifts).reshape(-1)
    smooth = patterns.T @ (patterns @ change)
    distance = rms(smooth) / rms(added)  # smooth_distance(probe.shifts), its parts reused
    check = SmoothCheck(rms(added), (2, 3), distance, float(change @ added / (added @ added)),
                        rms(remove_rigid_drift((change - smooth).reshape(-1, 2),
                                               track.angles, track.tilt_deg)[0]),
                        distance <= SMOOTH_CHECK_LIMIT,
                        len(probe.history), time.perf_counter() - t0)
    _log_smooth_check(check, level.factor, after_stack=height is not None)
    return check


def _log_smooth_check(check: SmoothCheck, factor: int, after_stack: bool = False) -> None:
    """One line: info where the pattern came back, a warning where it stayed (one that
    says so where the estimate is a layer stack's and the rerun had voxels)."""
    what = (f"projection matching: smooth-pattern check: binning {factor} rerun from the "
            f"estimate plus a {check.pattern_px:.2f} px shift pattern smooth over the angles "
            f"stopped {check.smooth_distance:.2f} times the pattern from the estimate in "
            f"such patterns ({check.iterations} iterations, {check.seconds:.0f} s; the shifts "
            f"returned are those before the check)")
    if check.determined:
        log.info("%s: this method takes such patterns back near its estimate", what)
    elif after_stack:
        log.warning("%s with a volume of voxels: the data alone do not hold such patterns "
                    "for this method; the layer stack's level may have (at 40 x 56 x 56 this "
                    "warned on three crops of 16: two ended 1.4-2.0 px off, one 0.06 px), so "
                    "the shifts returned may be off by a pattern smooth over the angles of up "
                    "to a few pixels (docs/extended_samples.md, twelfth session)", what)
    else:
        log.warning("%s: these data do not hold such patterns for this method, and the "
                    "shifts returned may be off by a pattern smooth over the angles of up to "
                    "a few pixels (seen on regions of one-way wiring; regions with structure "
                    "in both directions align better: docs/extended_samples.md)", what)


def _end_level(level: _Level, track: _Track, best: tuple[float, np.ndarray, np.ndarray],
               entry: dict, options: AlignConfig, quiet: bool = False) -> None:
    """Close a level: with held-out folds, go back to the shifts whose held-out residual
    was lowest (a validation error: later steps that raise it follow what the fold
    volumes absorbed, not the data) unless the last measured one was the lowest (then the
    last step is kept, as in any level); warn about projections held at the search range.
    ``best``: (held-out residual RMS, shifts, their per-angle residual [n]). The phase
    planes stay those of the last iteration (the next level fits its own)."""
    if len(level.folds) > 1 and best[0] < entry["residual_rms"]:
        track.shifts = best[1]
        # the level's last snapshot is what it hands on (the stage plots it)
        track.snapshots[-1] = track.shifts.copy()
        track.residuals[-1] = best[2]  # and the per-angle residual of those shifts
        entry["at_bound"] = track.held(track.shifts)
        log.log(logging.DEBUG if quiet else logging.INFO,
                "projection matching: binning %d keeps the shifts of its lowest held-out "
                "residual (%.4g; last %.4g)", level.factor, best[0], entry["residual_rms"])
    if not quiet:
        _warn_at_bound(level.factor, entry, options)


def _warn_at_bound(factor: int, entry: dict, options: AlignConfig) -> None:
    """One warning line when a level ends with projections held at the search range."""
    if entry["at_bound"]:
        log.warning("projection matching: binning %d ends with %d projection(s) held at "
                    "align.coarse_search_px = %g px from the start (indices %s): their "
                    "shifts ran away and are not determined", factor, len(entry["at_bound"]),
                    options.coarse_search_px, entry["at_bound"][:10])


def _with_measured(level: _Level, frame: _Frame, shifts: np.ndarray) -> _Level:
    """``level`` with its weights (and least-squares weights) times
    :meth:`_Frame.measured` at ``shifts``; as is when ``level.taper_px`` is 0."""
    if level.taper_px <= 0:
        return level
    measured = frame.measured(shifts, level.factor, level.taper_px)
    trust = measured if level.trust is None else level.trust * measured
    return dataclasses.replace(level, weights=level.weights * measured, trust=trust)


def _remove_planes(data: torch.Tensor, model: torch.Tensor, level: _Level, track: _Track
                   ) -> torch.Tensor:
    """``data`` less the planes of ``data - model`` (kept in ``track``); as is without a
    plane fit."""
    if level.basis is None:
        return data
    data, track.planes = _without_planes(data, model, level.weights, level.basis)
    return data


def _without_planes(data: torch.Tensor, model: torch.Tensor, weights: torch.Tensor,
                    basis: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``data`` [k, h, w] less the planes (``basis`` [3, h, w]) of ``data - model`` under
    ``weights`` [k, h, w], and those planes [k, 3] (as is and None without a basis)."""
    if basis is None:
        return data, None
    planes = fit_planes(data - model, weights, basis)
    return data - plane_images(planes, basis).to(data.dtype), planes


def _shift_update(data: torch.Tensor, model: torch.Tensor, level: _Level,
                  options: AlignConfig, coarse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift update ``[n, 2]`` (pixels of the level) and weighted residual RMS ``[n]``."""
    if not coarse:
        weights = level.weights if level.flow_gain is None else level.weights * level.flow_gain
        # a window cut out of a wide sample: filters that keep to the fitted pixels (with
        # taper_px > 0 the level's trust holds the measured pixels' weights, never None)
        fitted = level.trust if level.taper_px > 0 else None
        update, residual = optical_flow_update(data, model, weights,
                                               options.highpass_sigma_px,
                                               options.max_update_px, level.eigen_floor,
                                               fitted)
        if level.smooth is not None:  # the part the widened volume absorbs: over-relaxed
            fit = level.smooth @ (level.smooth.T @ update.double())
            update = update + options.smooth_gain * fit.to(update.dtype)
        return update, residual
    factor = level.factor
    update = xcorr_shift(data, model, level.weights.mean(dim=0),
                         options.coarse_lowpass_px / factor, options.coarse_search_px / factor)
    return update, _weighted_residual(data, model, level.weights, options.highpass_sigma_px)


def _weighted_residual(data: torch.Tensor, model: torch.Tensor, weights: torch.Tensor,
                       highpass_sigma_px: float) -> torch.Tensor:
    """Per-projection RMS [n] (float64, data units) of the high-passed ``data - model``
    [n, h, w] under ``weights`` [n, h, w]."""
    diff = highpass((data - model).double(), highpass_sigma_px)
    return torch.sqrt((weights * diff ** 2).sum(dim=(-2, -1)) / weights.sum(dim=(-2, -1)))


def _to_host(update: torch.Tensor, residual: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``update`` [n, 2] and ``residual`` [n] as NumPy arrays of their own dtypes, in one
    device-to-host copy (one wait for the device per iteration instead of two)."""
    wide = torch.promote_types(torch.promote_types(update.dtype, residual.dtype),
                               torch.float64)
    flat = torch.cat([update.reshape(-1).to(wide), residual.reshape(-1).to(wide)])
    host = flat.cpu().numpy()  # exact: every float dtype converts to float64 and back
    n = update.numel()
    return (host[:n].reshape(tuple(update.shape)).astype(_numpy_dtype(update), copy=False),
            host[n:].reshape(tuple(residual.shape)).astype(_numpy_dtype(residual),
                                                            copy=False))


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    return torch.empty(0, dtype=tensor.dtype).numpy().dtype


@dataclass
class _Track:
    """The shift estimates and the history of the iterations so far."""

    shifts: np.ndarray        # float64 [n, 2], full-resolution pixels, free of the
    #                           translations ``drift_axes`` but for ``held_height``
    angles: np.ndarray
    tilt_deg: float
    planes: torch.Tensor      # float64 [n, 3] on the device: offset rad, slopes rad/px
    velocity: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # last step
    start: np.ndarray | None = None  # [n, 2] the starting estimate (None: zeros)
    reach_px: float = math.inf       # how far from ``start`` a shift may go, per axis
    drift_axes: tuple[int, ...] = (0, 1, 2)  # the translations removed (z kept: a stack)
    # a z translation (voxels) kept through each removal: a probe of a stack's level holds
    # the estimate's height, and so do the shifts placed on the stack at the end (None: a
    # stack's level fits it, other levels remove it)
    held_height: float | None = None
    history: list[dict] = field(default_factory=list)
    residuals: list[np.ndarray] = field(default_factory=list)
    snapshots: list[np.ndarray] = field(default_factory=list)

    def step(self, update: torch.Tensor, residual: torch.Tensor, factor: int, iteration: int,
             coarse: bool, t0: float, momentum: float = 0.0) -> dict:
        """Apply ``update`` (pixels of the level) with ``momentum``, remove the drift, keep
        every shift within ``reach_px`` of its start, record the entry."""
        previous = self.shifts
        host_update, res = _to_host(update, residual)
        move = host_update * factor
        # heavy-ball momentum while the updates keep their direction (widened volumes: what
        # few angles see ties each shift to its neighbours' and slows plain steps)
        if momentum > 0 and not coarse and iteration > 0 and \
                float((move * self.velocity).sum()) > 0:
            move = move + momentum * self.velocity
        self.shifts = self._bounded(self.shifts + move)
        at_bound = self.held(self.shifts)
        self.velocity = self.shifts - previous
        step = self.shifts - previous  # the drift part of an update changes nothing
        entry = {
            "level": int(factor), "iteration": int(iteration),
            "step": "xcorr" if coarse else "flow",
            "residual_rms": float(np.sqrt(np.mean(res ** 2))),
            "max_update_px": float(np.abs(step).max()),
            "rms_update_px": float(np.sqrt(np.mean(step ** 2))),
            "at_bound": at_bound,
            "seconds": time.perf_counter() - t0,
        }
        self.history.append(entry)
        self.residuals.append(res)
        self.snapshots.append(self.shifts.copy())
        return entry

    def _bounded(self, shifts: np.ndarray) -> np.ndarray:
        """``shifts`` without the rigid drift and within ``start +- reach_px``.

        A shift that runs beyond the searched range is a runaway (the data do not hold it
        there: a projection whose structure fixes one direction only, or a held-out
        prediction it cannot match); past the edge padding its whole window would be
        weighted out and the steps would stop meaning anything. Clipping adds a little
        drift back, so drift removal and clipping alternate (the bound wins).
        """
        start = self.origin()
        held = rigid_drift_basis(self.angles, self.tilt_deg)[:, :, 2] * \
            (self.held_height or 0.0)
        for _ in range(4):
            shifts, _ = remove_rigid_drift(shifts - held, self.angles, self.tilt_deg,
                                           self.drift_axes)
            shifts = np.clip(shifts + held, start - self.reach_px, start + self.reach_px)
        return shifts

    def end_stack_level(self, place: bool = False) -> tuple[float | None, bool]:
        """End a stack's level: the z translation it kept (it placed the data's layers
        against the stack), voxels (up positive; None where every level removed it), and
        whether the shifts keep it. They do with ``place`` (``align.place_on_stack``: the
        data shifted by them then have their layers at the stack's heights) unless the
        offset is large or a shift sits at the search bound (the stack's height is then
        likely off, and clipping would keep only part of it); else they end free of it."""
        if self.drift_axes == (0, 1, 2):
            return None, False
        offset = float(fit_rigid_drift(self.shifts, self.angles, self.tilt_deg)[2])
        row_px = abs(offset) * math.cos(math.radians(90.0 - self.tilt_deg))
        at_bound = bool(self.held(self.shifts))
        suspect = row_px > 0.5 * self.reach_px or at_bound
        placed = place and not suspect
        self.drift_axes = (0, 1, 2)
        self.held_height = offset if placed else None
        self.shifts = self._bounded(self.shifts)
        if suspect:
            log.warning("projection matching: the data's layers sit %+.2f voxels from the "
                        "stack, a row shift of %.2f px against align.coarse_search_px = %g%s: "
                        "the stack's height (align.layer_base_um) is likely off; the shifts "
                        "are returned free of it%s", offset, row_px, self.reach_px,
                        ", shifts held at that bound" if at_bound else "",
                        " (not placed on the stack)" if place else "")
        elif placed:
            log.info("projection matching: the data's layers sat %+.2f voxels along z from "
                     "the stack given; the shifts keep that translation, so the aligned "
                     "projections hold them at the stack's heights (align.place_on_stack; "
                     "stack_offset_um in align_history.json)", offset)
        else:
            log.info("projection matching: the data's layers sit %+.2f voxels along z from "
                     "the stack given (to move the stack onto them, lower "
                     "align.layer_base_um by that height: stack_offset_um in "
                     "align_history.json)", offset)
        return offset, placed

    def origin(self) -> np.ndarray:
        """``start`` [n, 2], zeros where there is none."""
        return np.zeros_like(self.shifts) if self.start is None else self.start

    def held(self, shifts: np.ndarray) -> list[int]:
        """The projections whose shift is at ``start +- reach_px``."""
        start = self.origin()
        at = np.abs(shifts - start) >= self.reach_px * (1.0 - 1e-12)
        return [int(i) for i in np.nonzero(at.any(axis=1))[0]]
