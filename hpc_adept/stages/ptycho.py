"""``adept ptycho``: LSQ-ML reconstruction of every scan, gathered into ``projections.h5``.

The data set (``data.path``) is our CXI dataset or any diffraction format of
:mod:`hpc_adept.io.formats` (read through a :class:`~hpc_adept.io.formats.source.ScanSource`:
headers for the plan, each scan's counts when a rank takes it). With ``data.format`` a
projection format (projections reconstructed elsewhere), the stage only imports them into
``projections.h5`` (:class:`ImportPlan`, no LSQ-ML), so that ``adept run`` goes on to
align and recon.

Rank 0 lists the dataset (headers only) and every rank checks the same list; ranks then
take scans first come, first served (:class:`~hpc_adept.parallel.workqueue.DynamicQueue`),
each on its own GPU or CPU. Each finished scan is kept in ``output.dir/ptycho/`` at once,
keyed by a hash of its input file and the ptycho settings, so a rerun after a crash skips
the finished scans. Finally rank 0 assembles ```projections.h5`` in angle order: the file
does not depend on which rank did which scan. The amplitude images stay in the per-scan
files (``/amplitude``). Each projection's constant and linear phase are removed as
``ptycho.phase_reference`` says, one reference for the whole data set (``auto`` decides at
the assembly), and ``/phase_offset_arbitrary`` tells the later stages whether they are
left arbitrary (docs/formats.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hpc_adept import timing
from hpc_adept.backend import array_module, to_numpy
from hpc_adept.config import Config, DataConfig, PtychoConfig
from hpc_adept.errors import DataError
from hpc_adept.io import (
    ProjectionSet,
    Scan,
    read_cxi,
    write_projections,
)
from hpc_adept.io.atomic import write_h5_atomic
from hpc_adept.io.cxi import TRANSLATION
from hpc_adept.io.formats.detect import PROJECTION_FORMATS
from hpc_adept.io.formats.source import (
    ScanSource,
    check_unused,
    data_format,
    read_projections_of,
    reader_options,
)
from hpc_adept.io.h5read import open_h5, read_array, read_scalar_attr
from hpc_adept.log import Progress
from hpc_adept.parallel import ParallelContext, barrier, block_range, first_failure
from hpc_adept.parallel.workqueue import DynamicQueue

log = logging.getLogger(__name__)

SCAN_RESULT = "scan_{:04d}.h5"
# Scalars of a scan's result kept as its file's attributes (the rest are datasets).
SCAN_ATTRS = ("iterations", "phase_offset_arbitrary", "background_level", "background_below",
              "background_sharpness", "background_trusted")
# projections.h5's per-angle record of the phase reference (docs/formats.md)
OFFSET_ARBITRARY = "phase_offset_arbitrary"

# A scan's projection field may be at most this many times the area its frames cover
# (positions x frame pixels): overlapping raster scans stay far below 1, a scan without
# overlap whose positions all lie on one side of the centre reaches about 4. More means a
# few positions far from the others (a unit or encoder error), which would blow the field
# (and the work and the files) up by orders of magnitude.
MAX_FIELD_COVERAGE = 16.0
# Memory of one rank's LSQ-ML (calibration-free upper estimates): about six complex64
# object-sized arrays (object, update, momentum, illumination sums, phase/amplitude out),
# and the counts held three times (host read, device copy, amplitudes).
LSQML_BYTES_PER_OBJECT_PX = 64
LSQML_BYTES_PER_COUNT = 12
BASE_BYTES = 512 * 2**20  # interpreter, torch, MPI, buffers


@dataclass(frozen=True)
class PtychoPlan:
    """The scans to reconstruct and where their results go; checked before any work."""

    scans: tuple[Scan, ...]
    field_shape: tuple[int, int]
    object_pixel_m: float
    run_dir: Path
    cache_dir: Path
    settings_key: str
    margin_px: int  # object pixels LSQ-ML adds around the field and a frame, per side
    device_choice: str = "auto"
    keep_host_memory: bool = True
    memory_guard: bool = True
    source: ScanSource | None = None  # None: our CXI dataset (each scan's path)

    def validate(self, ctx: ParallelContext, device: object) -> None:
        """Check every scan's counts and the memory before any work (collective).

        Raises the same DataError on every rank, so the job stops with one message and
        writes nothing.
        """
        def local_checks() -> str | None:
            # runtime.device: cuda means LSQ-ML on the GPU (CuPy computes) or one error line
            array_module(device, required=self.device_choice == "cuda")
            for index in block_range(len(self.scans), ctx.size, ctx.rank):
                try:
                    self.scan_source.check(self.scans[index])
                except DataError:
                    raise
                except Exception as exc:  # name the scan of an unexpected failure
                    return f"{self.scans[index].path}: {type(exc).__name__}: {exc}"
            return self._memory_problem(ctx) if self.memory_guard else None

        problem = first_failure(ctx, local_checks)
        if problem is not None:
            raise DataError(problem)

    @property
    def scan_source(self) -> ScanSource:
        """Where the scans' counts are read (our CXI dataset when none was given)."""
        if self.source is not None:
            return self.source
        return ScanSource(Path(self.scans[0].path).parent, "adept-cxi")

    def load(self, index: int) -> Scan:
        """Scan ``index`` with its counts."""
        if self.scan_source.ours:
            return read_cxi(self.scans[index].path)  # looked up here: tests wrap it
        return self.scan_source.load(self.scans[index])

    def _memory_problem(self, ctx: ParallelContext) -> str | None:
        """Why this rank's LSQ-ML (and rank 0's assembly) would not fit, or None."""
        from hpc_adept.backend import (
            MEMORY_GUARD_HINT,
            memory_shortfall,
            peak_memory_bytes,
            select_torch_device,
        )

        nv, nu = self.field_shape
        n_frame = self.scans[0].frame_shape[0]
        largest = max(self.scans, key=lambda scan: scan.n_positions)
        # the object grid: the field plus a frame and LSQ-ML's padding around it
        grid = (nv + n_frame + 2 * self.margin_px) * (nu + n_frame + 2 * self.margin_px)
        device_part = (LSQML_BYTES_PER_OBJECT_PX * grid
                       + LSQML_BYTES_PER_COUNT * largest.n_positions * n_frame**2)
        # rank 0 gathers every phase image and probe into projections.h5
        host_part = BASE_BYTES + (8 * nv * nu + 16 * n_frame**2) * len(self.scans)
        device = select_torch_device(self.device_choice, ctx.local_rank)
        needs = [(device_part, device)] if device.type == "cuda" else []
        host_need = host_part if needs else host_part + device_part
        needs.append((peak_memory_bytes(host_need, torch_cpu(), self.keep_host_memory),
                       torch_cpu()))
        for need, where_device in needs:
            shortfall = memory_shortfall("ptycho", need, where_device, ctx.local_size)
            if shortfall:
                return (f"{shortfall}, for a {nv} x {nu} projection field "
                        f"({largest.n_positions} positions in {Path(largest.path).name}); "
                        f"set a smaller ptycho.projection_shape, use fewer ranks per node "
                        f"or larger nodes{MEMORY_GUARD_HINT}")
        return None


def torch_cpu() -> Any:
    """The torch CPU device (host memory)."""
    import torch

    return torch.device("cpu")


def _positions_px(scan: Scan) -> np.ndarray:
    """(row, col) probe offsets in object pixels from the translations in metres."""
    dy, dx = scan.object_pixel_size_m
    return np.stack([scan.positions_m[:, 1] / dy, scan.positions_m[:, 0] / dx], axis=1)


def _field_of(extent_px: np.ndarray) -> tuple[int, int]:
    """Even grid holding center-relative offsets up to ``extent_px`` (row, col)."""
    return (2 * math.floor(extent_px[0]) + 2, 2 * math.floor(extent_px[1]) + 2)


def check_positions(scan: Scan) -> None:
    """DataError naming the scan when a few positions lie far outside the others.

    The scan's own projection field (what :func:`auto_field_shape` makes of it) may cover
    at most ``MAX_FIELD_COVERAGE`` times the area its frames illuminate.
    """
    pos = np.abs(_positions_px(scan))
    nv, nu = _field_of(pos.max(axis=0))
    ny, nx = scan.frame_shape
    covered = scan.n_positions * ny * nx
    if nv * nu <= MAX_FIELD_COVERAGE * covered:
        return
    # name the position farthest from the others (in frames from the median)
    spread = np.abs(_positions_px(scan) - np.median(_positions_px(scan), axis=0))
    worst = int(np.argmax((spread / np.array([ny, nx])).max(axis=1)))
    x, y = scan.positions_m[worst, 0], scan.positions_m[worst, 1]
    raise DataError(
        f"{scan.path}: {TRANSLATION}: position {worst} (x {x:.3g} m, y {y:.3g} m) lies far "
        f"outside the others: the projection field would be {nv} x {nu} pixels, "
        f"{nv * nu / covered:.0f} times the area the {scan.n_positions} frames cover; "
        f"check the positions (units, encoder glitches)")


def auto_field_shape(scans: tuple[Scan, ...]) -> tuple[int, int]:
    """Smallest even projection grid whose center-relative extent holds every position."""
    extent = np.zeros(2)
    for scan in scans:
        extent = np.maximum(extent, np.abs(_positions_px(scan)).max(axis=0))
    return _field_of(extent)


@dataclass(frozen=True)
class ImportPlan:
    """Projections reconstructed elsewhere (``data.format`` a projection format), imported
    as ``projections.h5`` without LSQ-ML."""

    data: DataConfig
    fmt: str
    run_dir: Path
    read: dict[str, ProjectionSet] = field(default_factory=dict, compare=False)

    def validate(self, ctx: ParallelContext, device: object) -> None:
        """Rank 0 reads and checks the projections (collective; one DataError line)."""
        def local_checks() -> None:
            if ctx.is_root:
                self.read["projections"] = read_projections_of(self.data, self.fmt)

        problem = first_failure(ctx, local_checks)
        if problem is not None:
            raise DataError(problem)

    def projections(self) -> ProjectionSet:
        """The projection set (read in :meth:`validate`, or now)."""
        if "projections" not in self.read:
            self.read["projections"] = read_projections_of(self.data, self.fmt)
        return self.read["projections"]


def plan_ptycho(cfg: Config) -> PtychoPlan | ImportPlan:
    """List and validate the dataset headers (no work, no output)."""
    fmt = data_format(cfg.data)
    if fmt in PROJECTION_FORMATS:
        if cfg.data.laminography_angle_deg is None:
            raise DataError(f"data.laminography_angle_deg is not set: {fmt} files do not "
                            f"record the laminography angle")
        return ImportPlan(cfg.data, fmt, Path(cfg.output.dir))
    check_unused(cfg.data, fmt)
    source = ScanSource(Path(cfg.data.path), fmt, reader_options(cfg.data))  # type: ignore[arg-type]
    scans = tuple(source.headers())
    ny, nx = scans[0].frame_shape
    if ny != nx or ny % 2:
        raise DataError(f"{scans[0].path}: frames of {ny} x {nx} pixels are not supported "
                        f"(LSQ-ML needs square frames of an even size)")
    pixel = scans[0].object_pixel_size_m
    if not math.isclose(pixel[0], pixel[1], rel_tol=1e-6):
        raise DataError(f"{scans[0].path}: non-square object pixels {pixel} are not supported")
    for scan in scans:
        if scan.probe is not None and scan.probe.shape != scan.frame_shape:
            raise DataError(f"{scan.path}: probe shape {scan.probe.shape} != frame shape")
        if cfg.ptycho.initial_probe == "file" and scan.probe is None:
            raise DataError(f"{scan.path}: no probe stored (/entry_1/instrument_1/source_1/"
                            f"probe) but ptycho.initial_probe is 'file'")
    if cfg.ptycho.projection_shape is None:  # positions far off would set a huge field
        for scan in scans:
            check_positions(scan)
    shape = cfg.ptycho.projection_shape or auto_field_shape(scans)
    # how the frames are read counts too (data.format, orientation, ROI, supplied values);
    # where the data set lies does not (the files' identities are in each scan's key)
    reading = {k: v for k, v in asdict(cfg.data).items() if k != "path"}
    settings = json.dumps([asdict(cfg.ptycho), reading], sort_keys=True, default=str) \
        + f"|seed={cfg.runtime.seed}"
    key = hashlib.sha256(settings.encode()).hexdigest()[:16]
    run_dir = Path(cfg.output.dir)
    margin = cfg.ptycho.padding_px + 2  # 2 more with position correction (reconstruct())
    return PtychoPlan(scans, tuple(shape), float(pixel[0]), run_dir, run_dir / "ptycho", key,
                      margin, cfg.runtime.device, cfg.runtime.keep_host_memory,
                      cfg.runtime.memory_guard, None if source.ours else source)


def _input_key(plan: PtychoPlan, scan: Scan) -> str:
    """Identity of one scan's input and settings: a changed file or config redoes it.

    The header's values count too: another program's frames' file may keep its positions
    and energy in a second file (fold_slice's ``_para.hdf5``, ptychodus's product) or
    take them from ``data.*``.
    """
    stat = os.stat(scan.path)
    header = hashlib.sha256(np.ascontiguousarray(scan.positions_m, np.float64).tobytes())
    header.update(repr((scan.energy_j, scan.distance_m, scan.x_pixel_size_m,
                        scan.y_pixel_size_m, scan.rotation_angle_deg,
                        scan.laminography_angle_deg)).encode())
    text = f"{plan.settings_key}|{plan.field_shape}|{Path(scan.path).name}|" \
           f"{stat.st_size}|{stat.st_mtime_ns}|{header.hexdigest()}"
    return hashlib.sha256(text.encode()).hexdigest()


def read_scan_result(path: Path, field_shape: tuple[int, int],
                     frame_shape: tuple[int, int]) -> dict[str, Any]:
    """Read and validate one per-scan result file (``ptycho/scan_NNNN.h5``).

    Returns
    -------
    dict
        ``phase`` float32 ``field_shape`` (and ``phase_plane`` when stored:
        ``ptycho.phase_reference: auto``), ``probe`` complex64 ``frame_shape``,
        ``fourier_error`` float64 ``[iterations]`` (all finite), ``iterations`` (int) and
        the phase reference's attributes (``SCAN_ATTRS``, floats).

    Raises
    ------
    DataError
        One line naming the file and dataset: missing/corrupt file or dataset, wrong
        dtype or shape, NaN/Inf.
    """
    with open_h5(path) as f:
        out: dict[str, Any] = {
            "phase": read_array(f, "phase", path, ndim=2, dtype=np.float32,
                                expected=field_shape),
            "probe": read_array(f, "probe", path, ndim=2, dtype=np.complex64,
                                kind="complex", expected=frame_shape),
            "fourier_error": read_array(f, "fourier_error", path, ndim=1,
                                        dtype=np.float64),
        }
        if "phase_plane" in f:
            out["phase_plane"] = read_array(f, "phase_plane", path, ndim=2,
                                            dtype=np.float32, expected=field_shape)
        for name in SCAN_ATTRS[1:]:
            out[name] = read_scalar_attr(f, name, path)
        iterations = read_scalar_attr(f, "iterations", path, positive=True)
    if len(out["fourier_error"]) != int(iterations):
        raise DataError(f"{path}: fourier_error holds {len(out['fourier_error'])} values for "
                        f"{int(iterations)} iterations")
    out["iterations"] = int(iterations)
    return out


def _cached(path: Path, key: str, field_shape: tuple[int, int],
            frame_shape: tuple[int, int]) -> bool:
    """Whether ``path`` holds a valid result of this scan's input and settings."""
    if not path.is_file():
        return False
    try:
        with open_h5(path) as f:
            if f.attrs.get("input_key") != key:
                return False
        # Why validate it all: a damaged file (killed writer, disk trouble, an edit) would
        # otherwise fail only in the assembly, after all the work.
        read_scan_result(path, field_shape, frame_shape)
    except DataError as exc:
        log.warning("ptycho: recomputing the scan of %s (%s)", path.name, exc)
        return False
    return True


def reconstruct_scan(cfg: Config, plan: PtychoPlan, index: int, device: object,
                     scan: Scan) -> dict:
    """LSQ-ML of scan ``index`` (``scan``, as read from its file) and its phase
    projection; host arrays."""
    from hpc_adept.ptycho import reconstruct

    xp = array_module(device, required=cfg.runtime.device == "cuda")
    seed = scan_seed(cfg.runtime.seed, index)
    mask = None if scan.mask is None else xp.asarray(scan.mask)
    counts = xp.asarray(scan.counts)
    with timing.region("ptycho/probe_init", device):
        probe = initial_probe(cfg.ptycho, scan, counts, plan.field_shape, mask, xp, seed)
    with timing.region("ptycho/lsqml", device):
        result = reconstruct(counts, _positions_px(scan), plan.field_shape,
                             cfg.ptycho, probe=probe, mask=mask, xp=xp, seed=seed)
    errors = np.asarray(to_numpy(result.fourier_error), dtype=np.float64)
    if not np.all(np.isfinite(errors)):
        raise DataError(f"{scan.path}: LSQ-ML diverged (non-finite Fourier error at "
                        f"iteration {int(np.argmin(np.isfinite(errors)))})")
    probe_out = to_numpy(result.probe)
    return {
        **phase_images(result, cfg.ptycho.phase_reference),
        "probe": np.asarray(probe_out[0], dtype=np.complex64),
        "fourier_error": errors,
        "positions_px": np.asarray(to_numpy(result.positions_px), dtype=np.float64),
        "iterations": int(result.iterations),
    }


def phase_images(result: Any, reference: str) -> dict[str, Any]:
    """A scan's phase projection(s) (``ptycho.phase_reference``) for its result file.

    ``phase`` float32 [nv, nu] (with ``auto``: referenced to the background, the vacuum
    fit), ``amplitude``, and with ``auto`` also ``phase_plane`` (the ``plane`` reference):
    the assembly picks one of them for every scan (:func:`dataset_reference`). The
    scalars ``phase_offset_arbitrary`` (1.0 when ``phase``'s offset and ramp carry no
    information), ``background_level``, ``background_below``, ``background_sharpness``
    (the evidence of ``auto``'s rule) go into the file's attributes.
    """
    from hpc_adept.ptycho.phase import extract_phase, trusts_background

    host = result.to_host()
    first = "vacuum" if reference == "auto" else reference
    out = extract_phase(host, reference=first)  # type: ignore[arg-type]
    images: dict[str, Any] = {"phase": out.phase, "amplitude": out.amplitude}
    if reference == "auto":
        images["phase_plane"] = extract_phase(host, reference="plane").phase
    level = out.background
    images.update({"phase_offset_arbitrary": float(out.offset_arbitrary),
                   "background_level": level.level, "background_below": level.below,
                   "background_sharpness": level.sharpness,
                   "background_trusted": float(trusts_background(level))})
    return images


def scan_seed(seed: int, index: int) -> int:
    """LSQ-ML batch seed of scan ``index`` from ``runtime.seed``: one stream per scan, the
    same whichever rank does it."""
    return seed * 100_003 + index


def initial_probe(p: PtychoConfig, scan: Scan, counts: Any, field_shape: tuple[int, int],
                  mask: Any, xp: Any, seed: int) -> Any | None:
    """The probe LSQ-ML starts from (``ptycho.initial_probe``); None = its own default."""
    from hpc_adept.ptycho import probe_from_scan

    if scan.probe is not None and p.initial_probe in ("auto", "file"):
        return xp.asarray(scan.probe)
    if p.initial_probe in ("auto", "fitted"):
        return probe_from_scan(counts, _positions_px(scan), field_shape, mask,
                               options=p, seed=seed)
    return None  # mean_pattern: reconstruct() back-propagates the mean pattern


def run_ptycho(cfg: Config, ctx: ParallelContext, plan: PtychoPlan | ImportPlan,
               device: object) -> None:
    """Run the stage on all ranks."""
    if isinstance(plan, ImportPlan):
        _import_projections(ctx, plan)
        return
    t0 = time.perf_counter()
    n_scans = len(plan.scans)
    if ctx.is_root:
        _prepare_cache(plan)
        log.info("ptycho: %d scans, frames %s, field %s, %d LSQ-ML iterations each, %d rank(s)",
                 n_scans, list(plan.scans[0].frame_shape), list(plan.field_shape),
                 cfg.ptycho.iterations, ctx.size)
    barrier(ctx)
    progress = Progress(n_scans, "scans taken", log)
    done_here = reused = 0
    keys = {}

    def needs_work(index: int) -> bool:
        keys[index] = _input_key(plan, plan.scans[index])
        return not _cached(plan.cache_dir / SCAN_RESULT.format(index), keys[index],
                           plan.field_shape, plan.scans[index].frame_shape)

    def read_ahead_ok() -> bool:
        # only while >= one unclaimed scan per rank remains (a fresh count from rank 0): a
        # rank holding two scans must not leave another without work at the end
        return cfg.runtime.read_ahead and queue.remaining() >= ctx.size

    def read(index: int) -> list[Scan]:
        # in a box, so that taking the scan out releases it (the future keeps the box)
        return [plan.load(index)]

    def work_on(index: int, pending: Future) -> None:
        t_scan = time.perf_counter()
        with timing.region("ptycho/read"):  # only what the read-ahead did not hide
            scan = pending.result().pop()
        res = reconstruct_scan(cfg, plan, index, device, scan)
        del scan  # the frames, before the next scan's arrive
        with timing.region("ptycho/write"):
            write_h5_atomic(
                plan.cache_dir / SCAN_RESULT.format(index),
                {k: np.asarray(v) for k, v in res.items() if k not in SCAN_ATTRS},
                attrs={"input_key": keys.pop(index),
                       "source": Path(plan.scans[index].path).name,
                       "rotation_angle_deg": plan.scans[index].rotation_angle_deg,
                       **{k: res[k] for k in SCAN_ATTRS},
                       "seconds": time.perf_counter() - t_scan},
            )

    reader = ThreadPoolExecutor(1, thread_name_prefix="adept-read")
    try:
        with DynamicQueue(ctx, n_scans) as queue:
            for index, pending in _with_read_ahead(queue, needs_work, read_ahead_ok,
                                                   lambda i: reader.submit(read, i)):
                if pending is None:
                    keys.pop(index)
                    reused += 1
                else:
                    work_on(index, pending)
                    done_here += 1
                if ctx.is_root:
                    progress.done = queue.claimed()
                    progress.update(0, extra=f"scans done on rank 0: {done_here + reused}")
    except BaseException:
        # Why not `with reader`: its exit waits for a read in progress. On a failure the
        # exception must reach the CLI's abort at once (no rank waits in a collective or
        # a read; DynamicQueue does not close on an exception either).
        reader.shutdown(wait=False, cancel_futures=True)
        raise
    reader.shutdown()
    with timing.region("ptycho/wait"):  # ranks idle while the last scans finish
        total_reused = _sum(ctx, reused)
    if ctx.is_root:
        _assemble(plan, cfg, total_reused, t0)
    barrier(ctx)
    release_cupy_pool()


def release_cupy_pool() -> None:
    """Hand the blocks CuPy's memory pools keep back to the driver (when CuPy was used):
    the stages after this one allocate through PyTorch, and their memory guards see the
    pool's blocks as used (``cudaMemGetInfo``)."""
    import sys

    cupy = sys.modules.get("cupy")
    if cupy is None:
        return
    # cached cuFFT plans hold work areas in the pool (the cache of this thread and device:
    # the stage's FFTs ran there)
    cupy.fft.config.get_plan_cache().clear()
    cupy.get_default_memory_pool().free_all_blocks()
    cupy.get_default_pinned_memory_pool().free_all_blocks()


def _import_projections(ctx: ParallelContext, plan: ImportPlan) -> None:
    """Rank 0 writes the imported projections as ``projections.h5``."""
    if ctx.is_root:
        ps = plan.projections()
        if OFFSET_ARBITRARY not in ps.extra:
            # reconstructed elsewhere: whatever offset and ramp they keep, nothing says they
            # are referenced to a background (complex objects lose a least-squares plane)
            ps = replace(ps, extra={**ps.extra, OFFSET_ARBITRARY: np.ones(ps.n_angles)})
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        write_projections(plan.run_dir / "projections.h5", ps)
        log.info("ptycho: imported %d %s projections of %s into %s (no LSQ-ML)",
                 ps.n_angles, plan.fmt, plan.data.path, plan.run_dir / "projections.h5")
    barrier(ctx)


def _prepare_cache(plan: PtychoPlan) -> None:
    """Create the per-scan result directory; remove temporaries of a killed earlier run."""
    plan.cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in plan.cache_dir.glob(".scan_*.tmp"):
        stale.unlink()


def _assemble(plan: PtychoPlan, cfg: Config, total_reused: int, t0: float) -> None:
    """Rank 0's end of the stage: ``projections.h5`` from the per-scan results."""
    if total_reused:
        log.info("ptycho: reused %d finished scan(s) from %s", total_reused, plan.cache_dir)
    with timing.region("ptycho/assemble"):
        assemble_projections(plan, cfg)
    log.info("ptycho: wrote %s in %.1f s", plan.run_dir / "projections.h5",
             time.perf_counter() - t0)


def _with_read_ahead(queue: DynamicQueue, needs_work: Callable[[int], bool],
                     read_ahead_ok: Callable[[], bool],
                     start_read: Callable[[int], Future]
                     ) -> Iterator[tuple[int, Future | None]]:
    """Yield this rank's scans as (index, read in progress, or None for a finished scan).

    When ``read_ahead_ok()`` as a scan to work on is yielded, the next scan is claimed and
    its read started first, so that it overlaps the work on the yielded one.
    """
    def claim() -> tuple[int | None, Future | None]:
        index = queue.take()
        if index is None:
            return None, None
        return index, (start_read(index) if needs_work(index) else None)

    index, pending = claim()
    while index is not None:
        ahead = claim() if pending is not None and read_ahead_ok() else None
        yield index, pending
        index, pending = ahead if ahead is not None else claim()


def _sum(ctx: ParallelContext, value: int) -> int:
    if not ctx.is_parallel:
        return value
    return int(sum(ctx.comm.allgather(value)))


def assemble_projections(plan: PtychoPlan, cfg: Config) -> None:
    """Read the per-scan results in angle order and write ``projections.h5`` (rank 0).

    With ``ptycho.phase_reference: auto`` both phase images of every scan are held (8 bytes
    per pixel and scan, as the memory guard counts) until :func:`dataset_reference` picks
    one for all.
    """
    n = len(plan.scans)
    nv, nu = plan.field_shape
    phases = {"phase": np.empty((n, nv, nu), np.float32)}
    if cfg.ptycho.phase_reference == "auto":
        phases["phase_plane"] = np.empty((n, nv, nu), np.float32)
    scalars: list[dict[str, Any]] = []
    probes = None
    for i in range(n):
        path = plan.cache_dir / SCAN_RESULT.format(i)
        try:
            res = read_scan_result(path, (nv, nu), plan.scans[i].frame_shape)
            missing = [f"/{key}" for key in phases if key not in res]
            if missing:
                raise DataError(f"{path}: {missing[0]}: missing dataset")
        except DataError as exc:  # damaged after this run checked it
            raise DataError(f"{exc}; run adept ptycho again to recompute the scan") from None
        for key, stack in phases.items():
            stack[i] = res[key]
        if probes is None:
            probes = np.empty((n, *res["probe"].shape), np.complex64)
        probes[i] = res["probe"]
        scalars.append({k: v for k, v in res.items() if k in SCAN_ATTRS}
                       | {"fourier_error": res["fourier_error"][-1]})
    reference = dataset_reference(cfg.ptycho.phase_reference, scalars)
    if cfg.ptycho.phase_reference == "auto":
        log.info("ptycho: phase reference %s (phase_reference auto: %d of %d scans hold a "
                 "flat background level)", reference,
                 sum(r["background_trusted"] > 0 for r in scalars), n)
    chosen = phases.pop("phase_plane" if reference == "plane" and len(phases) == 2
                        else "phase")
    phases.clear()  # the other reference's images, before the file is written
    extra = {name: np.array([r[name] for r in scalars], dtype=np.float64)
             for name in ("fourier_error", "iterations")}
    extra[OFFSET_ARBITRARY] = np.full(n, float(reference == "plane"))
    for name in ("background_level", "background_below", "background_sharpness"):
        extra[f"phase_{name}"] = np.array([r[name] for r in scalars])  # auto's evidence
    angles = np.array([s.rotation_angle_deg for s in plan.scans], dtype=np.float64)
    ps = ProjectionSet(projections=chosen, angles_deg=angles,
                       tilt_deg=plan.scans[0].laminography_angle_deg,
                       pixel_size_m=plan.object_pixel_m, probes=probes, extra=extra)
    write_projections(plan.run_dir / "projections.h5", ps)


def dataset_reference(setting: str, results: list[dict[str, Any]]) -> str:
    """The phase reference of the whole data set: ``setting`` unless ``auto``, then
    ``vacuum`` when every scan's field holds a trusted background level
    (``background_trusted``), else ``plane`` (one reference for all projections, so that
    the later stages fit every projection's offset and ramp or none)."""
    if setting != "auto":
        return setting
    return "vacuum" if all(r["background_trusted"] > 0 for r in results) else "plane"
