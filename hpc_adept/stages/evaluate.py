"""``adept evaluate``: BER, PCC and power spectra of each reconstruction against a reference.

For every ``volume_<method>.h5`` of ``recon.methods`` in the run directory:

1. register it to ``evaluate.reference`` (centre alignment of the two grids, then an
   optional integer + sub-voxel shift from FFT cross-correlation) and cut both to the
   region that every method's registration defines (a shift pulls border planes in from
   outside a volume; one common region judges all methods on the same voxels and vias);
2. binarise the reference (its ``/occupancy`` when it has one, else a two-component
   Gaussian mixture of ``/volume``) and the reconstruction (its own mixture);
3. score: BER and PCC over all voxels of the layers kept, per z layer, and per z range
   (``evaluate.z_boundaries_um``), leaving out the layers whose reference binarisation is
   ambiguous (listed with the reason); an affine intensity fit ``ref ~ a * rec + b``;
4. power spectral density cuts (kx-ky, ky-kz) of the reference and each reconstruction;
5. the circuit (:mod:`hpc_adept.metrics.circuit`), from the same binarised region: opens,
   shorts, missing and spurious structures, variation of information, per cut layer the via
   recall and precision and per metal layer the opens and shorts, against the reference's
   net and via labels (``/circuit`` of ``ground_truth.h5``, kept where the binarised
   reference is metal; a via with no metal voxel at this voxel size is not counted) or,
   without labels, against the connected components of the reference's binarisation (no
   via or layer figures then).
   Every layer of the region counts here (the ambiguous-layer exclusion is for BER/PCC).

Results go to ``output.dir/metrics.json`` (one entry per method, the circuit under
``circuit``) and the figures ``output.dir/figures/metrics_layers.png``,
``figures/psd_cuts.png`` and ``figures/circuit_errors.png`` (errors marked on xy slices;
only when there is an error to show).

The work is a few FFTs and mixture fits on one volume per method (seconds at the paper's
160 x 160 x 144 voxels), so it runs on rank 0 alone; the other ranks return at once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpc_adept.config import Config, require_file
from hpc_adept.errors import ConfigError, DataError
from hpc_adept.io import GroundTruth, read_ground_truth, read_volume, write_json_atomic
from hpc_adept.metrics import GmmBinarizer, LayerExclusion
from hpc_adept.parallel import ParallelContext

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
LAYER_FIGURE = "figures/metrics_layers.png"
PSD_FIGURE = "figures/psd_cuts.png"
CIRCUIT_FIGURE = "figures/circuit_errors.png"
# Voxel sizes of reference and reconstruction must agree this well (no resampling here).
VOXEL_RTOL = 1e-3


@dataclass(frozen=True)
class EvaluatePlan:
    """Inputs and outputs of the stage, resolved and checked before any work.

    Attributes
    ----------
    reference_path : Path
        The reference file.
    volumes : tuple of (str, Path)
        ``(method, volume_<method>.h5)`` for every method whose volume exists.
    run_dir : Path
        Where ``metrics.json`` and the figures go.
    voxel_size_m : float
        Voxel edge of the reference, metres.
    """

    reference_path: Path
    volumes: tuple[tuple[str, Path], ...]
    run_dir: Path
    voxel_size_m: float

    def validate(self, ctx: ParallelContext, device: object) -> None:
        """Nothing more to check: :func:`plan_evaluate` read every input already."""


def _check_varies(volume: np.ndarray, path: Path) -> None:
    if float(volume.max()) == float(volume.min()):
        raise DataError(f"{path}: volume: constant (value {float(volume.min()):g}); "
                        f"nothing to evaluate")


def check_reference(cfg: Config) -> tuple[Path, GroundTruth]:
    """Read and check ``evaluate.reference``: a file the evaluation can score against.

    Used by :func:`plan_evaluate` and by ``adept run``'s plan, so that a bad reference stops
    a run before its first stage rather than after the reconstructions.

    Returns
    -------
    path : Path
        The reference file.
    reference : GroundTruth
        Its content (``/volume``, optional ``/occupancy``, ``voxel_size_m``).

    Raises
    ------
    ConfigError
        ``evaluate.reference`` unset or not a file.
    DataError
        Not a readable HDF5 file, no valid 3-D finite ``/volume`` or ``voxel_size_m``, an
        invalid ``/occupancy``, or nothing to tell apart (a constant volume, one class).
    """
    if cfg.evaluate.reference is None:
        raise ConfigError("evaluate.reference is not set (an HDF5 file with /volume: a "
                          "ground truth or a dense reconstruction)")
    path = require_file(cfg.evaluate.reference, "evaluate.reference")
    reference = read_ground_truth(path, require_occupancy=False)
    if reference.occupancy is None:
        _check_varies(reference.volume, path)
    elif not 0 < int(reference.occupancy.sum()) < reference.occupancy.size:
        raise DataError(f"{path}: occupancy: a single class everywhere; nothing to evaluate")
    return path, reference


def plan_evaluate(cfg: Config) -> EvaluatePlan:
    """Check the reference and the run directory's volumes; no work, no output.

    Raises
    ------
    ConfigError
        ``evaluate.reference`` unset or missing; no ``volume_<method>.h5`` of
        ``recon.methods`` in ``output.dir``.
    DataError
        An unreadable or invalid reference or volume (wrong dimensions, NaN/Inf, missing
        ``voxel_size_m``, constant), or voxel sizes that disagree.
    """
    reference_path, reference = check_reference(cfg)
    run_dir = Path(cfg.output.dir)
    found = []
    for method in cfg.recon.methods:
        path = run_dir / f"volume_{method}.h5"
        if not path.is_file():
            continue
        volume, attrs = read_volume(path)
        _check_varies(volume, path)
        voxel = float(attrs["voxel_size_m"])
        if not math.isclose(voxel, reference.voxel_size_m, rel_tol=VOXEL_RTOL):
            raise DataError(
                f"{path}: voxel_size_m {voxel:.4g} differs from the reference's "
                f"{reference.voxel_size_m:.4g} ({reference_path}); resample one of them"
            )
        found.append((method, path))
    if not found:
        names = ", ".join(f"volume_{m}.h5" for m in cfg.recon.methods)
        raise ConfigError(f"evaluate: none of {names} found in output.dir {run_dir} "
                          f"(run adept recon first)")
    missing = set(cfg.recon.methods) - {m for m, _ in found}
    if missing:
        log.warning("evaluate: no volume for %s in %s; evaluating %s only",
                    ", ".join(sorted(missing)), run_dir, ", ".join(m for m, _ in found))
    return EvaluatePlan(reference_path, tuple(found), run_dir, reference.voxel_size_m)


# ----------------------------------------------------------------------------- helpers


def _number(value: float) -> float | None:
    """A JSON-safe float: NaN/Inf (an undefined metric) become None (null)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _numbers(values: np.ndarray) -> list[float | None]:
    return [_number(v) for v in values]


@dataclass(frozen=True)
class _ReferenceBinarisation:
    occupancy: np.ndarray  # bool [nz, ny, nx]
    exclusion: LayerExclusion  # over all reference layers
    description: dict[str, Any]


def _fit_gmm(values: np.ndarray, cfg: Config, what: str) -> GmmBinarizer:
    """The two-class mixture of ``values``; a DataError naming ``what`` when none fits."""
    from hpc_adept.metrics import fit_gmm

    ev = cfg.evaluate
    try:
        return fit_gmm(values, ev.gmm_samples, cfg.runtime.seed, covariance=ev.gmm_covariance)
    except ValueError as exc:
        # Why here and not in the plan: the values fitted are the registered region (or a
        # subsample), known only now; e.g. a tiny reference leaves a constant region.
        raise DataError(f"{what}: {exc} ({values.size} voxel(s) evaluated, "
                        f"evaluate.gmm_samples {ev.gmm_samples})") from None


def _binarise_reference(reference: GroundTruth, cfg: Config,
                        what: str = "reference") -> _ReferenceBinarisation:
    from hpc_adept.metrics import exclude_ambiguous_layers
    from hpc_adept.metrics.scores import partly_filled_metal

    ev = cfg.evaluate
    if reference.occupancy is not None:
        occupancy = reference.occupancy.astype(bool)
        exclusion = exclude_ambiguous_layers(
            occupancy, None, ev.min_class_fraction, ev.max_uncertain_fraction,
            partly_filled_metal(reference.volume, occupancy), ev.max_partial_fraction)
        description = {"source": "occupancy", "metal_fraction": float(occupancy.mean())}
        return _ReferenceBinarisation(occupancy, exclusion, description)
    model = _fit_gmm(reference.volume, cfg, what)
    if not model.separated or model.separation < 2.0:
        log.warning("evaluate: the reference's two classes overlap (Ashman D %.2f < 2): "
                    "its binarisation, and so the BER, is uncertain", model.separation)
    occupancy = model.binarize(reference.volume)
    exclusion = exclude_ambiguous_layers(occupancy, model.posterior(reference.volume),
                                         ev.min_class_fraction, ev.max_uncertain_fraction)
    description = {"source": "gmm", "metal_fraction": float(occupancy.mean()),
                   "gmm": model.as_dict()}
    return _ReferenceBinarisation(occupancy, exclusion, description)


def _score_region(ref_occ: np.ndarray, est_occ: np.ndarray, ref_val: np.ndarray,
                  est_val: np.ndarray, layers: np.ndarray) -> tuple[float | None, float | None]:
    """BER and PCC over the given layers (indices into the region), None when empty."""
    from hpc_adept.metrics import ber, pcc

    if len(layers) == 0:
        return None, None
    return (_number(ber(ref_occ[layers], est_occ[layers])),
            _number(pcc(ref_val[layers], est_val[layers])))


@dataclass(frozen=True)
class _Region:
    """The registered common region of the reference and a reconstruction.

    Values are float64 and occupancies bool, all ``[nz', ny', nx']``; ``layer_index`` (int)
    and ``excluded`` (bool) have one entry per z layer of the region, the index counting
    the reference's layers.
    """

    ref_val: np.ndarray
    ref_occ: np.ndarray
    est_val: np.ndarray
    est_occ: np.ndarray
    layer_index: np.ndarray
    excluded: np.ndarray

    def score(self, layers: np.ndarray) -> tuple[float | None, float | None]:
        """BER and PCC over ``layers`` (indices into the region), None when empty."""
        return _score_region(self.ref_occ, self.est_occ, self.ref_val, self.est_val, layers)


def _range_scores(region: _Region, layer_z_m: np.ndarray, kept: np.ndarray,
                  boundaries_um: list[float]) -> dict[str, dict[str, Any]]:
    """The ``ranges`` entry: BER and PCC per z range over its layers kept."""
    from hpc_adept.metrics import layer_ranges

    ranges = {}
    for zr in layer_ranges(layer_z_m, [b * 1e-6 for b in boundaries_um]):
        if len(zr.layers) == 0:  # the range lies outside the evaluated volume
            continue
        in_range = np.intersect1d(zr.layers, kept)
        r_ber, r_pcc = region.score(in_range)
        ranges[zr.name] = {
            "z_min_um": zr.z_min_m * 1e6,
            "z_max_um": zr.z_max_m * 1e6 if math.isfinite(zr.z_max_m) else None,
            "n_layers": int(len(in_range)),
            "n_layers_excluded": int(len(zr.layers) - len(in_range)),
            "ber": r_ber,
            "pcc": r_pcc,
        }
    return ranges


def _intensity_fit(region: _Region, kept: np.ndarray) -> dict[str, float | None]:
    """The ``intensity_fit`` entry: ``ref ~ scale * rec + offset`` over the layers kept
    (over all layers when every layer is excluded)."""
    from hpc_adept.metrics import affine_fit

    if len(kept):
        scale, offset, rel_rmse = affine_fit(region.ref_val[kept], region.est_val[kept])
    else:
        scale, offset, rel_rmse = affine_fit(region.ref_val, region.est_val)
    return {"scale": _number(scale), "offset": _number(offset),
            "relative_rmse": _number(rel_rmse)}


def _registration_entry(reg: Any, enabled: bool) -> dict[str, Any]:
    """The ``registration`` entry of a :func:`hpc_adept.metrics.register` result:
    ``region_*`` the region scored (common to every method), ``own_region_*`` the one this
    method's own shift defines."""
    own = reg.own_slices or reg.reference_slices
    return {
        "enabled": enabled,
        "shift_voxels": [float(s) for s in reg.shift_voxels],
        "peak_correlation": (None if reg.peak_correlation is None
                             else _number(reg.peak_correlation)),
        "region_start": [s.start for s in reg.reference_slices],
        "region_shape": list(reg.aligned.shape),
        "own_region_start": [s.start for s in own],
        "own_region_shape": [s.stop - s.start for s in own],
    }


def register_volume(reference: GroundTruth, volume: np.ndarray, cfg: Config) -> Any:
    """``volume`` registered to the reference (:func:`hpc_adept.metrics.register` with the
    ``evaluate`` settings)."""
    from hpc_adept.metrics import register

    ev = cfg.evaluate
    return register(reference.volume, volume, enabled=ev.register, max_shift=ev.max_shift_voxels)


def _region(reference: GroundTruth, binarised: _ReferenceBinarisation, reg: Any, cfg: Config,
            what: str) -> tuple[_Region, GmmBinarizer]:
    """The registered region of a reconstruction, binarised, and its mixture model."""
    est_val = reg.aligned
    model = _fit_gmm(est_val, cfg, f"{what}: evaluated region {list(est_val.shape)}")
    z_slice = reg.reference_slices[0]
    layer_index = np.arange(z_slice.start, z_slice.stop)
    region = _Region(ref_val=np.asarray(reference.volume[reg.reference_slices], np.float64),
                     ref_occ=binarised.occupancy[reg.reference_slices],
                     est_val=est_val, est_occ=model.binarize(est_val),
                     layer_index=layer_index,
                     excluded=binarised.exclusion.excluded[layer_index])
    return region, model


def _json_safe(value: Any) -> Any:
    """Plain JSON values: NaN/Inf floats become None, tuples lists, numpy scalars Python."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return _number(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _region_layers(layers: Mapping[str, tuple[int, int]], z_slice: slice, nz: int
                   ) -> dict[str, tuple[int, int]]:
    """The layers' slices inside the region ``z_slice`` of ``nz`` slices, counted from the
    region's first slice; layers outside the region are left out."""
    out = {}
    for name, (k0, k1) in layers.items():
        a, b = max(k0 - z_slice.start, 0), min(k1 - z_slice.start, nz)
        if b > a:
            out[name] = (a, b)
    return out


def evaluate_circuit(reference: GroundTruth, region: _Region, slices: tuple[slice, ...],
                     cfg: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """The circuit figures of a registered region (see the module docstring, step 5).

    ``slices`` are the region's slices of the reference. Returns the ``circuit`` entry of
    ``metrics.json`` (error sites in the reference's voxels ``(z, y, x)``) and the panel of
    :func:`hpc_adept.report.circuit_plots.save_circuit_errors` (region voxels).
    """
    from hpc_adept.metrics.circuit import circuit_figures, error_sites, reference_labels

    ev, metal, circuit = cfg.evaluate, region.est_occ, reference.circuit
    if circuit is None:
        nets, vias, layers = reference_labels(region.ref_occ, ev), None, {}
        figures = circuit_figures(metal, nets, criteria=ev)
    else:
        # Labels mark every voxel whose centre lies in a box; the binarised reference (the
        # truth BER scores against) calls some of those voxels dielectric where a box covers
        # less than half of a voxel. Keep only the reference's metal so that the reference
        # itself scores no error and a via is judged on the voxels that should be metal.
        nets = np.where(region.ref_occ, circuit.nets[slices], 0)
        vias = np.where(region.ref_occ, circuit.vias[slices], 0)
        layers = _region_layers(circuit.layers, slices[0], metal.shape[0])
        cuts = {k: (v, circuit.via_ids(k)) for k, v in layers.items()
                if k in circuit.cut_layers}
        metal_layers = {k: v for k, v in layers.items() if k not in circuit.cut_layers}
        figures = circuit_figures(metal, nets, vias, metal_layers, cuts, ev)
    sites = error_sites(metal, nets, vias, criteria=ev)
    n_vias = sum(v["vias"] for v in figures["vias"].values())
    start = np.array([s.start for s in slices])
    entry = {
        "labels": "reference components" if circuit is None else "ground truth",
        "via_recall": (sum(v["recovered"] for v in figures["vias"].values()) / n_vias
                       if n_vias else None),
        **_json_safe(figures),
        "error_sites": {k: [(np.asarray(p) + start).tolist() for p in v]
                        for k, v in sites.items()},
    }
    panel = {"metal": metal, "truth": nets > 0, "sites": sites, "layers": layers,
             "z0": int(start[0])}
    return entry, panel


def evaluate_registered(reference: GroundTruth, binarised: _ReferenceBinarisation, reg: Any,
                        cfg: Config, what: str = "reconstruction"
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics of one registered reconstruction.

    Parameters
    ----------
    reference, binarised : the reference and its binarisation
    reg : Registration
        The reconstruction on the reference grid (:func:`register_volume`, possibly cut to
        the region common to every method, :func:`hpc_adept.metrics.restrict`).
    cfg : Config
        ``evaluate`` and ``runtime.seed`` are used.
    what : str
        Name of the reconstruction in error messages (its file).

    Raises
    ------
    DataError
        When no two-class mixture fits the reconstruction's evaluated region (constant,
        e.g. a reference so small that the region holds one voxel).

    Returns
    -------
    entry : dict
        The method's ``metrics.json`` entry (see the module docstring of
        :mod:`hpc_adept.stages.evaluate` and the README for the keys).
    layers : dict
        ``z_um``, ``ber``, ``pcc`` (float arrays, NaN = undefined) and ``excluded`` (bool)
        per layer of the evaluated region, and ``circuit`` (the circuit errors' panel), for
        the figures.
    """
    from hpc_adept.metrics import ber_per_layer, pcc_per_layer

    voxel = reference.voxel_size_m
    region, model = _region(reference, binarised, reg, cfg, what)
    layer_index, excluded = region.layer_index, region.excluded
    layer_z_m = (layer_index + 0.5) * voxel
    kept = np.flatnonzero(~excluded)
    ber_value, pcc_value = region.score(kept)
    ber_all, pcc_all = region.score(np.arange(len(layer_index)))
    per_layer_ber = ber_per_layer(region.ref_occ, region.est_occ)
    per_layer_pcc = pcc_per_layer(region.ref_val, region.est_val)
    reasons = binarised.exclusion.reasons
    entry = {
        "ber": ber_value,
        "pcc": pcc_value,
        "ber_all_layers": ber_all,
        "pcc_all_layers": pcc_all,
        "n_voxels": int(len(kept) * region.est_val.shape[1] * region.est_val.shape[2]),
        "ranges": _range_scores(region, layer_z_m, kept, cfg.evaluate.z_boundaries_um),
        "layers": {
            "index": layer_index.tolist(),
            "z_um": (layer_z_m * 1e6).tolist(),
            "ber": _numbers(per_layer_ber),
            "pcc": _numbers(per_layer_pcc),
            "excluded": excluded.tolist(),
        },
        "excluded_layers": [
            {"index": int(k), "z_um": float((k + 0.5) * voxel * 1e6), "reason": reasons[int(k)]}
            for k in layer_index[excluded]
        ],
        "registration": _registration_entry(reg, cfg.evaluate.register),
        "intensity_fit": _intensity_fit(region, kept),
        "binarization": {"metal_fraction": float(region.est_occ.mean()), **model.as_dict()},
    }
    entry["circuit"], panel = evaluate_circuit(reference, region, reg.reference_slices, cfg)
    layers = {"z_um": layer_z_m * 1e6, "ber": per_layer_ber, "pcc": per_layer_pcc,
              "excluded": excluded, "circuit": panel}
    return entry, layers


# ----------------------------------------------------------------------------- the stage


def _registrations(reference: GroundTruth, plan: EvaluatePlan, cfg: Config,
                   cuts: dict[str, Any]) -> dict[str, Any]:
    """Every method's volume registered to the reference and cut to the region they all
    define (so that all are scored on the same voxels, vias and wires); adds each volume's
    power-spectrum cuts to ``cuts``."""
    from hpc_adept.metrics import common_region, psd_cuts, restrict

    registrations = {}
    for method, path in plan.volumes:
        volume, _ = read_volume(path)
        registrations[method] = register_volume(reference, volume, cfg)
        cuts[method] = psd_cuts(volume, reference.voxel_size_m, window=cfg.evaluate.psd_window)
    try:
        common = common_region(list(registrations.values()))
    except ValueError as exc:
        raise DataError(f"evaluate: {exc}: the methods' volumes cannot be compared") from None
    log.info("evaluate: every method scored on the reference's region start %s, shape %s",
             [s.start for s in common], [s.stop - s.start for s in common])
    return {m: restrict(reg, common) for m, reg in registrations.items()}


def run_evaluate(cfg: Config, ctx: ParallelContext, plan: EvaluatePlan, device: object) -> None:
    """Compute the metrics on rank 0 and write ``metrics.json`` and the figures.

    Other ranks return at once: the work is small (see the module docstring). ``device`` is
    unused (NumPy on the CPU).
    """
    if not ctx.is_root:
        return
    from hpc_adept.metrics import psd_cuts
    from hpc_adept.report.metric_plots import save_layer_metrics, save_psd_cuts

    t0 = time.perf_counter()
    reference = read_ground_truth(plan.reference_path, require_occupancy=False)
    binarised = _binarise_reference(reference, cfg, str(plan.reference_path))
    log.info("evaluate: reference %s %s (%s), %d of %d layers excluded as ambiguous",
             plan.reference_path, list(reference.volume.shape),
             binarised.description["source"], int(binarised.exclusion.excluded.sum()),
             len(binarised.exclusion.excluded))
    window = cfg.evaluate.psd_window
    cuts = {"reference": psd_cuts(reference.volume, reference.voxel_size_m, window=window)}
    metrics: dict[str, Any] = {}
    per_layer: dict[str, dict[str, Any]] = {}
    registrations = _registrations(reference, plan, cfg, cuts)
    for method, path in plan.volumes:
        entry, layers = evaluate_registered(reference, binarised, registrations[method], cfg,
                                            str(path))
        entry = {
            "volume": str(path),
            "reference": {"path": str(plan.reference_path),
                          "shape": list(reference.volume.shape),
                          "voxel_size_m": reference.voxel_size_m,
                          **binarised.description},
            **entry,
            "settings": {**{k: v for k, v in cfg.to_dict()["evaluate"].items()
                            if k != "reference"}, "seed": cfg.runtime.seed},
            "figures": {"layers": LAYER_FIGURE, "psd": PSD_FIGURE, "circuit": CIRCUIT_FIGURE},
        }
        metrics[method] = entry
        per_layer[method] = layers
        log.info("evaluate: %s: BER %s, PCC %s over %d layers; shift %s voxels; %s",
                 method, _fmt(entry["ber"]), _fmt(entry["pcc"]),
                 len(entry["layers"]["index"]) - len(entry["excluded_layers"]),
                 np.round(entry["registration"]["shift_voxels"], 2).tolist(),
                 _circuit_line(entry["circuit"]))
    save_layer_metrics(plan.run_dir / LAYER_FIGURE, per_layer,
                       list(cfg.evaluate.z_boundaries_um))
    _save_circuit_figure(plan.run_dir / CIRCUIT_FIGURE,
                         {m: layers.pop("circuit") for m, layers in per_layer.items()})
    save_psd_cuts(plan.run_dir / PSD_FIGURE, cuts)
    write_json_atomic(plan.run_dir / METRICS_FILE, metrics)
    log.info("evaluate: done in %.1f s -> %s", time.perf_counter() - t0,
             plan.run_dir / METRICS_FILE)


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _save_circuit_figure(path: Path, panels: dict[str, dict[str, Any]]) -> None:
    """Draw the circuit errors, or remove an earlier run's figure when there is none."""
    from hpc_adept.report.circuit_plots import save_circuit_errors

    if save_circuit_errors(path, panels) is None and path.is_file():
        path.unlink()


def _circuit_line(circuit: dict[str, Any]) -> str:
    """The circuit figures of one method in a few words, for the log."""
    recall = circuit["via_recall"]
    vias = "no vias" if recall is None else f"via recall {recall:.3f}"
    return f"{circuit['opens']} opens, {circuit['shorts']} shorts, {vias}"
