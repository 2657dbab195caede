"""Run configuration: frozen dataclasses per section, YAML loading, ``--set`` overrides.

The configuration is a YAML mapping of sections (``data``, ``output``, ``simulate``,
``ptycho``, ``align``, ``recon``, ``dip``, ``evaluate``, ``runtime``). Every key is checked
against the dataclass fields below: an unknown key, a value of the wrong type or out of
range stops the program with one :class:`~hpc_adept.errors.ConfigError` line naming the
key, before any work. Integer settings have upper bounds (``MAX_SIDE`` and the other
``MAX_*`` constants below) far beyond any feasible run, so that a typo stops here rather
than deep in numpy or torch. Relative paths are taken relative to the working directory.

Example::

    cfg = load_config("jobs/configs/demo.yaml", overrides=["dip.iterations=50"])
    cfg.simulate.volume_shape  # (nz, ny, nx)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hpc_adept.errors import ConfigError
from hpc_adept.lamino.geometry import tilt_problem

IC_DATA_DIR = "../shared/data/ic"

FftLibrary = Literal["torch", "scipy"]
"""Host FFT libraries of the ptychography kernels (``ptycho.fft_library``)."""

# Upper bounds of integer settings. They lie far beyond any run this code can do (the
# paper: 144 x 160 x 160 voxels, 125 angles, 512 x 512 frames) and stop a typo with one line
# before numpy or torch fail on it (an integer overflow, an allocation of exabytes).
MAX_SIDE = 16_384
"""Voxels or pixels along one axis (volumes, projections, frames, crops, strides, shifts)."""
MAX_VOXELS = 2**34
"""Voxels of one volume (64 GiB as float32)."""
MAX_ANGLES = 100_000
"""Rotation angles of a simulated measurement."""
MAX_SUPERSAMPLE = 64
"""Sub-voxels per axis of the layout rasterisation."""
MAX_CHANNELS = 4096
"""Feature channels of one DIP network level."""
MAX_THREADS = 4096
"""CPU threads per rank."""
MAX_COUNT = 10_000_000
"""Any other count: iterations, batch sizes, modes, samples, levels, intervals."""
MAX_SEED = 2**32 - 1
"""Seeds lie in [0, MAX_SEED]: the range of numpy's legacy ``RandomState``, which
scikit-learn's ``random_state`` (the evaluation's mixture fits) is; numpy's ``default_rng``
and torch accept it too, with room for the offsets the stages add."""


DataFormat = Literal["auto", "adept-cxi", "cxi", "foldslice-prepared", "ptychodus-diffraction",
                     "lamni-eiger", "lamni-tomo", "ptychoshelves-prepared", "velociprobe",
                     "ptychoshelves-recons", "foldslice-niter",
                     "ptychodus-product", "tiff-stack"]
"""``data.format``: ``auto`` or a format of :mod:`hpc_adept.io.formats` (its ``FORMATS``)."""
AngleConvention = Literal["adept", "ptychoshelves", "tike", "tomocupy"]
"""Angle conventions of :mod:`hpc_adept.io.formats.geometry` (its ``CONVENTIONS``)."""
CxiTranslation = Literal["auto", "probe", "sample"]
"""What a foreign CXI file's ``translation`` holds (``data.cxi_translation``)."""


@dataclass(frozen=True)
class DataConfig:
    """Input dataset, in our CXI layout or another program's (docs/formats.md).

    Values a beamline file lacks are supplied here; ``None`` = not supplied (the file must
    then record it). A value both recorded and supplied must agree.

    Attributes
    ----------
    path : str or None
        Dataset: a directory of our CXI files (one per rotation angle, DESIGN section 4,
        written by ``adept simulate``), or a file or directory in ``format``. Read by
        ``adept ptycho``.
    format : str
        ``auto`` (detected from names and HDF5 keys; refuses to guess), a diffraction
        format (``adept-cxi``, ``cxi``, ``foldslice-prepared``, ``ptychodus-diffraction``,
        ``lamni-eiger``, ``lamni-tomo``, ``ptychoshelves-prepared``, ``velociprobe``:
        ``adept ptycho`` reconstructs it) or a projection format
        (``ptychoshelves-recons``, ``foldslice-niter``, ``ptychodus-product``,
        ``tiff-stack``: ``adept ptycho`` only imports the projections, no LSQ-ML).
    energy_ev : float or None, eV
        Photon energy.
    distance_m : float or None, m
        Sample-detector distance.
    detector_pixel_m : float or None, m
        Detector pixel size (square pixels).
    laminography_angle_deg : float or None, deg (in ``angle_convention``)
        Angle between beam and rotation axis (ours and PtychoShelves': 90 = tomography).
    rotation_angles_deg : list of float or None, deg (in ``angle_convention``)
        One rotation angle per scan (files in name order) or per projection.
    angles_path : str or None
        Text file of those rotation angles (one per line, ``#`` comments); instead of
        ``rotation_angles_deg``; required for ``tiff-stack``.
    positions_path : str or None
        Scan positions where the frames' file has none: the ptychodus product file (default:
        the ``*product*`` file beside it), LamNI's Orchestra ``.dat`` file or the
        beamline's spec data file (``lamni-eiger``), the Velociprobe position CSV.
    spec_motors : (str, str)
        ``lamni-eiger`` with a spec data file as ``positions_path``: the columns holding x
        then y, in micrometres (fold_slice's ``p.spec.motor.fine_motors`` in reverse: it
        lists y first, ``{'py', 'px'}``; its ``fine_motors_scale`` other than 1e-6 is not
        supported).
    angle_convention : str or None
        Convention of the files' and the supplied angles (``adept``, ``ptychoshelves`` =
        fold_slice / pyxalign, ``tike``, ``tomocupy``); None = the format's own. A TIFF
        stack in tike's or tomocupy's convention is also moved from their centres onto
        ours (docs/formats.md, "Centres").
    foldslice_orientation : (int, int, int)
        fold_slice's ``det.orientation`` (transpose, fliplr, flipud) of its prepared data:
        ``[1, 0, 0]`` for Eiger detectors, ``[0, 0, 0]`` for EMPAD.
    roi_label : str or None
        ``foldslice-prepared``: the ``<label>`` of the ``data_roi<label>_dp.hdf5`` files to
        read (fold_slice's ``roi_label``, e.g. ``0_Ndp128``) where a scan folder holds
        several preparations; None: one per folder.
    cxi_translation : {'auto', 'probe', 'sample'}
        ``cxi`` (other programs' CXI files): what ``translation`` holds. ``sample``: the
        sample's translation, as the CXI spec defines it (the probe position on the sample
        is its negative; CDTools writes them so); ``probe``: the probe position (ptychodus
        writes and reads them so, and so do our own CXI files); ``auto``: ``probe`` for a
        file that ptychodus wrote (its ``/entry_1/ptychodus`` group or
        ``process_1/program``) or one laid out as ours (our geometry keys), else ``sample``
        (with a warning).
    roi_px : int or None, pixels
        ``lamni-eiger``, ``lamni-tomo``, ``velociprobe``: side of the square crop around the
        beam centre (required).
    beam_center_rc : (row, col) or None, pixels
        ``lamni-eiger``, ``lamni-tomo``, ``velociprobe``: beam centre on the detector when
        the file has none.
    angle_table_path : str or None
        ``lamni-eiger``, ``ptychoshelves-prepared``: LamNI's ``tomography_scannumbers.txt``
        (rotation angle per scan number);
        ``lamni-tomo``: another table than the folder's ``dat-files/`` one.
    scan_range : (first, last) or None, scan numbers
        ``lamni-tomo``: read only the scans numbered first..last (inclusive); None = all.
    scan_step : int
        ``lamni-tomo``: read every ``scan_step``-th scan of the selection (1 = all).
    burst_frames : int
        ``lamni-eiger``, ``lamni-tomo``, ``velociprobe``: exposures per scan point
        (consecutive frames, summed into one; fold_slice's ``p.detector.burst_frames``,
        where each exposure keeps its own pattern at a repeated position instead).
    pixel_size_m : float or None, m
        Projection pixel of a ``tiff-stack`` (required there; other formats record it).
    phase_sign : float
        1 keeps the stored phase, -1 flips it (projection formats whose matter is negative).
    """

    path: str | None = None
    format: DataFormat = "auto"
    energy_ev: float | None = None
    distance_m: float | None = None
    detector_pixel_m: float | None = None
    laminography_angle_deg: float | None = None
    rotation_angles_deg: tuple[float, ...] | None = None
    angles_path: str | None = None
    positions_path: str | None = None
    angle_convention: AngleConvention | None = None
    foldslice_orientation: tuple[int, int, int] = (1, 0, 0)
    roi_label: str | None = None
    cxi_translation: CxiTranslation = "auto"
    spec_motors: tuple[str, str] = ("px", "py")
    roi_px: int | None = None
    beam_center_rc: tuple[float, float] | None = None
    angle_table_path: str | None = None
    scan_range: tuple[int, int] | None = None
    scan_step: int = 1
    burst_frames: int = 1
    pixel_size_m: float | None = None
    phase_sign: float = 1.0

    def check(self) -> None:
        _choices("data", self)
        for name in ("energy_ev", "distance_m", "detector_pixel_m", "pixel_size_m", "roi_px"):
            if getattr(self, name) is not None:
                _positive("data", self, name)
        if self.roi_px is not None:
            _at_most("data", self, MAX_SIDE, "roi_px")
        if self.rotation_angles_deg is not None and self.angles_path is not None:
            raise ConfigError("data.rotation_angles_deg and data.angles_path are both set; "
                              "keep one of them")
        if self.rotation_angles_deg is not None:
            if not self.rotation_angles_deg:
                raise ConfigError("data.rotation_angles_deg is empty")
            if len(self.rotation_angles_deg) > MAX_ANGLES:
                raise ConfigError(f"data.rotation_angles_deg holds more than {MAX_ANGLES} "
                                  f"angles")
        _positive("data", self, "scan_step", "burst_frames")
        _at_most("data", self, MAX_COUNT, "scan_step", "scan_range", "burst_frames")
        if self.scan_range is not None and self.scan_range[0] > self.scan_range[1]:
            raise ConfigError(f"data.scan_range: first {self.scan_range[0]} is after last "
                              f"{self.scan_range[1]}")
        if len(self.spec_motors) != 2 or len(set(self.spec_motors)) != 2 or not all(
                isinstance(m, str) and m.strip() for m in self.spec_motors):
            raise ConfigError(f"data.spec_motors must be two different column names (x, y), "
                              f"got {list(self.spec_motors)}")
        if any(v not in (0, 1) for v in self.foldslice_orientation):
            raise ConfigError(f"data.foldslice_orientation must hold 0 or 1, got "
                              f"{list(self.foldslice_orientation)}")
        if self.phase_sign not in (1.0, -1.0):
            raise ConfigError(f"data.phase_sign must be 1 or -1, got {self.phase_sign}")


@dataclass(frozen=True)
class OutputConfig:
    """Run directory.

    Attributes
    ----------
    dir : str
        Run directory: ``config.yaml``, ``projections.h5``, ``volume_*.h5``, figures, ...
    """

    dir: str = "runs/default"


@dataclass(frozen=True)
class SimulateConfig:
    """Simulated ptycho-laminography measurement of an IC phantom.

    Attributes
    ----------
    phantom : {'layout', 'procedural'}
        ``layout``: crop of a real DEF/LEF layout; ``procedural``: Manhattan test phantom.
    layout_def, layout_lef : str
        DEF routing and LEF technology files (``phantom: layout``).
    layout_fallback : bool
        When the layout files are missing, use the procedural phantom with a one-line
        notice instead of stopping (for demos and benchmarks that run anywhere).
    crop_origin_um : (x, y), um
        DEF coordinates of the corner of voxel ``[:, 0, 0]``.
    volume_shape : (nz, ny, nx)
        Phantom size in voxels.
    voxel_size_m : float, m
        Voxel edge; the object pixel of the simulated ptychography equals it.
    supersample : int
        Sub-voxels per axis used to anti-alias the layout rasterisation.
    n_angles : int
        Rotation angles, evenly over 360 deg.
    tilt_deg : float, deg
        Laminography angle L between beam and rotation axis (90 = tomography).
    energy_ev : float, eV
        Photon energy.
    photons_per_pattern : float
        Mean total counts per diffraction pattern.
    poisson_noise : bool
        Draw Poisson counts (else noiseless intensities).
    absorption_ratio : float
        beta/delta of the metal contrast (0 = pure phase object).
    frame_size : int
        Diffraction pattern size N (N x N pixels, even).
    detector_pixel_m : float, m
        Detector pixel size; the detector distance follows from
        ``voxel = wavelength * distance / (N * pixel)``.
    probe_diameter_px : float or None
        Probe aperture diameter in object pixels (default N / 2).
    overlap : float
        Linear overlap of neighbouring probe positions, in (0, 1).
    position_jitter_px : float
        Uniform random jitter of the raster positions, object pixels.
    projection_shape : (nv, nu) or None
        Projection (field of view) size; default: just large enough for the volume.
    store_probe : bool
        Store the probe in every CXI file as the initial probe, as a beamline does with the
        illumination reconstructed from a reference scan (LSQ-ML still refines it).
    write_projections : bool
        Also write the projections as ``output.dir/projections.h5`` (with the drift, the
        phase offsets and ramps and ``projection_noise``, as the ptychography stage would
        give them) so the alignment and reconstruction stages can run before the
        ptychography stage.
    drift_px : float, px
        Standard deviation of a random rigid shift of each angle's projection (row and
        column, clipped at 3 sigma) before the scan is simulated (and in that
        ``projections.h5``): the sample drift that the alignment stage removes (0 = none).
        ``true_projections.h5`` keeps the unshifted projections and the shifts in
        ``/drift_px`` (row, col; DESIGN's sign).
    projection_noise : float
        Gaussian noise added to that ``projections.h5``, standard deviation as a fraction of
        the projections' RMS (0 = exact); for studies of the reconstruction stages alone.
    scans : bool
        Simulate the ptychography scans (CXI files); false writes only the ground truth
        and the projections, for studies that start at the reconstruction.
    seed : int
        Seed of the measurement noise and position jitter (per-angle streams), in
        [0, 2**32 - 1].
    sample : {'extended', 'isolated'}
        ``extended``: the chip continues around the region ``volume_shape`` (a real IC is
        far wider than the region reconstructed): the phantom is built over a slab widened
        by a lateral margin (voxels, :func:`hpc_adept.lamino.region.lateral_margin_px`)
        that holds every point the detector window sees at some angle (the layout beyond
        the crop, or the procedural phantom drawn that wide with the same seed, the region
        at its centre); the projections cover the region's detector window and the object
        beyond the scanned field is chip. ``ground_truth.h5`` holds the region (its widened
        occupancy in ``/extended_occupancy``). ``isolated``: the region alone in vacuum.
    phase_offset_rad : float, rad
        Largest per-projection phase offset (uniform in ``[-x, x]``, one per angle) added
        to the measured projections (the scans' objects and ``projections.h5``), as
        ptychography leaves it without a vacuum reference; 0 = none.
    phase_ramp_rad : float, rad
        Largest per-projection linear phase ramp, as its phase change from the window's
        centre to its edge along each axis (uniform in ``[-x, x]``, per angle and axis),
        added like ``phase_offset_rad``; 0 = none. ``true_projections.h5`` records both in
        ``/phase_offset_rad`` ``[n_angles]`` and ``/phase_ramp_rad`` ``[n_angles, 2]``
        (row, col) and keeps its projections free of them.
    """

    phantom: Literal["layout", "procedural"] = "layout"
    layout_def: str = f"{IC_DATA_DIR}/gcd_nangate45.def"
    layout_lef: str = f"{IC_DATA_DIR}/Nangate45_tech.lef"
    layout_fallback: bool = False
    crop_origin_um: tuple[float, float] = (20.0, 20.0)
    volume_shape: tuple[int, int, int] = (144, 160, 160)
    voxel_size_m: float = 27.2e-9
    supersample: int = 4
    n_angles: int = 125
    tilt_deg: float = 61.0
    energy_ev: float = 6200.0
    photons_per_pattern: float = 1.0e6
    poisson_noise: bool = True
    absorption_ratio: float = 0.0
    frame_size: int = 128
    detector_pixel_m: float = 75.0e-6
    probe_diameter_px: float | None = None
    overlap: float = 0.65
    position_jitter_px: float = 1.0
    projection_shape: tuple[int, int] | None = None
    store_probe: bool = True
    write_projections: bool = True
    projection_noise: float = 0.0
    drift_px: float = 0.0
    scans: bool = True
    seed: int = 0
    sample: Literal["extended", "isolated"] = "extended"
    phase_offset_rad: float = 0.0
    phase_ramp_rad: float = 0.0

    def check(self) -> None:
        _positive("simulate", self, "voxel_size_m", "n_angles", "energy_ev",
                  "photons_per_pattern", "frame_size", "detector_pixel_m", "supersample")
        _shape("simulate.volume_shape", self.volume_shape)
        if self.projection_shape is not None:
            _shape("simulate.projection_shape", self.projection_shape)
        _at_most("simulate", self, MAX_ANGLES, "n_angles")
        _at_most("simulate", self, MAX_SIDE, "frame_size")
        _at_most("simulate", self, MAX_SUPERSAMPLE, "supersample")
        _seed("simulate.seed", self.seed)
        if problem := tilt_problem(self.tilt_deg, "simulate.tilt_deg"):
            raise ConfigError(problem)
        if self.frame_size % 2:
            raise ConfigError(f"simulate.frame_size must be even, got {self.frame_size}")
        if not 0.0 < self.overlap < 1.0:
            raise ConfigError(f"simulate.overlap must be in (0, 1), got {self.overlap}")
        if self.probe_diameter_px is not None and not (
            0.0 < self.probe_diameter_px <= self.frame_size
        ):
            raise ConfigError(
                f"simulate.probe_diameter_px must be in (0, frame_size={self.frame_size}], "
                f"got {self.probe_diameter_px}"
            )
        if self.drift_px < 0:
            raise ConfigError(f"simulate.drift_px must be >= 0, got {self.drift_px}")
        if self.projection_noise < 0:
            raise ConfigError(f"simulate.projection_noise must be >= 0, got "
                              f"{self.projection_noise}")
        if not (self.scans or self.write_projections):
            raise ConfigError("simulate.scans and simulate.write_projections are both false: "
                              "nothing to simulate")
        if self.position_jitter_px < 0 or self.absorption_ratio < 0:
            raise ConfigError(
                "simulate.position_jitter_px and simulate.absorption_ratio must be >= 0"
            )
        self._check_sample()

    def _check_sample(self) -> None:
        for name in ("phase_offset_rad", "phase_ramp_rad"):
            if getattr(self, name) < 0:
                raise ConfigError(f"simulate.{name} must be >= 0, got {getattr(self, name)}")
        if self.sample == "extended" and self.tilt_deg >= 90.0:
            raise ConfigError("simulate.sample: extended needs simulate.tilt_deg < 90 (in "
                              "tomography the rays run along the slab: set sample: isolated)")


@dataclass(frozen=True)
class PtychoConfig:
    """Ptychographic reconstruction of every scan (LSQ-ML, Odstrcil et al. 2018).

    :func:`hpc_adept.ptycho.reconstruct` takes this section as its options; the keys from
    ``probe_update_start`` on tune that engine (defaults measured on the simulator's scans,
    profiling/RESULTS.md, "LSQ-ML").

    Attributes
    ----------
    iterations : int
        LSQ-ML iterations (epochs) per scan.
    noise_model : {'gaussian', 'poisson'}
        Likelihood of the counts (``gaussian``: amplitude model).
    batch_mode : {'sparse', 'compact'}
        ``sparse``: spread-out random groups, object updated after each batch;
        ``compact``: updates accumulated over the epoch.
    batch_size : int
        Positions per batch.
    probe_modes : int
        Incoherent probe modes.
    position_correction : bool
        Refine the probe positions.
    momentum : bool
        Momentum on the object update.
    projection_shape : (nv, nu) or None
        Projection grid of the phase images; default: the smallest even grid holding every
        probe position.
    initial_probe : {'auto', 'file', 'fitted', 'mean_pattern'}
        Start of the probe: ``file`` the scan's stored probe (error when a scan has none);
        ``fitted`` a pupil retrieved from the mean pattern with its defocus fitted by short
        LSQ-ML trials on the scan (robust for large structured probes, costs about 60
        extra epochs); ``mean_pattern`` the back-propagated mean pattern with a default
        defocus (cheap; reliable for small frames only); ``auto`` the file's probe when
        present, else ``fitted``.
    probe_update_start : int, epochs
        First epoch (0-based) in which the probe is refined.
    position_correction_start : int, epochs
        First epoch of position correction (the object must be roughly right first).
    position_step_limit_px : float, object pixels
        Largest change of a position per epoch.
    momentum_coefficient : float
        Friction factor of the momentum, in [0, 1).
    preconditioner_delta : float
        ``delta`` of the object preconditioner ``1 / sqrt(D^2 + (delta max D)^2)`` (``D``
        the scan's illumination, photons), relative to ``max D``; > 0.
    step_scale : float
        Multiplier of the optimal steps (< 1 damps the noise-driven overshoot); > 0.
    step_regularization : float
        Tikhonov term of the 2x2 step system, relative to the batch mean of each diagonal
        entry; >= 0.
    trim_fraction : float
        Fraction of the smallest and of the largest per-position object steps left out of
        the batch's (trimmed) mean, in [0, 0.5).
    padding_px : int, object pixels
        Object pixels kept beyond the outermost probe window on each side (2 more with
        ``position_correction``).
    fft_library : {'torch', 'scipy'}
        Library of the host FFTs (:func:`hpc_adept.ptycho.fft.make_fft2`); ignored on GPUs.
    phase_reference : {'auto', 'vacuum', 'plane'}
        How each phase projection's constant and linear phase (unknown after ptychography)
        are removed (:mod:`hpc_adept.ptycho.phase`). ``vacuum``: fitted on the flat
        background level at the low end of the field's phase (vacuum, or dielectric where
        no ray crossed metal), which ends at 0. ``plane``: no background assumed; the
        illumination-weighted least-squares constant and ramp over the lit field are
        removed, and ``projections.h5`` marks each projection's offset and ramp as
        arbitrary (``/phase_offset_arbitrary``) for the later stages to fit. ``auto``:
        ``vacuum`` when every scan's field holds such a level (at least 25 % of the lit
        field within 3 noise sigmas of it, at most 3 % below it, and sharp), else ``plane``
        for all scans (measured: profiling/phase_reference.py).
    """

    iterations: int = 100
    noise_model: Literal["gaussian", "poisson"] = "gaussian"
    batch_mode: Literal["sparse", "compact"] = "sparse"
    batch_size: int = 32
    probe_modes: int = 1
    position_correction: bool = False
    momentum: bool = False
    projection_shape: tuple[int, int] | None = None
    initial_probe: Literal["auto", "file", "fitted", "mean_pattern"] = "auto"
    probe_update_start: int = 0
    position_correction_start: int = 10
    position_step_limit_px: float = 0.1
    momentum_coefficient: float = 0.5
    preconditioner_delta: float = 0.1
    step_scale: float = 0.9
    step_regularization: float = 0.1
    trim_fraction: float = 0.1
    padding_px: int = 2
    fft_library: FftLibrary = "torch"
    phase_reference: Literal["auto", "vacuum", "plane"] = "auto"

    def check(self) -> None:
        _choices("ptycho", self)  # for sections built in Python rather than from YAML
        _positive("ptycho", self, "iterations", "batch_size", "probe_modes",
                  "position_step_limit_px", "preconditioner_delta", "step_scale")
        _at_most("ptycho", self, MAX_COUNT, "iterations", "batch_size", "probe_modes",
                 "probe_update_start", "position_correction_start")
        _at_most("ptycho", self, MAX_SIDE, "padding_px")
        if self.projection_shape is not None:
            _shape("ptycho.projection_shape", self.projection_shape)
        for name in ("probe_update_start", "position_correction_start", "padding_px",
                     "step_regularization"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ptycho.{name} must be >= 0, got {getattr(self, name)}")
        _in_range("ptycho.momentum_coefficient", self.momentum_coefficient, 1.0)
        _in_range("ptycho.trim_fraction", self.trim_fraction, 0.5)


# Thresholds of the alignment's own verdicts (fixed, not settings; here so that the report
# reads them without loading the alignment).
# Median structure ratio below which the projections fix their shifts across the wires
# only. A hint, not a verdict (docs/extended_samples.md, 14 crops of the layout, 2 % noise):
# 24 x 32 x 32 regions, high-pass 3 px: the five one-way crops 0.08-0.19 (all fail), the
# others 0.27-0.48 (two of them fail too); 40 x 56 x 56, 8 px: failures 0.035 / 0.047 / 0.161
# / 0.201, an aligned crop at 0.158, others 0.25-0.31.
ONE_WAY_RATIO = 0.2
# The smooth-pattern check's rerun stops, the pattern taken back, once within this (in units
# of the pattern) of the estimate, and warns when it never gets there: on 13 crops that
# align it gets there in 2-10 iterations and stays, on three that do not it stays at
# 0.73-0.89 (docs/extended_samples.md, "A check", "The check stops").
SMOOTH_CHECK_LIMIT = 0.5
# A projection whose residual at the last iteration is at least this many times the median
# of all is named in a warning: registered onto a wrong match, which local steps cannot
# leave. At the demo's size (28 x 48 x 48, 54.4 nm) one angle of seed 2 sat 19 px off at
# 7.97 times the median; on the crops that align the largest is 1.03-1.11 times
# (docs/extended_samples.md, "One angle on a wrong match").
OUTLIER_RESIDUAL_RATIO = 3.0


@dataclass(frozen=True)
class AlignConfig:
    """Projection alignment and center crop.

    Attributes
    ----------
    enabled : bool
        Run projection matching (else only crop).
    crop_shape : (nv, nu)
        Center crop of the projections used by the reconstruction (kept whole, with a
        warning, along an axis where the projections are smaller).
    volume_shape : (nz, ny, nx) or None
        Volume reconstructed inside projection matching (voxel = projection pixel);
        default ``recon.volume_shape``. It should hold the object (its z extent included).
    binning : list of int
        Binning factor of each coarse-to-fine level; every factor divides the first.
    max_iterations : int
        Alignment iterations per level at most.
    tolerance_px : float, pixels
        Stop when the largest shift update is below this (last level; coarser levels stop
        at 0.05 of their pixels).
    max_update_px : float, pixels of the level
        Clamp of each per-iteration shift update (of the optical flow; ``smooth_gain``
        adds its fit on the joint last level).
    highpass_sigma_px : float, pixels of the level
        Gaussian high-pass of the residual (removes slow phase offsets and ramps).
    reconstruct_iterations : int
        Warm-started least-squares (CGLS) iterations per alignment iteration.
    support : bool
        Zero the volume where some projection does not see it (loose support).
    coarse_rounds : int
        At most this many rounds of the low-pass, window-bounded cross-correlation
        estimate before the first level's optical-flow iterations (0 = none). Where that
        level has held-out folds (an extended sample, ``cross_folds`` > 1) the rounds stop at
        the first whose held-out residual is no lower than the lowest so far and go back
        to the shifts of the lowest.
    coarse_lowpass_px : float, pixels
        Low-pass sigma of that estimate (about the period of the IC patterns or more).
    coarse_search_px : float, pixels
        Largest shift per axis that estimate looks for; no estimate moves further than
        this from its start (one that would has run away: a warning names it).
    sample : {'auto', 'extended', 'isolated'}
        Which method (:mod:`hpc_adept.align.sample`). ``extended``: the region lies inside
        a wider slab (a chip) whose material outside ``volume_shape`` every projection also
        holds: the region is widened by ``lateral_margin`` and the fit is blind to each
        projection's phase offset and ramp (``fit_phase_plane``). ``isolated``: the sample
        lies inside the field in vacuum: the region only, with ``support``
        (``lateral_margin`` is not used). ``auto`` (default): ``isolated`` when the outer
        border of eight evenly spaced projections is empty (the test of ``recon.sample:
        auto``), else ``extended``; the kind decided is stored in ``aligned.h5`` and
        ``recon.sample: auto`` follows it. On extended samples the region-only method runs
        off (9-14 px RMS); the extended one costs about 2-16 times its time and recovers
        2 px RMS shifts to 0.017-0.139 px on 12 of 16 crops of the layout at 40 x 56 x 56
        and ends 0.22-2.0 px off on the others, mostly crops of one-way wiring (on one, a
        lower bound says no method can reach 0.15 px; issue 18, docs/extended_samples.md).
    lateral_margin : 'auto' or int, voxels (full resolution, each lateral side)
        For an extended sample: widen the reconstruction beyond ``volume_shape`` so that
        the material around the region, which every projection also holds, is modelled
        instead of biasing the shifts. ``auto`` (default): at each level, the margin that
        holds every point the level's detector window sees
        (:func:`hpc_adept.lamino.region.lateral_margin_px`). An integer sets a smaller
        (cheaper) margin: pixels whose rays leave the widened volume are then left out of
        the fit; ``0``: the region only, with ``support``.
    fit_phase_plane : bool or 'auto'
        Fit a constant and a linear ramp per projection against the reprojection of the
        current volume and remove them before the reconstruction and the shift update
        (ptychographic phase has no vacuum reference); the least-squares fit is made blind
        to them. ``auto`` (default): for an extended sample only.
    cross_folds : int
        With a widened volume (``lateral_margin`` not 0): the angles are dealt into this
        many interleaved groups (at most one per angle), and each group is compared with
        the reprojection of a volume fitted to the other groups. Material that only a few
        angles see is fitted to their own misaligned data and hides their shifts; a
        held-out prediction does not (1: one volume of all angles). Costs about
        ``cross_folds - 1`` times the reconstruction of one volume per iteration (on the
        levels that use them: see ``joint_last_level``).
    momentum : float, in [0, 1)
        Heavy-ball momentum of the optical-flow steps with held-out folds and on the
        joint last level with ``coverage_power`` of a volume of voxels (a layer stack's
        has ``layer_momentum``): the last step times this is added while the steps keep
        their direction; 0: none. Material that few angles see ties each shift to its
        neighbours' and slows plain steps.
    flow_eigen_floor : float in [0, 1), or 'auto'
        Damps the optical-flow step along the direction a projection barely determines:
        the smaller eigenvalue of its 2 x 2 normal matrix is raised to this fraction of the
        larger (0: off). Projections of wires running mostly one way fix the shift across
        them only (the aperture problem); on a window of an extended chip the undamped
        steps along the wires can run off. ``auto`` (default): 0.1 for an extended sample,
        0 for an isolated one (docs/extended_samples.md: at 40 x 56 x 56, 0.1 holds the
        worst crop at 2.7 px instead of 7.9 and leaves the crops that align within
        0.02 px; 0.3 holds the worst two better but costs five of them 0.01-0.06 px). A
        warning says when the projections' structure runs mostly one way.
        On the last level only (the levels before use ``coarse_flow_eigen_floor``).
    coarse_flow_eigen_floor : float in [0, 1), or 'auto'
        ``flow_eigen_floor`` of the levels before the last. ``auto`` (default): 0.3 for an
        extended sample (at least ``flow_eigen_floor``), ``flow_eigen_floor`` for an
        isolated one. On one-way wiring the steps along the wires run off on the coarse
        levels, where a binned window holds little else; a higher floor there holds them,
        and the last level's lower one keeps the precision of the crops that align
        (docs/extended_samples.md: at 40 x 56 x 56 the worst crop 1.97 px instead of
        4.20, the crops that align below 0.15 px as before).
    joint_last_level : bool
        With a widened volume and more than one binning level: the last level fits one
        volume to all angles (no held-out folds). A held-out prediction of the outside
        material is biased (started at the true shifts it drifts off by ~0.4 px); one
        volume of all angles stays at them and pulls an estimate that the coarser levels
        brought near them further in (docs/extended_samples.md).
    coverage_power : float, >= 0
        On that joint last level: the optical-flow weights are multiplied by each pixel's
        angular coverage (the mean, along its ray, of the fraction of angles that see each
        voxel) to this power, the steps get ``momentum`` (``layer_momentum`` with a
        layer stack), and the level runs all
        ``max_iterations`` (no tolerance stop). What is left after the folds is a smooth
        pattern over the angles that the outside material (seen by neighbouring angles
        only) follows; only the region every angle sees pulls it back, and slowly
        (docs/extended_samples.md: 0.12-0.24 px -> 0.05-0.13 px on six crops of ten).
        0: plain weights, no momentum, the tolerance stop.
    smooth_gain : float, in [0, 1]
        On that joint last level (``coverage_power`` > 0): each optical-flow update is
        added ``smooth_gain`` times its least-squares fit by the harmonics of the rotation
        angle up to ``smooth_harmonics`` (where no angle weighs more than half in that fit:
        at least twice as many evenly spaced angles as harmonic terms; the log says
        whether it is on). The widened volume absorbs most of a shift pattern smooth over
        the angles, so the measured update holds only part of it (docs/extended_samples.md:
        at 40 x 56 x 56 twelve of 16 crops below 0.15 px instead of eleven; at
        24 x 32 x 32 it costs the crops that align up to 0.03 px). At most 1: a pattern
        the data fix whole would be overshot by the gain. The step can exceed
        ``max_update_px`` by that fit. 0: off.
    smooth_harmonics : int, >= 1
        The highest harmonic of ``smooth_gain``'s fit.
    smooth_check_px : float, pixels, in [0, coarse_search_px / 4]
        After a joint last level of a widened volume: run that level once more from the
        estimate plus a shift pattern of this RMS smooth over the angles (harmonics 2 and
        3, row and column) until it is back within half the pattern from the estimate in
        such patterns. Where it does not get there in the level's iterations, this method
        does not take such patterns back near its estimate, and the estimate may itself
        be off by one of up to a few pixels (regions of one-way wiring): a warning says
        so. The shifts returned are those before the check; it is in
        ``align_history.json`` (``smooth_check``) and the report. Costs a few iterations
        of the last level where the pattern comes back, all of them where it does not
        (docs/extended_samples.md, "A check"). 0: off.
    reregister_outliers : bool
        After the last level: search each projection whose residual ends at
        :data:`OUTLIER_RESIDUAL_RATIO` times the median or more, or is not finite (probably
        on a wrong match, e.g. a pattern repeating along the wires) again, by
        cross-correlation with its prediction by a volume fitted to the other projections,
        over ``coarse_search_px`` from its start; move it to that match where its residual
        there is lower and the match at least a pixel away, and then run the last level
        once more, its volume from the FBP, without cross-correlation rounds (up to
        ``max_iterations`` more; nothing runs where nothing moves).
        ``AlignResult.reregistered_angles`` and ``align_history.json`` say which moved;
        those still named after it are warned about (docs/extended_samples.md, "Searching
        a named projection again").
    layer_lef : str
        The chip's layer stack as the prior of the joint last level's volume (a widened
        volume; the coarser levels keep voxels): a LEF technology file whose routing
        layers' ``HEIGHT`` and ``THICKNESS`` (and the cut layers between them) give the
        heights at which the material changes; the volume is then one lateral map per layer,
        constant in height between two interfaces, and the level also measures how high the
        data's layers sit against the stack (the z translation, ``stack_offset_um`` in
        ``align_history.json``). It has some ``nz / layers`` times fewer unknowns and no
        longer follows most shift patterns smooth over the angles (docs/extended_samples.md,
        "The stack observes the height"; at 40 x 56 x 56 on 16 crops: 14 below 0.15 px
        RMS, 0.013-0.062 px, with ``layer_momentum``, instead of 12 with voxels,
        0.017-0.139 px). ``auto`` (default): the
        ``simulate.layout_lef`` of a layout the simulate stage rasterised (the dataset's
        ``ground_truth.h5`` says so and the file exists; a volume of fewer slices than the
        simulated slab shares its centre, which places its bottom face), else none (voxels:
        real data need the chip's LEF given here); ``none``: off; otherwise the path.
        Overridden by ``layer_interfaces_um``.
    layer_interfaces_um : list of float, um
        The interface heights themselves (strictly increasing), measured along the
        volume's z axis from the bottom face of its first slice; empty (default): from
        ``layer_lef``.
    layer_base_um : float, um
        Height above the substrate of the volume's bottom face (the LEF's heights are
        above the substrate); the simulator's regions start there (0). The alignment
        measures the rest (``stack_offset_um`` in ``align_history.json``), within a row
        shift of ``coarse_search_px``, and with ``place_on_stack`` moves the data onto
        the stack by it; without (or where it looked too large to be drift) lower this by
        that much to put the stack onto the data's layers.
    layer_momentum : float, in [0, 1)
        ``momentum`` of the joint last level's steps where it fits the layer stack
        (``layer_lef`` or ``layer_interfaces_um``; with ``coverage_power`` > 0, else that
        level has none). The stack's fit is better conditioned than one of voxels: with
        ``momentum`` (0.7) its steps overshoot a slow smooth pattern and swing back
        (docs/extended_samples.md, "Less momentum on the stack's level": at 40 x 56 x 56
        one crop 0.275 -> 0.062 px, the other 15 within 0.01 px or better; at 24 x 32 x 32
        within 0.001 px on the seven that align, 0.07 px on the others). Measured on
        stacks of several layers only.
    place_on_stack : bool
        Where the joint last level fitted a layer stack: keep the z translation it measured
        (``stack_offset_um``) in the shifts, so that the aligned projections, and the
        volumes reconstructed from them, hold the data's layers at the stack's heights
        (the volume's bottom face at ``layer_base_um``), not wherever the sample's drift
        left them (a sub-voxel offset puts thin layers across two slices;
        docs/extended_samples.md, "The volume placed on the stack"). Not where the offset
        looks like a wrong ``layer_base_um`` (a row shift over half ``coarse_search_px``,
        or a shift held at that bound: warned, ``placed_on_stack: false`` in the history).
        False: the shifts are free of all three translations, as without a stack. The x
        and y translations are not observed by any projection matching and are always
        removed.
    """

    enabled: bool = True
    crop_shape: tuple[int, int] = (256, 256)
    volume_shape: tuple[int, int, int] | None = None
    binning: tuple[int, ...] = (4, 2, 1)
    max_iterations: int = 50
    tolerance_px: float = 0.01
    max_update_px: float = 0.5
    highpass_sigma_px: float = 8.0
    reconstruct_iterations: int = 5
    support: bool = True
    coarse_rounds: int = 3
    coarse_lowpass_px: float = 8.0
    coarse_search_px: float = 16.0
    sample: Literal["auto", "extended", "isolated"] = "auto"
    lateral_margin: Literal["auto"] | int = "auto"
    fit_phase_plane: bool | Literal["auto"] = "auto"
    cross_folds: int = 8
    momentum: float = 0.7
    flow_eigen_floor: float | Literal["auto"] = "auto"
    coarse_flow_eigen_floor: float | Literal["auto"] = "auto"
    joint_last_level: bool = True
    coverage_power: float = 4.0
    smooth_gain: float = 1.0
    smooth_harmonics: int = 4
    smooth_check_px: float = 0.5
    reregister_outliers: bool = True
    layer_lef: str = "auto"
    layer_interfaces_um: tuple[float, ...] = ()
    layer_base_um: float = 0.0
    layer_momentum: float = 0.3
    place_on_stack: bool = True

    def check(self) -> None:
        _choices("align", self)
        self._check_layers()
        _shape("align.crop_shape", self.crop_shape)
        if self.fit_phase_plane != "auto" and not isinstance(self.fit_phase_plane, bool):
            raise ConfigError(f"align.fit_phase_plane must be true, false or auto, got "
                              f"{self.fit_phase_plane!r}")
        if self.lateral_margin != "auto" and (
                isinstance(self.lateral_margin, bool) or not isinstance(self.lateral_margin, int)
                or not 0 <= self.lateral_margin <= MAX_SIDE):
            raise ConfigError(f"align.lateral_margin must be auto or an integer in "
                              f"[0, {MAX_SIDE}], got {self.lateral_margin!r}")
        if self.volume_shape is not None:
            _shape("align.volume_shape", self.volume_shape)
        _positive("align", self, "max_iterations", "tolerance_px", "max_update_px",
                  "coarse_lowpass_px", "coarse_search_px", "cross_folds", "smooth_harmonics")
        _in_range("align.momentum", self.momentum, 1.0)
        _in_range("align.layer_momentum", self.layer_momentum, 1.0)
        if not 0.0 <= self.smooth_gain <= 1.0:
            raise ConfigError(f"align.smooth_gain must be in [0, 1], got {self.smooth_gain}")
        if not 0.0 <= self.smooth_check_px <= self.coarse_search_px / 4:
            raise ConfigError(f"align.smooth_check_px must be in [0, align.coarse_search_px "
                              f"/ 4 = {self.coarse_search_px / 4:g}] (its peaks reach about "
                              f"twice the RMS), got {self.smooth_check_px}")
        for key in ("flow_eigen_floor", "coarse_flow_eigen_floor"):
            if getattr(self, key) != "auto":
                _in_range(f"align.{key}", getattr(self, key), 1.0)
        if not self.binning or any(b < 1 or self.binning[0] % b for b in self.binning):
            raise ConfigError(f"align.binning must be positive factors that divide the "
                              f"first, got {list(self.binning)}")
        _at_most("align", self, MAX_SIDE, "binning")
        _at_most("align", self, MAX_COUNT, "max_iterations", "reconstruct_iterations",
                 "coarse_rounds", "cross_folds", "smooth_harmonics")
        for name in ("highpass_sigma_px", "reconstruct_iterations", "coarse_rounds",
                     "coverage_power", "smooth_gain"):
            if getattr(self, name) < 0:
                raise ConfigError(f"align.{name} must be >= 0, got {getattr(self, name)}")

    def _check_layers(self) -> None:
        edges = self.layer_interfaces_um
        if any(not math.isfinite(e) for e in edges) or any(
                b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ConfigError(f"align.layer_interfaces_um must be finite and strictly "
                              f"increasing, got {list(edges)}")
        if not math.isfinite(self.layer_base_um):
            raise ConfigError(f"align.layer_base_um must be finite, got {self.layer_base_um}")
        if not self.layer_lef.strip():
            raise ConfigError("align.layer_lef must be auto, none or a path, got ''")


@dataclass(frozen=True)
class ReconConfig:
    """Volume reconstruction.

    Attributes
    ----------
    methods : list of {'fbp', 'dip'}
        Reconstruction methods to run.
    volume_shape : (nz, ny, nx)
        Reconstructed volume in voxels (voxel = projection pixel).
    input : {'auto', 'projections', 'aligned'}
        Which run-directory file to reconstruct from; ``auto`` takes ``aligned.h5`` when
        present, else ``projections.h5``.
    sample : {'auto', 'extended', 'isolated'}
        ``extended``: the region lies inside a wider slab (a chip) whose material outside
        ``volume_shape`` is in the projections and whose phase has no vacuum reference:
        FBP and the DIP reconstruct the region widened by ``lateral_margin``, ignore each
        projection's constant and linear phase ramp, and write the region.
        ``isolated``: the sample lies inside the field in vacuum (no margin, no plane
        fit). ``auto``: the kind ``adept align`` decided and stored in ``aligned.h5``
        (its root attribute ``sample``; it looked at the uncropped window); without one,
        ``isolated`` when the outer border of eight evenly spaced projections is empty
        (its RMS under 10 % of the whole window's;
        :func:`hpc_adept.lamino.region.looks_isolated`), else ``extended``; an isolated
        sample whose offsets are marked arbitrary (``/phase_offset_arbitrary``) then has
        each projection referenced to its empty border, the vacuum
        (:func:`hpc_adept.lamino.region.reference_to_border`).
    lateral_margin : int or 'auto', voxels
        Voxels added on each lateral side of ``volume_shape`` for an extended sample;
        ``auto``: half the lateral run of a ray across the thickness, ``nz tan(L) / 2``
        (:func:`hpc_adept.lamino.region.lateral_run_px`), so that every ray whose path's
        middle lies in the region crosses the slab inside the widened volume; rounded up
        so the widened size suits the DIP network's strides. Detector pixels whose rays
        leave the widened volume get weight 0 in the DIP's data term; the network computes
        the whole widened volume.
    level_slices : bool
        For an extended sample whose projections' offsets are unknown: shift every z slice
        of the written region so that its dielectric is at 0 (the slice's median, or where
        metal clearly fills most of the slice the lower class's median;
        :func:`hpc_adept.lamino.planes.dielectric_level`). A uniform layer of a wide slab
        projects to a constant, so neither method can see each slice's level, and the
        DIP's drifts from slice to slice (PCC 0.932 -> 0.981 on the demo;
        :func:`hpc_adept.lamino.planes.level_slices`, profiling/RESULTS.md). Off: the
        volume as reconstructed.
    """

    methods: tuple[Literal["fbp", "dip"], ...] = ("fbp",)
    volume_shape: tuple[int, int, int] = (144, 160, 160)
    input: Literal["auto", "projections", "aligned"] = "auto"
    sample: Literal["auto", "extended", "isolated"] = "auto"
    lateral_margin: int | Literal["auto"] = "auto"
    level_slices: bool = True

    def check(self) -> None:
        _shape("recon.volume_shape", self.volume_shape)
        if not self.methods:
            raise ConfigError("recon.methods must name at least one method (fbp, dip)")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"recon.methods has duplicates: {list(self.methods)}")
        if self.lateral_margin != "auto" and not 0 <= self.lateral_margin <= MAX_SIDE:
            raise ConfigError(f"recon.lateral_margin must be auto or in [0, {MAX_SIDE}], "
                              f"got {self.lateral_margin}")


@dataclass(frozen=True)
class DipConfig:
    """Deep image prior reconstruction.

    Defaults follow the ADePt paper and reference code, except ``lr`` (1e-3, paper 2e-4),
    ``hpf`` (``none``, paper ``wavelet``) and ``tv_weights`` (a hundredth of the paper's): on
    noisy small simulated data with known truth those gave higher PCC and lower BER, and
    the lower TV keeps small vias (README, profiling/RESULTS.md). Set ``lr: 2.0e-4``,
    ``hpf: wavelet`` and ``tv_weights: [3.0e-6, 3.0e-8]`` for the paper's recipe.

    Attributes
    ----------
    iterations : int
        Optimiser steps.
    lr : float
        Adam learning rate (paper 2e-4).
    lr_step, lr_gamma : int, float
        The learning rate is multiplied by ``lr_gamma`` every ``lr_step`` iterations
        (paper: halved after 1000).
    betas : (float, float)
        Adam betas.
    angles_per_step : int or None
        Angles per step: the angles are dealt into ``ceil(n / angles_per_step)``
        interleaved groups used in turn (the reference alternates halves); None: all.
    data_term : {'mean', 'sum'}
        ``mean``: mean squared projection error over all pixels of all angles (the
        reference code's MSE, which the TV weights were tuned against); ``sum``:
        ``0.5 sum_n ||H_n x - y_n||^2`` (paper eq. 1 as written).
    hpf : {'wavelet', 'fourier', 'none'}
        High-pass emphasis of the measured projections (computed once).
    hpf_wavelet, hpf_levels, hpf_gain : str, int, float
        PyWavelets wavelet, levels and detail gain per level (reference: db8, 4, 2.5);
        ``fourier`` uses levels and gain for a smooth high-frequency boost.
    tv_weights : list of float
        Anisotropic in-plane TV weight per height range, bottom first (n bounds + 1).
        Default 3e-8 below 2.75 um and 3e-10 above, a hundredth of the paper's (3e-6,
        3e-8): the paper weighs TV against a data term whose detail its wavelet HPF
        amplifies (gain 2.5 per level); against the plain data term (``hpf: none``) its
        weights flatten small vias (0 to 3 of 10 kept). A tenth of the paper's still lost
        vias on 2 of 5 crops; a hundredth kept every via FBP kept on all 5, with BER / PCC
        within +-0.002 / 0.004 of it (54.4 nm, 300 iterations, 40 angles;
        profiling/RESULTS.md, issue 20).
    tv_z_bounds_m : list of float
        Heights above the substrate (metres, increasing) where the TV weight changes
        (paper: 3e-6 below 2.75 um, 3e-8 above); converted to slices by the voxel size.
    in_channels, channels, strides, skip_channels : network sizes
        Input noise channels (48), encoder/decoder channels per level (32, 64, 96, 96,
        96), stride per level (2, 2, 1, 1, 1: reduction by 4 on every axis), skip
        channels (8). The strides' product must leave more than one voxel of
        ``recon.volume_shape`` at the bottleneck (see :func:`check_dip_strides`).
    input_noise_scale : float
        The fixed input is U[0, input_noise_scale] (0.1).
    input_perturbation : float
        Std of Gaussian noise added to the input at every step (0: fixed input).
    init_gain : float
        Xavier-uniform gain (0.2).
    decomposition : {'auto', 'angles', 'volume'}
        How the ranks share the work. ``angles``: every rank runs the whole network and
        projects its share of the angles (the paper's data parallelism; the network's cost
        does not shrink with more ranks); with ``runtime.deterministic`` the result has the
        same bits on any number of ranks. ``volume``: every rank computes a z slab of every
        feature map (neighbour planes exchanged for each 3x3x3 convolution, BatchNorm
        statistics summed) and projects it for all angles; the projections are summed over
        ranks. Network time and activation memory shrink with the ranks; it needs at least
        one block of ``prod(strides)`` slices per rank, and it gives the one-process result
        up to rounding (which Adam amplifies over the iterations; profiling/RESULTS.md,
        issue 21). ``auto``: ``volume`` on several ranks when every rank gets a slab of at
        least ``2 prod(strides)`` slices (every part of the step then divides by the
        ranks), else ``angles``. The default is ``angles``: results that do not depend on
        the number of ranks; on this project's 2-core test machine the volume split was not
        measurably faster with one thread per rank (profiling/RESULTS.md, issue 21).
    memory_guard : bool
        Before any work, estimate the memory the DIP needs per rank (network activations
        from a shape-only pass, optimiser, projections) and stop with a clear message when
        it exceeds 90 % of what the rank has.
    output_range : (float, float), rad per voxel
        Interval of the network's scaled-sigmoid output (reference: -0.03, 0.03, which holds
        copper's 0.026 rad per 27.2 nm voxel at 6.2 keV); widen it for larger voxels or
        lower energies.
    checkpoint_every : int
        Write a checkpoint every this many iterations (0: only at a stop and the end).
    resume : bool
        Continue from the newest checkpoint of these settings (``output.dir/checkpoints/
        dip/<fingerprint>/``) at or before ``dip.iterations``, if any; false starts over.
    bf16 : bool
        bf16 autocast of the network (the projector, the losses and BatchNorm's statistics
        stay float32). On GPUs with tensor cores and on CPUs with AVX512-BF16 or AMX it is
        faster (2.5x on the development CPU) at a small loss of accuracy (the quality
        benchmark: PCC 0.971 vs 0.973, BER 0.035 vs 0.028); elsewhere it can be slower.
    activation_checkpointing : bool
        Recompute network activations in the backward pass (less GPU memory).
    guard : bool
        Roll back to the last good state and lower the rate when the loss jumps.
    guard_jump : float
        A loss above ``guard_jump`` x the best loss so far counts as a jump.
    guard_lr_factor : float
        Learning-rate factor applied at each rollback.
    guard_max_rollbacks : int
        At most this many rollbacks (then jumps are accepted).
    guard_snapshot_every : int
        Iterations between snapshots of a good state.
    """

    iterations: int = 1500
    lr: float = 1.0e-3
    lr_step: int = 1000
    lr_gamma: float = 0.5
    betas: tuple[float, float] = (0.9, 0.999)
    angles_per_step: int | None = None
    data_term: Literal["mean", "sum"] = "mean"
    hpf: Literal["wavelet", "fourier", "none"] = "none"
    hpf_wavelet: str = "db8"
    hpf_levels: int = 4
    hpf_gain: float = 2.5
    tv_weights: tuple[float, ...] = (3.0e-8, 3.0e-10)
    tv_z_bounds_m: tuple[float, ...] = (2.75e-6,)
    in_channels: int = 48
    channels: tuple[int, ...] = (32, 64, 96, 96, 96)
    strides: tuple[int, ...] = (2, 2, 1, 1, 1)
    skip_channels: int = 8
    input_noise_scale: float = 0.1
    input_perturbation: float = 0.0
    init_gain: float = 0.2
    output_range: tuple[float, float] = (-0.03, 0.03)
    decomposition: Literal["auto", "angles", "volume"] = "angles"
    memory_guard: bool = True
    checkpoint_every: int = 100
    resume: bool = True
    bf16: bool = False
    activation_checkpointing: bool = False
    guard: bool = True
    guard_jump: float = 4.0
    guard_lr_factor: float = 0.5
    guard_max_rollbacks: int = 10
    guard_snapshot_every: int = 10

    def check(self) -> None:
        _positive("dip", self, "iterations", "lr", "lr_step", "lr_gamma", "hpf_levels",
                  "hpf_gain", "in_channels", "skip_channels", "input_noise_scale",
                  "init_gain", "guard_lr_factor", "guard_snapshot_every")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"dip.betas must lie in [0, 1), got {list(self.betas)}")
        if self.angles_per_step is not None and self.angles_per_step < 1:
            raise ConfigError(f"dip.angles_per_step must be >= 1 or null, got "
                              f"{self.angles_per_step}")
        if len(self.tv_weights) != len(self.tv_z_bounds_m) + 1:
            raise ConfigError(f"dip.tv_weights needs one more value than dip.tv_z_bounds_m "
                              f"({len(self.tv_weights)} vs {len(self.tv_z_bounds_m)})")
        if any(w < 0 for w in self.tv_weights):
            raise ConfigError(f"dip.tv_weights must be >= 0, got {list(self.tv_weights)}")
        if any(b >= c for b, c in zip(self.tv_z_bounds_m, self.tv_z_bounds_m[1:],
                                      strict=False)):
            raise ConfigError(f"dip.tv_z_bounds_m must increase, got {list(self.tv_z_bounds_m)}")
        if not self.channels or len(self.channels) != len(self.strides):
            raise ConfigError(f"dip.channels and dip.strides need equal, non-zero lengths "
                              f"({len(self.channels)} vs {len(self.strides)})")
        if any(c < 1 for c in self.channels) or any(s < 1 for s in self.strides):
            raise ConfigError("dip.channels and dip.strides must be >= 1")
        if self.input_perturbation < 0 or self.checkpoint_every < 0:
            raise ConfigError("dip.input_perturbation and dip.checkpoint_every must be >= 0")
        if self.guard_jump <= 1.0:
            raise ConfigError(f"dip.guard_jump must be > 1, got {self.guard_jump}")
        if not self.output_range[0] < self.output_range[1]:
            raise ConfigError(f"dip.output_range must be [low, high] with low < high, got "
                              f"{list(self.output_range)}")
        if self.guard_max_rollbacks < 0:
            raise ConfigError(f"dip.guard_max_rollbacks must be >= 0, got "
                              f"{self.guard_max_rollbacks}")
        _at_most("dip", self, MAX_CHANNELS, "in_channels", "channels", "skip_channels")
        _at_most("dip", self, MAX_SIDE, "strides")
        _at_most("dip", self, MAX_COUNT, "iterations", "lr_step", "angles_per_step",
                 "hpf_levels", "checkpoint_every", "guard_max_rollbacks",
                 "guard_snapshot_every")


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation against a reference.

    Attributes
    ----------
    reference : str or None
        HDF5 file with ``/volume`` (and ``/occupancy`` if binary): a ground truth or a
        dense reconstruction. Same voxel size as the reconstructions; both volumes are
        centred on the same point.
    z_boundaries_um : list of float, um
        Heights (above the bottom face of the reference) that split the layers into
        ranges for per-range BER/PCC; default the paper's split at 2.75 um.
    gmm_samples : int
        Voxels drawn (seeded by ``runtime.seed``) to fit each two-component mixture (at
        least 2).
    gmm_covariance : {'tied', 'full'}
        ``tied``: one variance shared by both components, so the metal/dielectric threshold
        lies between the two means; ``full``: a variance each, whose threshold moves next
        to a very narrow component (a near-noiseless DIP background then counts its
        slightly positive voxels as metal: BER 0.10 instead of 0.016 on the demo).
    register : bool
        Find and undo a residual (sub-voxel) shift of each reconstruction.
    max_shift_voxels : int
        Largest shift searched per axis, voxels (at most the evaluated region's size - 1
        is searched, whatever is set here).
    min_class_fraction : float
        A reference layer where metal or dielectric is rarer than this fraction of its
        voxels is excluded from BER/PCC (listed in ``metrics.json``).
    max_uncertain_fraction : float
        A layer of a GMM-binarised reference with more than this fraction of voxels of
        metal posterior between 0.1 and 0.9 is excluded (ambiguous binarisation).
    max_partial_fraction : float
        A layer of a binary reference (``/occupancy``) in which more than this fraction of
        the metal voxels are only partly filled (phase below 90 % of the way from the
        dielectric's median phase to the metal's) is excluded: a layer cut through the top
        or bottom of the lines, whose metal/dielectric labels are a convention (1: keep
        every such layer).
    psd_window : bool
        Taper volumes with a Hann window before the power spectrum.
    circuit_connectivity : {6, 18, 26}
        Voxel neighbourhood of a connected component in the circuit figures (opens,
        shorts, vias; :mod:`hpc_adept.metrics.circuit`): 6 = faces (current needs a face),
        18 adds edges, 26 corners.
    circuit_min_component_voxels : int, voxels
        Reconstructed components smaller than this are specks, left out of the circuit
        figures (at least 1).
    circuit_min_overlap_voxels : int, voxels
        Voxels a reconstructed component and a true wire piece (or via) must share to
        touch (at least 1).
    via_min_fraction : float, in (0, 1]
        Share of a true via's voxels that must be reconstructed metal for the via to count
        as recovered.
    """

    reference: str | None = None
    z_boundaries_um: tuple[float, ...] = (2.75,)
    gmm_samples: int = 200_000
    gmm_covariance: Literal["tied", "full"] = "tied"
    register: bool = True
    max_shift_voxels: int = 8
    min_class_fraction: float = 1e-3
    max_uncertain_fraction: float = 0.15
    max_partial_fraction: float = 0.9
    psd_window: bool = True
    circuit_connectivity: int = 6
    circuit_min_component_voxels: int = 4
    circuit_min_overlap_voxels: int = 2
    via_min_fraction: float = 0.5

    def check(self) -> None:
        # Why at least 2: a two-component mixture cannot be fitted to fewer values.
        if not 2 <= self.gmm_samples <= MAX_COUNT:
            raise ConfigError(f"evaluate.gmm_samples must be in [2, {MAX_COUNT}], got "
                              f"{self.gmm_samples}")
        bounds = self.z_boundaries_um
        increasing = all(b < c for b, c in zip(bounds[:-1], bounds[1:], strict=True))
        if any(b <= 0 for b in bounds) or not increasing:
            raise ConfigError(f"evaluate.z_boundaries_um must be positive and increasing, "
                              f"got {list(bounds)}")
        if not 0 <= self.max_shift_voxels <= MAX_SIDE:
            raise ConfigError(f"evaluate.max_shift_voxels must be in [0, {MAX_SIDE}], got "
                              f"{self.max_shift_voxels}")
        for name in ("min_class_fraction", "max_uncertain_fraction", "max_partial_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"evaluate.{name} must be in [0, 1], got {value}")
        self._check_circuit()

    def _check_circuit(self) -> None:
        if self.circuit_connectivity not in (6, 18, 26):
            raise ConfigError(f"evaluate.circuit_connectivity must be 6, 18 or 26, got "
                              f"{self.circuit_connectivity}")
        for name in ("circuit_min_component_voxels", "circuit_min_overlap_voxels"):
            value = getattr(self, name)
            if not 1 <= value <= MAX_COUNT:
                raise ConfigError(f"evaluate.{name} must be in [1, {MAX_COUNT}], got {value}")
        if not 0.0 < self.via_min_fraction <= 1.0:
            raise ConfigError(f"evaluate.via_min_fraction must be in (0, 1], got "
                              f"{self.via_min_fraction}")


@dataclass(frozen=True)
class RuntimeConfig:
    """Execution settings.

    Attributes
    ----------
    device : {'auto', 'cpu', 'cuda'}
        ``auto``: the rank's GPU ``cuda:(local_rank % n_gpus)`` when one is usable, else CPU.
    seed : int
        Seed of everything random in the reconstruction stages, in [0, 2**32 - 1].
    log_level : {'DEBUG', 'INFO', 'WARNING', 'ERROR'}
        Level of rank 0's log (other ranks log warnings and errors only).
    torch_threads : int or None
        CPU threads per rank for torch (default: ``OMP_NUM_THREADS`` when set, else the
        cores this process may use, its CPU affinity, divided by the ranks on the node).
    timing : bool
        Time every stage and its parts on every rank (host clock; CUDA events and NVTX
        ranges on GPUs) and write ``output.dir/timing.json``.
    keep_host_memory : bool
        Keep freed host memory in the process for reuse (glibc malloc: no ``mmap`` for
        large blocks, no trimming) rather than returning it to the OS and faulting in fresh
        pages each iteration; CPU runs are ~20 % faster. The rank then holds its peak host
        memory until it ends.
    memory_guard : bool
        Before any work, estimate the memory of the simulation, LSQ-ML, alignment and FBP
        per rank and stop in one line when it exceeds 90 % of what is available (the DIP
        has its own, ``dip.memory_guard``). The estimates err on the high side; false skips
        them.
    read_ahead : bool
        In the ptycho stage, read a rank's next scan from disk in a background thread
        while it reconstructs the current one (while at least one unclaimed scan per
        rank remains, so that no rank is left without work at the end).
    projector : {'torch', 'triton'}
        Implementation of the laminography projector and its adjoint (the same operator):
        ``torch`` (``grid_sample`` + a sparse product, any device) or ``triton`` (one fused
        kernel per direction, GPUs only, needs Triton; checked against ``torch`` in the
        tests; on an H200 1.7x faster than ``torch`` for the projector alone, see
        profiling/RESULTS.md).
    deterministic : bool
        The same bits on any number of ranks: sums over angles that feed the DIP's
        optimiser, its logged loss and the FBP volume are exact (each angle computed on its
        own, summed in fixed point), the DIP with the angles split runs the same network
        backward on every rank instead of averaging weight gradients (no DDP), and torch's
        deterministic algorithms are on (cuDNN without autotuning, cuBLAS with a fixed
        workspace). On CPU the network's kernels depend on the thread count, so equal bits
        also need equal ``torch_threads`` per rank. False: the faster float all-reduces
        (on GPUs cuDNN's TF32 convolutions make those leave one process by ~1e-3 a step).
    """

    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    torch_threads: int | None = None
    timing: bool = True
    keep_host_memory: bool = True
    memory_guard: bool = True
    read_ahead: bool = True
    projector: Literal["torch", "triton"] = "torch"
    deterministic: bool = True

    def check(self) -> None:
        if self.torch_threads is not None and not 1 <= self.torch_threads <= MAX_THREADS:
            raise ConfigError(f"runtime.torch_threads must be in [1, {MAX_THREADS}] or null, "
                              f"got {self.torch_threads}")
        _seed("runtime.seed", self.seed)
        if self.projector == "triton" and self.device == "cpu":
            raise ConfigError("runtime.projector: triton runs on GPUs only; use torch with "
                              "runtime.device: cpu")


@dataclass(frozen=True)
class Config:
    """The whole run configuration (one frozen dataclass per section)."""

    data: DataConfig = field(default_factory=DataConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    ptycho: PtychoConfig = field(default_factory=PtychoConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    dip: DipConfig = field(default_factory=DipConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def check(self) -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "check"):
                section.check()
        # Checks across sections: both values are known only here.
        if "dip" in self.recon.methods:
            check_dip_strides(self.dip.strides, self.recon.volume_shape)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), as written to ``config.yaml``."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def check_dip_strides(strides: tuple[int, ...], volume_shape: tuple[int, ...],
                      key: str = "recon.volume_shape") -> None:
    """Stop when the DIP network would shrink ``volume_shape`` to one voxel.

    Each encoder level's strided 3x3x3 convolution (padding 1) maps ``n`` voxels to
    ``ceil(n / s)`` along every axis, so the bottleneck has ``ceil(n / prod(strides))``;
    training-mode BatchNorm there needs more than one value per channel (the batch is the
    one volume), else torch fails deep inside the memory estimate or the first step.

    Parameters
    ----------
    strides : tuple of int
        ``dip.strides``.
    volume_shape : (nz, ny, nx)
        The volume the network outputs.
    key : str
        Config key of ``volume_shape``, for the message.

    Raises
    ------
    ConfigError
        When the bottleneck would hold a single voxel.
    """
    total = math.prod(strides)
    bottleneck = [-(-n // total) for n in volume_shape]  # ceil(n / total)
    if math.prod(bottleneck) < 2:
        raise ConfigError(
            f"dip.strides {list(strides)}: their product {total} shrinks {key} "
            f"{list(volume_shape)} to a single voxel at the network's bottleneck (BatchNorm "
            f"needs at least 2); use smaller strides or a larger volume"
        )


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config, apply ``--set`` overrides, build and validate the dataclasses.

    Parameters
    ----------
    path : str, Path or None
        YAML file; None gives the defaults.
    overrides : iterable of str
        ``dotted.key=value`` strings; values are parsed as YAML.

    Raises
    ------
    ConfigError
        Missing/unreadable file, YAML syntax error, unknown key, wrong type, bad value.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {p}: {exc}") from None
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "syntax error"
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"config file {p} is not valid YAML{where}: {first}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
        raw = loaded
    for item in overrides:
        _apply_override(raw, item)
    cfg = _build(Config, raw, "")
    cfg.check()
    return cfg


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects dotted.key=value, got {item!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML") from None
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from mapping ``raw``, checking keys and types."""
    where = prefix.rstrip(".") or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            did_you_mean = f" (did you mean {prefix}{hint[0]}?)" if hint else ""
            valid = ", ".join(names)
            raise ConfigError(
                f"unknown config key {prefix}{key}{did_you_mean}; valid keys: {valid}"
            )
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(raw[name], tp, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_optional(value, typing.get_args(tp), key)
    if origin is Literal:
        return _coerce_literal(value, typing.get_args(tp), key)
    if origin is tuple:
        return _coerce_tuple(value, typing.get_args(tp), key)
    coercer = _SCALAR_COERCERS.get(tp)
    if coercer is None:
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")  # a bug, not input
    return coercer(value, key)


def _coerce_optional(value: Any, args: tuple[Any, ...], key: str) -> Any:
    """``X | None``, or a union such as ``int | Literal['auto']`` (first match wins)."""
    if value is None and type(None) in args:
        return None
    inner = [a for a in args if a is not type(None)]
    problems = []
    for tp in inner:
        try:
            return _coerce(value, tp, key)
        except ConfigError as exc:
            problems.append(str(exc))
    reasons = [problem.removeprefix(key).strip() for problem in problems]
    raise ConfigError(f"{key} " + " or ".join(reasons))


def _coerce_literal(value: Any, args: tuple[Any, ...], key: str) -> Any:
    if value not in args:
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{key} must be one of {choices}, got {value!r}")
    return value


def _coerce_tuple(value: Any, args: tuple[Any, ...], key: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key} must be a list, got {_describe(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{key} must be a list of {len(args)} values, got {len(value)}")
    pairs = enumerate(zip(value, args, strict=True))
    return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in pairs)


def _coerce_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {_describe(value)}")
    return value


def _coerce_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {_describe(value)}")
    return value


def _coerce_float(value: Any, key: str) -> float:
    if isinstance(value, str):
        # YAML 1.1 reads "1e6" (no dot) as a string; accept plain numeric strings.
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {_describe(value)}")
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be finite, got {value}")
    return float(value)


def _coerce_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {_describe(value)}")
    return value


_SCALAR_COERCERS: dict[Any, Callable[[Any, str], Any]] = {
    bool: _coerce_bool, int: _coerce_int, float: _coerce_float, str: _coerce_str,
}


def _choices(section: str, obj: Any) -> None:
    """Check the ``Literal`` fields of ``obj`` (sections built in Python skip ``_coerce``)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if typing.get_origin(hints[f.name]) is Literal:
            _coerce_literal(getattr(obj, f.name), typing.get_args(hints[f.name]),
                            f"{section}.{f.name}")


def _in_range(key: str, value: float, upper: float) -> None:
    """Check ``0 <= value < upper``."""
    if not 0.0 <= value < upper:
        raise ConfigError(f"{key} must be in [0, {upper:g}), got {value}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _positive(section: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ConfigError(f"{section}.{name} must be > 0, got {value}")


def _at_most(section: str, obj: Any, limit: int, *names: str) -> None:
    """Check that the integers (or lists of integers) ``names`` of ``obj`` are <= ``limit``."""
    for name in names:
        value = getattr(obj, name)
        values = value if isinstance(value, tuple) else (value,)
        if any(v is not None and v > limit for v in values):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"{section}.{name} must be <= {limit}, got {shown}")


def _seed(key: str, value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{key} must be in [0, {MAX_SEED}] (2**32 - 1), got {value}")


def _shape(key: str, shape: tuple[int, ...]) -> None:
    if any(n < 1 for n in shape):
        raise ConfigError(f"{key} must hold positive sizes, got {list(shape)}")
    if any(n > MAX_SIDE for n in shape):
        raise ConfigError(f"{key} must hold sizes <= {MAX_SIDE}, got {list(shape)}")
    if math.prod(shape) > MAX_VOXELS:
        raise ConfigError(f"{key} {list(shape)} has more than {MAX_VOXELS} (2**34) "
                          f"elements")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- paths


def require_file(path: str | Path | None, key: str) -> Path:
    """Return ``path`` as a Path, or raise ConfigError naming ``key`` when it is missing."""
    if path is None:
        raise ConfigError(f"{key} is not set")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{key}: file not found: {p}")
    return p


def require_dir(path: str | Path | None, key: str) -> Path:
    """Return ``path`` as a Path, or raise ConfigError naming ``key`` when it is missing."""
    if path is None:
        raise ConfigError(f"{key} is not set")
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{key}: directory not found: {p}")
    return p
