"""``adept simulate``: IC phantom -> laminography projections -> ptychography scans.

Rank 0 builds the phantom and broadcasts it; every rank projects and simulates its block of
angles and writes one CXI file per angle. The noise of angle ``i`` comes from the stream
``default_rng([seed, i])``, so the files do not depend on the number of ranks. Rank 0
finally writes ``ground_truth.h5`` (with the phantom's circuit: net and via labels, layer
slices) and ``true_projections.h5`` beside the scans (and, with
``simulate.write_projections``, ``projections.h5`` into the run directory). While the
dataset is being written it holds a marker file (``SIMULATION_INCOMPLETE``) that the
dataset listing refuses: an interrupted run leaves no dataset that looks complete.

With ``simulate.sample: extended`` (the default) the phantom is a slab widened by a lateral
margin around the region (:mod:`hpc_adept.lamino.region`); it is projected onto the region's
detector window, enlarged by the scans' padding when scans are simulated, so that the
object beyond the scanned field is chip, not vacuum. The ground truth is the region.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpc_adept import sim
from hpc_adept.config import Config
from hpc_adept.errors import ConfigError, DataError
from hpc_adept.io import (
    CircuitTruth,
    ProjectionSet,
    Scan,
    write_cxi,
    write_ground_truth,
    write_projections,
    write_text_atomic,
)
from hpc_adept.io.cxi import INCOMPLETE_MARKER
from hpc_adept.lamino.region import extended_shape, lateral_margin_px
from hpc_adept.log import Progress
from hpc_adept.parallel import (
    ParallelContext,
    barrier,
    bcast_array,
    block_range,
    first_failure,
    gather_dict,
)
from hpc_adept.phantom import (
    centred_crop_origin,
    crop_problem,
    ground_truth_volume,
    load_layout,
    make_phantom,
    wavelength_m,
)

log = logging.getLogger(__name__)

ELECTRON_VOLT_J = 1.602176634e-19
EXTENDED_OCCUPANCY = "extended_occupancy"
"""``ground_truth.h5`` dataset of an extended sample: the widened slab's occupancy."""
SCAN_NAME = "scan_{:04d}.cxi"
_SCAN_RE = re.compile(r"scan_(\d{4,})\.cxi$")


BASE_BYTES = 512 * 2**20  # interpreter, torch, MPI, buffers
PROJECTOR_CHUNK_BYTES = 32 * 2**20  # the CPU projector's working buffer


@dataclass(frozen=True)
class SimulationPlan:
    """Everything about the simulated measurement that follows from the config."""

    dataset_dir: Path
    phantom_kind: str
    angles_deg: np.ndarray
    projection_shape: tuple[int, int]
    probe_diameter_px: float
    distance_m: float
    wavelength_m: float
    cfg: Config | None = None
    margin_px: int = 0
    window_pad_px: int = 0

    @property
    def phantom_shape(self) -> tuple[int, int, int]:
        """(nz, ny, nx) of the phantom built: the region widened by ``margin_px`` on both
        lateral sides (the region is ``[:, m:m + ny, m:m + nx]``)."""
        assert self.cfg is not None
        return extended_shape(tuple(self.cfg.simulate.volume_shape), self.margin_px)

    @property
    def window_shape(self) -> tuple[int, int]:
        """(nv, nu) of the simulated projections: the region's detector window enlarged by
        ``window_pad_px`` on every side (the scans' object beyond the field)."""
        nv, nu = self.projection_shape
        return (nv + 2 * self.window_pad_px, nu + 2 * self.window_pad_px)

    def region(self, array: np.ndarray) -> np.ndarray:
        """The region ``[..., m:m + ny, m:m + nx]`` of a phantom-shaped ``array``."""
        if self.margin_px == 0:
            return array
        m = self.margin_px
        ny, nx = array.shape[-2] - 2 * m, array.shape[-1] - 2 * m
        return array[..., m:m + ny, m:m + nx]

    def field(self, projections: np.ndarray) -> np.ndarray:
        """The region's detector window ``[..., nv, nu]`` of window-shaped projections."""
        if self.window_pad_px == 0:
            return projections
        p = self.window_pad_px
        nv, nu = self.projection_shape
        return projections[..., p:p + nv, p:p + nu]

    def validate(self, ctx: ParallelContext, device: object) -> None:
        """Stop before any work when the simulation will not fit in memory (collective).

        Every rank checks its own node; the first problem stops all ranks with one line.
        ``device`` is unused: the simulation runs on the host.
        """
        if self.cfg is None or not self.cfg.runtime.memory_guard:
            return
        cfg = self.cfg
        problem = first_failure(ctx, lambda: _memory_problem(cfg, self, ctx))
        if problem is not None:
            raise ConfigError(problem)


def _positions_per_scan(plan: SimulationPlan, overlap: float) -> int:
    """Probe positions of one scan, as :func:`hpc_adept.sim.raster_positions` makes them."""
    step = plan.probe_diameter_px * (1.0 - overlap)
    count = 1
    for extent in plan.projection_shape:
        count *= math.ceil((extent - 1) / step) + 1 if extent > 1 else 1
    return count


def scan_pad_px(cfg: Config) -> int:
    """Object pixels beyond the scanned field on every side that a scan's frames reach."""
    s = cfg.simulate
    return s.frame_size // 2 + int(math.ceil(s.position_jitter_px)) + 2


def simulation_memory_parts(cfg: Config, plan: SimulationPlan, n_ranks: int
                            ) -> dict[str, int]:
    """Peak bytes of rank 0 (the busiest rank) of ``adept simulate``, by what drives them.

    Keys name the settings that drive each part, for the error message. An extended
    sample's phantom is the widened slab and its projections the enlarged window
    (:attr:`SimulationPlan.phantom_shape`, :attr:`SimulationPlan.window_shape`).
    """
    s = cfg.simulate
    nz, ny, nx = (int(n) for n in plan.phantom_shape)
    voxels = nz * ny * nx
    nv, nu = plan.window_shape
    n_frame = s.frame_size
    n_local = -(-s.n_angles // n_ranks)
    # phantom on rank 0: occupancy, volume, the phantom's own float32 work arrays; every
    # rank: the broadcast volume, its float64 copy for the projector and one more inside
    phantom = 16 * voxels + 20 * voxels
    # the circuit truth on rank 0: int32 net and via labels and the drawing's int32 work
    # arrays (wire and via ids, a np.where) while they are built
    phantom += 24 * voxels
    if plan.phantom_kind == "layout":
        # the rasteriser's boolean slab of supersampled voxel layers (>= one layer) and
        # its uint16 partial sums
        layer = s.supersample**3 * ny * nx
        slab = max(layer, min(nz * layer, 32 * 2**20))
        phantom += 2 * slab
    fv, fu = plan.projection_shape
    # rank 0: gathered, stacked, noisy; with drift in projections.h5 every rank's moved
    # float64 copy and rank 0's gathered and stacked fields of it
    drifted = s.write_projections and s.drift_px > 0
    projections = ((8 + (8 if drifted else 0)) * n_local * nv * nu
                   + (24 + (12 if drifted else 0)) * s.n_angles * fv * fu
                   + 8 * s.n_angles * n_frame**2 + PROJECTOR_CHUNK_BYTES)
    n_positions = _positions_per_scan(plan, s.overlap) if s.scans else 0
    # counts: float64 intensities, int64 Poisson draws, float32 counts; positions
    scan = n_positions * (20 * n_frame**2 + 48)
    pad = scan_pad_px(cfg) if plan.window_pad_px == 0 else 0  # the window holds the pad
    padded = 24 * (nv + 2 * pad) * (nu + 2 * pad) if s.scans else 0  # phase + complex
    return {
        "the phantom (simulate.volume_shape, simulate.supersample, simulate.sample)": phantom,
        "the projections (simulate.n_angles, simulate.projection_shape)": projections,
        "one scan's frames (simulate.probe_diameter_px, simulate.overlap, "
        "simulate.frame_size)": scan,
        "the padded object (simulate.position_jitter_px)": padded,
    }


def _memory_problem(cfg: Config, plan: SimulationPlan, ctx: ParallelContext) -> str | None:
    """Why ``adept simulate`` would not fit in this rank's memory, or None."""
    import torch

    from hpc_adept.backend import MEMORY_GUARD_HINT, memory_shortfall, peak_memory_bytes

    parts = simulation_memory_parts(cfg, plan, ctx.size)
    device = torch.device("cpu")  # the simulation runs on the host
    need = peak_memory_bytes(BASE_BYTES + sum(parts.values()), device,
                             cfg.runtime.keep_host_memory)
    shortfall = memory_shortfall("simulate", need, device, ctx.local_size)
    if not shortfall:
        return None
    largest = max(parts, key=parts.__getitem__)
    return (f"{shortfall}; the largest part is {largest}, about "
            f"{parts[largest] / 2**30:.3g} GiB: change those settings{MEMORY_GUARD_HINT}")


def auto_projection_shape(volume_shape: tuple[int, int, int], tilt_deg: float,
                          margin_px: int = 2) -> tuple[int, int]:
    """Smallest even (nv, nu) that holds every projection of the volume at this tilt."""
    nz, ny, nx = volume_shape
    a = math.radians(90.0 - tilt_deg)
    r_xy = math.hypot((nx - 1) / 2.0, (ny - 1) / 2.0)
    half_u = r_xy + margin_px
    half_v = abs(math.sin(a)) * r_xy + abs(math.cos(a)) * (nz - 1) / 2.0 + margin_px
    return (2 * math.ceil(half_v), 2 * math.ceil(half_u))


def plan_simulate(cfg: Config) -> SimulationPlan:
    """Validate the simulate config against the file system; no work, no output."""
    s = cfg.simulate
    if cfg.data.path is None:
        raise ConfigError("data.path is not set (the dataset directory to write)")
    dataset_dir = Path(cfg.data.path)
    if dataset_dir.exists() and not dataset_dir.is_dir():
        raise ConfigError(f"data.path: {dataset_dir} exists and is not a directory")
    if dataset_dir.is_dir():
        foreign = [p.name for p in dataset_dir.glob("*.cxi") if not _SCAN_RE.match(p.name)]
        if foreign:
            raise ConfigError(
                f"data.path: {dataset_dir} already holds CXI files not written by adept "
                f"simulate ({foreign[0]}, ...); choose an empty directory"
            )
    kind = s.phantom
    if kind == "layout":
        missing = [(k, p) for k, p in (("simulate.layout_def", s.layout_def),
                                       ("simulate.layout_lef", s.layout_lef))
                   if not Path(p).is_file()]
        if missing and s.layout_fallback:
            log.warning("layout files not found (%s): using the procedural phantom instead",
                        missing[0][1])
            kind = "procedural"
        elif missing:
            raise ConfigError(f"{missing[0][0]}: file not found: {missing[0][1]}")
        else:
            check_layout(cfg)
    shape = s.projection_shape or auto_projection_shape(s.volume_shape, s.tilt_deg)
    needed = auto_projection_shape(s.volume_shape, s.tilt_deg, margin_px=0)
    if shape[0] < needed[0] or shape[1] < needed[1]:
        log.warning("simulate.projection_shape %s cuts off parts of the volume's projections "
                    "(%s needed)", list(shape), list(needed))
    diameter = s.probe_diameter_px or s.frame_size / 2.0
    lam = wavelength_m(s.energy_ev)
    distance = sim.detector_distance_m(s.voxel_size_m, lam, s.frame_size, s.detector_pixel_m)
    angles = np.arange(s.n_angles, dtype=np.float64) * (360.0 / s.n_angles)
    margin, window_pad = _extension(cfg, tuple(shape))
    plan = SimulationPlan(dataset_dir, kind, angles, tuple(shape), diameter, distance, lam,
                          cfg, margin, window_pad)
    if kind == "layout" and s.sample == "extended":
        _warn_beyond_die(cfg, plan)
    return plan


def _extension(cfg: Config, field_shape: tuple[int, int]) -> tuple[int, int]:
    """(lateral margin, window padding) px of the sample: (0, 0) for an isolated one.

    The window padding of an extended sample (the scans' reach beyond the field, plus the
    largest drift so that the drift's circular shift wraps nothing into the scans or
    ``projections.h5``) enlarges the projected window; the margin is sized for that
    enlarged window.
    """
    s = cfg.simulate
    if s.sample == "isolated":
        return 0, 0
    # the drift reaches the scans or projections.h5 (the config refuses both off)
    pad = (scan_pad_px(cfg) if s.scans else 0) + int(math.ceil(3.0 * s.drift_px))
    window = (field_shape[0] + 2 * pad, field_shape[1] + 2 * pad)
    return lateral_margin_px(tuple(s.volume_shape), window, s.tilt_deg), pad


def _region_origin_um(cfg: Config) -> tuple[float, float]:
    """DEF coordinates (um) of the region's voxel ``[:, 0, 0]``."""
    s = cfg.simulate
    if s.crop_origin_um:
        return (float(s.crop_origin_um[0]), float(s.crop_origin_um[1]))
    layout, _ = load_layout(s.layout_def, s.layout_lef)
    return tuple(centred_crop_origin(layout, s.volume_shape, s.voxel_size_m))


def _phantom_origin_um(cfg: Config, plan: SimulationPlan) -> tuple[float, float] | None:
    """DEF origin (um) of the layout crop to rasterise: ``simulate.crop_origin_um`` (None:
    centred) for an isolated sample; the region's origin moved by ``-margin`` voxels for an
    extended one, so that the region stays where ``crop_origin_um`` says."""
    s = cfg.simulate
    if plan.margin_px == 0:
        return s.crop_origin_um
    x0, y0 = _region_origin_um(cfg)
    shift = plan.margin_px * s.voxel_size_m * 1e6
    return (x0 - shift, y0 - shift)


def _warn_beyond_die(cfg: Config, plan: SimulationPlan) -> None:
    """One warning when the widened slab reaches beyond the die (vacuum there)."""
    s = cfg.simulate
    layout, _ = load_layout(s.layout_def, s.layout_lef)
    x0, y0 = _phantom_origin_um(cfg, plan)
    _, ny, nx = plan.phantom_shape
    d_um = s.voxel_size_m * 1e6
    dx0, dy0, dx1, dy1 = layout.die_area_um
    if x0 < dx0 or y0 < dy0 or x0 + nx * d_um > dx1 or y0 + ny * d_um > dy1:
        log.warning("simulate.sample extended: the widened slab x %.3g..%.3g um, "
                    "y %.3g..%.3g um (margin %d voxels) leaves the die x %.3g..%.3g um, "
                    "y %.3g..%.3g um of %s: vacuum there", x0, x0 + nx * d_um, y0,
                    y0 + ny * d_um, plan.margin_px, dx0, dx1, dy0, dy1, s.layout_def)


def check_layout(cfg: Config) -> None:
    """Parse the DEF/LEF now and refuse a crop that would be an empty phantom.

    Parsing in the plan phase means a malformed file stops the command before the dataset
    directory exists; the parse is cached for the work phase.

    Raises
    ------
    DataError
        A malformed or unreadable DEF/LEF (naming the file and line), or a DEF without
        routed metal.
    ConfigError
        ``simulate.crop_origin_um`` (or the volume) places the crop outside the die or
        where it holds no metal.
    """
    s = cfg.simulate
    layout, tech = load_layout(s.layout_def, s.layout_lef)
    if not any(len(boxes) for boxes in layout.boxes.values()):
        raise DataError(f"{s.layout_def}: no routed metal (no wires, vias or shapes in "
                        f"NETS, SPECIALNETS or FILLS): the phantom would be empty")
    origin = s.crop_origin_um or centred_crop_origin(layout, s.volume_shape, s.voxel_size_m)
    problem = crop_problem(layout, tech, origin, s.volume_shape, s.voxel_size_m)
    if problem:
        key = ("simulate.crop_origin_um" if s.crop_origin_um
               else "simulate.volume_shape / simulate.voxel_size_m")
        raise ConfigError(f"{key}: {problem}: the phantom would be empty")


def build_ground_truth(cfg: Config, plan: SimulationPlan) -> tuple[np.ndarray, np.ndarray]:
    """Phantom occupancy fraction and per-voxel phase, both float32
    :attr:`SimulationPlan.phantom_shape` (the widened slab of an extended sample)."""
    s = cfg.simulate
    occupancy = make_phantom(
        plan.phantom_kind, plan.phantom_shape, s.voxel_size_m,
        layout_def=s.layout_def, layout_lef=s.layout_lef,
        crop_origin_um=_phantom_origin_um(cfg, plan), seed=s.seed, supersample=s.supersample,
    )
    volume = ground_truth_volume(occupancy, s.energy_ev, s.voxel_size_m)
    return occupancy.astype(np.float32), volume.astype(np.float32)


def build_circuit_truth(cfg: Config, plan: SimulationPlan) -> CircuitTruth:
    """The region's circuit: net and via labels ``[nz, ny, nx]`` int32 and every metal and
    cut layer's slices, from the layout (its DEF nets and via placements, cut to the crop)
    or from the procedural phantom's own draw (the same seed, the same widened slab as
    :func:`build_ground_truth`, cut to the region)."""
    s = cfg.simulate
    if plan.phantom_kind == "procedural":
        from hpc_adept.phantom.procedural import procedural_circuit

        c = procedural_circuit(plan.phantom_shape, s.voxel_size_m, s.seed)
        if plan.margin_px == 0:
            return CircuitTruth(c.nets, c.vias, c.layers, c.cut_layers, c.net_names,
                                c.via_layers)
        # the drawing's ids of the wires and vias the region holds, numbered anew
        nets, net_names = _renumbered(plan.region(c.nets), c.net_names)
        vias, via_layers = _renumbered(plan.region(c.vias), c.via_layers)
        return CircuitTruth(nets, vias, c.layers, c.cut_layers, net_names, via_layers)
    from hpc_adept.phantom.layout import layer_slices, rasterise_circuit

    layout, tech = load_layout(s.layout_def, s.layout_lef)
    origin = (_phantom_origin_um(cfg, plan)
              or centred_crop_origin(layout, s.volume_shape, s.voxel_size_m))
    nets, vias = rasterise_circuit(layout, tech, origin, plan.phantom_shape, s.voxel_size_m)
    nets = np.ascontiguousarray(plan.region(nets))
    vias = np.ascontiguousarray(plan.region(vias))
    layers = layer_slices(tech, s.voxel_size_m, int(s.volume_shape[0]))
    via_layers = [""] * max([0, *(int(ids.max()) for ids in layout.vias.values() if len(ids))])
    for layer, ids in layout.vias.items():
        for via_id in np.unique(ids[ids > 0]).tolist():
            via_layers[via_id - 1] = layer
    return CircuitTruth(nets, vias, layers, tuple(n for n in layers if n in tech.cuts),
                        tuple(layout.net_names), tuple(via_layers))


def _renumbered(labels: np.ndarray, names: tuple[str, ...]
                ) -> tuple[np.ndarray, tuple[str, ...]]:
    """``labels`` int32 with the ids present numbered 1..k in their order, and their
    ``names`` (index ``id - 1``)."""
    present, inverse = np.unique(labels, return_inverse=True)
    if present[0] != 0:  # no unlabelled voxel: keep 0 free
        present, inverse = np.concatenate([[0], present]), inverse + 1
    out = inverse.reshape(labels.shape).astype(np.int32)
    return out, tuple(names[i - 1] for i in present[1:].tolist())


def simulate_scan(projection: np.ndarray, probe: np.ndarray, angle_index: int,
                  cfg: Config, plan: SimulationPlan) -> tuple[np.ndarray, np.ndarray]:
    """Counts [n_positions, N, N] float32 and positions (row, col) px of one angle.

    ``projection`` is the field ``plan.projection_shape`` (padded here with vacuum) or the
    field with :func:`scan_pad_px` pixels of the sample around it on every side.
    """
    s = cfg.simulate
    rng = np.random.default_rng([s.seed, angle_index])
    step = plan.probe_diameter_px * (1.0 - s.overlap)
    positions = sim.raster_positions(plan.projection_shape, step, s.position_jitter_px, rng)
    pad = scan_pad_px(cfg)
    nv, nu = plan.projection_shape
    vacuum = pad if projection.shape == (nv, nu) else 0
    if projection.shape != (nv + 2 * (pad - vacuum), nu + 2 * (pad - vacuum)):
        raise ValueError(f"projection {projection.shape}: neither the field {(nv, nu)} nor "
                         f"the field padded by {pad}")
    obj = sim.object_from_projection(projection, s.absorption_ratio, vacuum)
    intensity = sim.diffraction_patterns(obj, pad, plan.projection_shape,
                                         probe * math.sqrt(s.photons_per_pattern), positions)
    counts = rng.poisson(intensity) if s.poisson_noise else intensity
    return counts.astype(np.float32), positions


def run_simulate(cfg: Config, ctx: ParallelContext, plan: SimulationPlan,
                 device: object) -> None:
    """Run the stage (all ranks); ``plan`` comes from :func:`plan_simulate`.

    ``device`` is unused: the simulation runs on the host, in float64.
    """
    import torch

    from hpc_adept.lamino import Geometry, LaminoOperator

    s = cfg.simulate
    t0 = time.perf_counter()
    occupancy, volume = _start_dataset(cfg, plan, t0) if ctx.is_root else (None, None)
    volume = bcast_array(ctx, volume)

    mine = block_range(s.n_angles, ctx.size, ctx.rank)
    # an extended sample: the widened slab, seen through the (enlarged) window
    geometry = Geometry(plan.angles_deg[mine.start:mine.stop], s.tilt_deg,
                        plan.phantom_shape, plan.window_shape)
    # float64 keeps the simulated data free of projector rounding; the volume is on the
    # host, where the torch kernel runs (runtime.projector is for the GPU work)
    projector = LaminoOperator(geometry, kernel="torch")
    with torch.no_grad():
        projections = projector.forward(torch.from_numpy(volume.astype(np.float64))).numpy()
    probe = sim.make_probe(s.frame_size, plan.probe_diameter_px)
    energy_j = s.energy_ev * ELECTRON_VOLT_J
    stored_probe = (probe * math.sqrt(s.photons_per_pattern)).astype(np.complex64) \
        if s.store_probe else None
    progress = Progress(s.n_angles, "simulated scans", log)
    drift = drift_shifts(s.n_angles, s.drift_px, s.seed)
    errors = phase_errors(s.n_angles, s.phase_offset_rad, s.phase_ramp_rad, s.seed)
    for local, index in enumerate(mine if s.scans else ()):
        measured = _measured(projections[local], drift[index],
                             (errors[0][index], errors[1][index]), cfg, plan)
        counts, positions_px = simulate_scan(measured, probe, index, cfg, plan)
        write_cxi(plan.dataset_dir / SCAN_NAME.format(index),
                  _scan(counts, positions_px, index, cfg, plan, energy_j, stored_probe))
        progress.update(ctx.size if ctx.is_root else 1)

    fields = plan.field(projections)
    gathered = gather_dict(ctx, {i: fields[k] for k, i in enumerate(mine)})
    moved = _drifted_fields(projections, drift[mine.start:mine.stop], cfg, plan)
    moved = gather_dict(ctx, {i: moved[k] for k, i in enumerate(mine)} if moved is not None
                        else {})
    barrier(ctx)  # every scan is on disk before the dataset is declared complete
    if ctx.is_root:
        all_proj, drifted = (
            np.stack([found[i] for i in range(s.n_angles)]).astype(np.float32)
            if found else None for found in (gathered, moved))
        _finish_dataset(cfg, plan, all_proj, volume, occupancy, probe, drift, errors,
                        drifted)
        log.info("simulate: wrote %d scans and ground_truth.h5 to %s in %.1f s",
                 s.n_angles if s.scans else 0, plan.dataset_dir, time.perf_counter() - t0)


def _drifted_fields(projections: np.ndarray, drift: np.ndarray, cfg: Config,
                    plan: SimulationPlan) -> np.ndarray | None:
    """This rank's window-shaped ``projections`` [k, wv, wu] float64 shifted by their
    ``drift`` [k, 2] (row, col) px and cut to the field, for ``projections.h5``: what the
    ptychography of the drifted scans would give. None without drift or that file."""
    s = cfg.simulate
    if not (s.write_projections and s.drift_px > 0):
        return None
    return np.stack([plan.field(_drifted(p, d, cfg, plan))
                     for p, d in zip(projections, drift, strict=True)])


def _drifted(projection: np.ndarray, shift: np.ndarray, cfg: Config, plan: SimulationPlan
             ) -> np.ndarray:
    """``projection`` [window] float64 moved by ``shift`` (row, col) px,
    ``moved[r, c] = projection[r - s_r, c - s_c]``, window-shaped. An extended sample's
    window is padded with chip for the wrap-around of the Fourier shift; an isolated one's
    ends in vacuum: it is padded with zeros first, so vacuum moves in, not the far edge."""
    vacuum = 0 if plan.window_pad_px else int(math.ceil(3.0 * cfg.simulate.drift_px))
    moved = np.real(sim.shift_image(np.pad(projection, vacuum), tuple(shift)))
    return moved[vacuum:moved.shape[0] - vacuum, vacuum:moved.shape[1] - vacuum]


def _measured(projection: np.ndarray, drift: np.ndarray,
              error: tuple[float, np.ndarray], cfg: Config, plan: SimulationPlan
              ) -> np.ndarray:
    """The projection a scan measures: ``projection`` [window] float64 shifted by ``drift``
    (row, col) px, cut to the field plus the scans' padding, plus the phase ``error``
    (offset rad, ramp [2] rad) of this angle."""
    s = cfg.simulate
    measured = _drifted(projection, drift, cfg, plan) if s.drift_px > 0 else projection
    pad = scan_pad_px(cfg) if plan.window_pad_px else 0
    guard = plan.window_pad_px - pad  # the drift's wrap-around, cut off
    if guard:
        measured = measured[guard:-guard, guard:-guard]
    if s.phase_offset_rad > 0 or s.phase_ramp_rad > 0:
        measured = measured + sim.linear_phase(plan.projection_shape, error[0], error[1], pad)
    return measured


def _start_dataset(cfg: Config, plan: SimulationPlan, t0: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Rank 0: mark the dataset incomplete, then build the phantom (see
    :func:`build_ground_truth`); ``t0`` is the stage's start (``time.perf_counter``)."""
    s = cfg.simulate
    plan.dataset_dir.mkdir(parents=True, exist_ok=True)
    # Why: until it is removed at the very end, the dataset's listing refuses the
    # directory, so an interrupted run (or one over an older dataset) cannot pass for a
    # complete one. Written before the broadcast of the phantom, i.e. before any rank writes.
    write_text_atomic(plan.dataset_dir / INCOMPLETE_MARKER,
                      "adept simulate is writing this dataset (or was interrupted while "
                      "it did): run adept simulate again.\n")
    log.info("simulate: %s phantom %s at %.1f nm, %d angles, tilt %.2f deg, "
             "projections %s, frames %d^2, distance %.3f m",
             plan.phantom_kind, list(s.volume_shape), s.voxel_size_m * 1e9, s.n_angles,
             s.tilt_deg, list(plan.projection_shape), s.frame_size, plan.distance_m)
    log.info("simulate: %s sample, lateral margin %d voxels (phantom %s, projected window "
             "%s)", s.sample, plan.margin_px, list(plan.phantom_shape),
             list(plan.window_shape))
    occupancy, volume = build_ground_truth(cfg, plan)
    log.info("phantom ready in %.1f s: metal fraction %.3f",
             time.perf_counter() - t0, float(occupancy.mean()))
    return occupancy, volume


def _scan(counts: np.ndarray, positions_px: np.ndarray, index: int, cfg: Config,
          plan: SimulationPlan, energy_j: float, probe: np.ndarray | None) -> Scan:
    """The CXI scan of angle ``index``: ``counts`` [n, N, N] float32 at ``positions_px``
    [n, 2] (row, col) object pixels; ``probe`` complex64 [N, N] or None (not stored)."""
    s = cfg.simulate
    translation = np.zeros((len(positions_px), 3))
    translation[:, 0] = positions_px[:, 1] * s.voxel_size_m  # x along detector columns
    translation[:, 1] = positions_px[:, 0] * s.voxel_size_m  # y along rows
    return Scan(counts=counts, positions_m=translation, energy_j=energy_j,
                distance_m=plan.distance_m, x_pixel_size_m=s.detector_pixel_m,
                y_pixel_size_m=s.detector_pixel_m,
                rotation_angle_deg=float(plan.angles_deg[index]),
                laminography_angle_deg=s.tilt_deg,
                probe=probe)


def _finish_dataset(cfg: Config, plan: SimulationPlan, all_proj: np.ndarray,
                    volume: np.ndarray, occupancy: np.ndarray, probe: np.ndarray,
                    drift: np.ndarray, errors: tuple[np.ndarray, np.ndarray],
                    drifted: np.ndarray | None = None) -> None:
    """Rank 0, after every scan is on disk: the dataset's other files, then the marker's
    removal (the dataset is complete), then the run directory's projections if asked.

    ``all_proj`` float32 [n_angles, nv, nu], ``volume`` and ``occupancy``
    :attr:`SimulationPlan.phantom_shape`, ``probe`` complex [N, N] (unit photons),
    ``drift`` [n_angles, 2] px, ``errors`` (offsets [n_angles], ramps [n_angles, 2]) rad,
    ``drifted`` the projections moved by the drift (as ``all_proj``; None: no drift).
    """
    s = cfg.simulate
    _remove_stale_scans(plan.dataset_dir, s.n_angles if s.scans else 0)
    with_errors = s.phase_offset_rad > 0 or s.phase_ramp_rad > 0
    extra = {"drift_px": drift} if s.drift_px > 0 else {}
    if with_errors:
        extra.update(phase_offset_rad=errors[0], phase_ramp_rad=errors[1])
    truth = ProjectionSet(projections=all_proj, angles_deg=plan.angles_deg,
                          tilt_deg=s.tilt_deg, pixel_size_m=s.voxel_size_m,
                          probes=np.broadcast_to(probe.astype(np.complex64),
                                                 (s.n_angles, *probe.shape)).copy(),
                          extra=extra)
    write_projections(plan.dataset_dir / "true_projections.h5", truth)
    _write_ground_truth(cfg, plan, volume, occupancy)
    (plan.dataset_dir / INCOMPLETE_MARKER).unlink()  # every file of the dataset is there
    if s.write_projections:
        measured = _noisy(all_proj if drifted is None else drifted, s.projection_noise,
                          s.seed)
        if with_errors:
            measured = np.stack([p + sim.linear_phase(plan.projection_shape, off, ramp)
                                 for p, off, ramp in zip(measured, *errors, strict=True)]
                                ).astype(np.float32)
        run_dir = Path(cfg.output.dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_projections(run_dir / "projections.h5",
                          ProjectionSet(projections=measured, angles_deg=plan.angles_deg,
                                        tilt_deg=s.tilt_deg, pixel_size_m=s.voxel_size_m))


def _write_ground_truth(cfg: Config, plan: SimulationPlan, volume: np.ndarray,
                        occupancy: np.ndarray) -> None:
    """``ground_truth.h5``: the region's volume, occupancy and circuit; for an extended
    sample also the widened slab's occupancy (uint8, ``/extended_occupancy``) and the attrs
    ``sample`` and ``lateral_margin_px`` (the region is ``[:, m:m + ny, m:m + nx]``)."""
    s = cfg.simulate
    attrs = {"phantom": plan.phantom_kind, "energy_ev": s.energy_ev, "tilt_deg": s.tilt_deg}
    extras = {}
    if s.sample == "extended":
        attrs.update(sample=s.sample, lateral_margin_px=plan.margin_px)
        extras[EXTENDED_OCCUPANCY] = (occupancy >= 0.5).astype(np.uint8)
    write_ground_truth(plan.dataset_dir / "ground_truth.h5", plan.region(volume),
                       (plan.region(occupancy) >= 0.5).astype(np.uint8), s.voxel_size_m,
                       attrs=attrs, circuit=build_circuit_truth(cfg, plan), extras=extras)


def phase_errors(n_angles: int, offset_rad: float, ramp_rad: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per-angle phase offsets ``[n_angles]`` uniform in ``[-offset_rad, offset_rad]`` and
    ramps ``[n_angles, 2]`` (row, col; centre-to-edge change) uniform in
    ``[-ramp_rad, ramp_rad]``, rad, from one stream of ``seed`` (no rank dependence)."""
    rng = np.random.default_rng([seed, 0x0FF5E7])  # a stream apart from the others
    draws = rng.uniform(-1.0, 1.0, (n_angles, 3))
    return draws[:, 0] * offset_rad, draws[:, 1:] * ramp_rad


def drift_shifts(n_angles: int, sigma_px: float, seed: int) -> np.ndarray:
    """Per-angle rigid shifts ``[n_angles, 2]`` (row, col) px: normal, clipped at 3 sigma."""
    rng = np.random.default_rng([seed, 0xD81F7])
    return np.clip(rng.standard_normal((n_angles, 2)) * sigma_px, -3 * sigma_px, 3 * sigma_px)


def _noisy(projections: np.ndarray, relative_std: float, seed: int) -> np.ndarray:
    """``projections`` plus Gaussian noise of ``relative_std`` times their RMS (float32)."""
    if relative_std == 0:
        return projections
    rng = np.random.default_rng([seed, 0x9E3779B9])  # a stream apart from the scans' noise
    rms = float(np.sqrt(np.mean(projections.astype(np.float64) ** 2)))
    noise = rng.standard_normal(projections.shape) * (relative_std * rms)
    return (projections + noise).astype(np.float32)


def _remove_stale_scans(directory: Path, n_angles: int) -> None:
    """Drop scan files of an earlier, larger simulation into the same directory."""
    for path in directory.glob("scan_*.cxi"):
        match = _SCAN_RE.match(path.name)
        if match and int(match.group(1)) >= n_angles:
            log.warning("removing stale %s from an earlier simulation", path.name)
            path.unlink()
