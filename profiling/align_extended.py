"""Projection matching on a region inside an extended chip (issue 18): accuracy and time of
the region-only method (``align.sample: isolated``, no momentum) against the extended-sample
method (``align.sample: extended``: the widened volume, plane fit, held-out folds, momentum,
the joint last level and the eigenvalue floor at their defaults), on isolated and extended
samples, with and without per-projection phase offsets and ramps.

Data: ``tests/extended_sample.py`` (the real layout, procedural without it): the region
widened to every point its detector window sees, projected in float64, shifted by known
random shifts (2 px RMS), 2 % noise, offsets and ramps up to +-0.5 rad. Score: RMS shift
error after removing the global offset and the rigid drift.

Command (the issue's region, 27.2 nm voxels, 61 deg, 32 angles)::

    OMP_NUM_THREADS=2 .venv/bin/python profiling/align_extended.py --region 40 56 56 \
        --angles 32 --seeds 1 2

``--diagnose`` measures why the extended method stops short (docs/extended_samples.md,
"Alignment"): on the extended sample without and with noise and planes it runs the
extended method, the same with held-out folds on the last level too
(``joint_last_level: false``) and the joint fit of one widened volume to all angles on
every level (``cross_folds: 1``, no momentum), each from zero and from the true shifts,
and prints
the error and the last weighted residual of each run. A method whose estimate leaves the
true shifts is biased there; one that ends far from them at a residual no larger than at
the truth cannot tell them apart (the data leave the shifts undetermined).

``--from-truth`` starts every run at the true shifts (a method whose end point is not the
truth then is biased there, whatever its reach); ``--levels`` also prints the error at the
end of each binning level, split across / along the wires.

``--layers`` gives the extended method the layout's layer stack (the LEF's interfaces,
``align.layer_lef``): its joint last level fits a stack of layers instead of voxels
(docs/extended_samples.md, "A layered volume"); it needs the layout files.

``--bound-smooth K`` bounds the error of the shift patterns smooth over the angles
(harmonics 0 to K less the unobservable translations) with the widened volume unknown,
against the same with it known (docs/extended_samples.md, "The volume unknown");
``--bound`` the error of every shift with the volume known.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from _args import positive_int

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpc_adept.align import AlignResult, projection_matching  # noqa: E402
from hpc_adept.config import AlignConfig, ConfigError, load_config  # noqa: E402
from tests.extended_sample import (  # noqa: E402
    IC_LEF,
    TILT,
    VOXEL_M,
    Sample,
    extended_sample,
    shift_error,
    shift_error_px,
)

NOISE = 0.02     # the samples' noise, relative to the projections' RMS (the bounds')
PRIOR_PX = 2.0   # the bounds' prior: the samples' shift_sigma_px
METHODS = {
    "region-only": dict(sample="isolated", momentum=0.0),
    "extended": dict(sample="extended"),
}
CASES = (("isolated", False, 0.0), ("extended", True, 0.0), ("extended+planes", True, 0.5))
SWITCHES = {  # the benchmark's on/off flags and their help
    "--structure": "print what the region holds to fix the shifts (how one-way, its share of "
                   "the signal, metal), no alignment",
    "--bound": "print a lower bound on the error any method can reach on each crop (the "
               "volume known exactly; on the unshifted window), no alignment",
    "--diagnose": "from zero and from the true shifts (see the module's docstring)",
    "--layers": "the layout's layer stack as the last level's volume prior",
    "--from-truth": "start every alignment run at the true shifts (is the method's end point "
                    "the truth?)",
    "--levels": "also print the error at the end of each binning level of every alignment "
                "run, across / along the wires",
    "--split": "also split each error across / along each projection's dominant structure "
               "(the wires)",
}
DIAGNOSE = {
    "extended": dict(sample="extended"),
    "folds": dict(sample="extended", joint_last_level=False),
    "joint": dict(sample="extended", cross_folds=1, momentum=0.0),
}


def eigen_floor(text: str) -> float | str:
    """``auto`` or a number (``align.flow_eigen_floor``)."""
    return text if text == "auto" else float(text)


def align_setting(text: str) -> str:
    """``KEY=VALUE``: one ``align`` setting other than ``sample`` (which ``--methods``
    chooses); its value is read and checked as a config override's."""
    key, sep, _ = text.partition("=")
    names = {f.name for f in dataclasses.fields(AlignConfig)} - {"sample"}
    if not sep or key not in names:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE with KEY an align "
                                         "setting other than sample")
    return text


def with_settings(base: AlignConfig, settings: list[str]) -> AlignConfig:
    """``base`` with the ``--set`` settings, each read, typed and checked as
    ``adept --set align.KEY=VALUE`` would (ConfigError on a bad one)."""
    if not settings:
        return base
    given = load_config(None, [f"align.{text}" for text in settings]).align
    keys = {text.partition("=")[0] for text in settings}
    options = dataclasses.replace(base, **{key: getattr(given, key) for key in keys})
    options.check()
    return options


def across_and_along(error: np.ndarray, clean: np.ndarray, highpass_px: float
                     ) -> tuple[float, float]:
    """RMS (px) of the shift ``error`` [n, 2] across and along each projection's dominant
    structure (the large and small eigenvector of the structure tensor of the noise-free
    projections ``clean`` [n, nv, nu]): for wires running one way, across and along the
    wires. Each is an RMS over the angles of one component (the two squared sum to twice
    the squared error that the table reports)."""
    import torch

    from hpc_adept.align.estimate import structure_tensor
    from hpc_adept.align.imaging import reflected_highpass_with_gradient

    _, d_row, d_col = reflected_highpass_with_gradient(torch.as_tensor(clean).double(),
                                                       highpass_px)
    a_rr, a_rc, a_cc = (t.numpy() for t in structure_tensor(d_row, d_col))
    angle = 0.5 * np.arctan2(2.0 * a_rc, a_rr - a_cc)  # of the large eigenvector
    across = error[:, 0] * np.cos(angle) + error[:, 1] * np.sin(angle)
    along = -error[:, 0] * np.sin(angle) + error[:, 1] * np.cos(angle)
    return float(np.sqrt(np.mean(across ** 2))), float(np.sqrt(np.mean(along ** 2)))


def structure(region: tuple[int, int, int], n_angles: int, seed: int,
              corner_um: tuple[float, float], highpass_px: float) -> None:
    """What the region itself holds to fix the shifts, on noise-free, unshifted projections
    of its detector window: how one-way each projection's structure is (the aperture
    problem: the ratio of the small to the large eigenvalue of its high-passed 2 x 2
    structure tensor, the normal matrix of the optical-flow solve), for the whole chip and
    for the region alone (the chip around it removed), the region's share of the window's
    high-passed signal, and the fraction of the region's voxels that hold metal."""
    import torch

    from hpc_adept.align.estimate import structure_ratio
    from hpc_adept.align.imaging import reflected_highpass_with_gradient
    from hpc_adept.lamino import Geometry, LaminoOperator
    from hpc_adept.lamino.region import extended_shape, lateral_margin_px
    from hpc_adept.stages.simulate import auto_projection_shape
    from tests.extended_sample import VOXEL_M, phantom

    window = auto_projection_shape(region, TILT)
    margin = lateral_margin_px(region, window, TILT)
    wide = extended_shape(region, margin)
    corner = tuple(c - margin * VOXEL_M * 1e6 for c in corner_um)
    chip = torch.from_numpy(phantom(wide, "layout", seed, corner))
    alone = torch.zeros_like(chip)
    inside = (slice(None), slice(margin, margin + region[1]), slice(margin, margin + region[2]))
    alone[inside] = chip[inside]
    op = LaminoOperator(Geometry(np.arange(n_angles) * 360.0 / n_angles, TILT, wide, window),
                        kernel="torch")
    with torch.no_grad():
        energy, ratio = {}, {}
        for name, volume in (("chip", chip), ("region", alone)):
            projections = op.forward(volume)
            filtered, _, _ = reflected_highpass_with_gradient(projections, highpass_px)
            energy[name] = float((filtered ** 2).sum())
            ratio[name] = float(structure_ratio(projections, highpass_px).median())
    if energy["chip"] <= 0.0:
        print(f"seed {seed} corner {list(corner_um)}: the window holds no structure", flush=True)
        return
    print(f"seed {seed} corner {list(corner_um)}: eigenvalue ratio (median) chip "
          f"{ratio['chip']:.2f}, region alone {ratio['region']:.2f}; the region holds "
          f"{energy['region'] / energy['chip']:.2f} of the high-passed signal; metal in "
          f"{float((chip[inside] > 0).double().mean()):.3f} of its voxels", flush=True)


def shift_bound(clean: np.ndarray, angles: np.ndarray, noise: float, shift_sigma_px: float,
                planes: bool) -> tuple[float, np.ndarray]:
    """A lower bound on the shift error any method can reach on these data, as the
    benchmark scores it (px RMS, global offset and rigid drift removed): the Bayesian
    (Van Trees) Cramer-Rao bound of each projection's shift with the projection of the
    volume known exactly (:mod:`hpc_adept.align.precision`; a method must also estimate
    the volume, so it does worse).

    ``clean`` [n, nv, nu]: the noise-free window unshifted (a physical shift moves the
    information with the structure; :func:`bound` says why not the samples' shifted one);
    white Gaussian noise of
    ``noise`` times its RMS; each shift a priori Gaussian of ``shift_sigma_px`` per
    component; with ``planes`` each projection's offset and ramp are unknown too.
    Returns the bound and each projection's bound along its worst direction [n] (px)."""
    import torch

    from hpc_adept.align.drift import rigid_drift_basis
    from hpc_adept.align.precision import direction_bounds_px, shift_information

    n = clean.shape[0]
    sigma = noise * float(np.sqrt(np.mean(clean ** 2)))
    information = shift_information(torch.from_numpy(clean), sigma, planes=planes,
                                    prior_px=shift_sigma_px)
    covariance = np.zeros((2 * n, 2 * n))
    for k, block in enumerate(torch.linalg.inv(information).numpy()):
        covariance[2 * k:2 * k + 2, 2 * k:2 * k + 2] = block
    gauge = np.concatenate([np.tile(np.eye(2), (n, 1)),
                            rigid_drift_basis(angles, TILT).reshape(2 * n, 3)], axis=1)
    # the z translation's pattern is a multiple of the row offset: the gauge has rank 4
    keep = np.eye(2 * n) - gauge @ np.linalg.pinv(gauge)  # the error the score keeps
    worst = direction_bounds_px(information)[:, 1].numpy()
    return float(np.sqrt(np.trace(keep @ covariance @ keep) / (2 * n))), worst


def bound(region: tuple[int, int, int], n_angles: int, seed: int,
          corner_um: tuple[float, float], planes: bool) -> None:
    """Print :func:`shift_bound` for the benchmark's crop."""
    # the noise-free window unshifted: a shift moves the information with the structure,
    # but the sample's Fourier shift of its grown window rings into the window's edge
    # (its periodic wrap), which the bound would take for information (seed 12: 0.013 px
    # shifted, 0.221 unshifted; docs/extended_samples.md, thirteenth session)
    clean = extended_sample(region, n_angles, seed, corner_um=corner_um, noise=0.0,
                            shift_sigma_px=0.0)
    value, worst = shift_bound(np.asarray(clean.measured, np.float64), clean.angles, NOISE,
                               PRIOR_PX, planes)
    print(f"seed {seed} corner {list(corner_um)}: no method does better than {value:.4f} px "
          f"RMS (volume known; 2 % noise{', offsets and ramps unknown' if planes else ''}); "
          f"projections whose shift is bounded above 0.15 px along some direction: "
          f"{int((worst > 0.15).sum())} of {n_angles} (worst {worst.max():.2f} px)", flush=True)


def smooth_bound(region: tuple[int, int, int], n_angles: int, seed: int,
                 corner_um: tuple[float, float], highest: int, iterations: int) -> None:
    """A lower bound on the error of the shift patterns smooth over the angles (harmonics
    0 to ``highest``, row and column, less the translations that no alignment observes)
    when the widened volume is unknown, against the same bound with the volume known
    (:func:`hpc_adept.align.precision.pattern_information`): the volume that holds every
    point the window sees, offsets and ramps unknown, 2 % noise, a prior of 2 px per
    pattern, the other shifts known. The volume fits run ``iterations`` CGLS steps: the
    bound rises with them (a fit that explains more leaves less information), so it is a
    lower bound at any count, and says only what the early stop's implicit prior allows.
    Each printed value is an RMS over all ``2 n`` shift components, as the benchmark
    scores (the patterns' share of it)."""
    import torch

    from hpc_adept.align.drift import rigid_drift_basis
    from hpc_adept.align.patterns import harmonic_patterns
    from hpc_adept.align.plane import orthonormal_planes, plane_basis, remove_planes
    from hpc_adept.align.precision import (
        pattern_information,
        shift_information,
        stencil_gradient,
    )
    from hpc_adept.lamino import Geometry, LaminoOperator
    from hpc_adept.lamino.region import extended_shape, lateral_margin_px

    # aligned: the operator below projects without shifts (the derivatives are those at
    # the true shifts of the volume's own projections)
    clean = extended_sample(region, n_angles, seed, corner_um=corner_um, noise=0.0,
                            shift_sigma_px=0.0)
    projections = torch.as_tensor(np.asarray(clean.measured, np.float64))
    sigma = NOISE * float(projections.pow(2).mean().sqrt())
    wide = extended_shape(region, lateral_margin_px(region, clean.window, TILT))
    op = LaminoOperator(Geometry(clean.angles, TILT, wide, clean.window), kernel="torch")
    planes = orthonormal_planes(plane_basis(clean.window, 1, projections))
    patterns = harmonic_patterns(clean.angles, 0, highest,
                                 gauge=rigid_drift_basis(clean.angles, TILT))
    d_row, d_col = stencil_gradient(projections)
    t0 = time.perf_counter()
    unknown = pattern_information(op, d_row, d_col, patterns, sigma, iterations,
                                  blind=lambda images: remove_planes(images, planes))
    seconds = time.perf_counter() - t0
    per_angle = shift_information(projections, sigma, planes=True)  # [n, 2, 2]
    known = torch.einsum("pna,nab,qnb->pq", patterns, per_angle, patterns)
    prior = torch.eye(len(patterns), dtype=torch.float64) / PRIOR_PX ** 2

    def rms(information: torch.Tensor) -> float:
        covariance = torch.linalg.inv(information + prior)
        return float(torch.sqrt(torch.trace(covariance) / (2 * n_angles)))

    print(f"seed {seed} corner {list(corner_um)}: the {len(patterns)} observable patterns "
          f"of harmonics 0-{highest}: no method does better than {rms(unknown):.4f} px RMS "
          f"with the widened volume {list(wide)} unknown ({iterations} CGLS iterations, "
          f"{seconds:.0f} s), {rms(known):.4f} px with it known; the prior alone "
          f"{rms(torch.zeros_like(prior)):.4f}", flush=True)


def level_ends(result: AlignResult, sample: Sample, clean: np.ndarray, highpass_px: float
               ) -> list[str]:
    """``binning L: E px (across A, along B)``: the error (px RMS as scored) of the shifts
    each binning level of ``result`` (an alignment of ``sample``) handed on, in the order
    the levels ran; ``clean`` [n, nv, nu]: the noise-free projections
    (:func:`across_and_along`)."""
    history = result.history
    lines = []
    for k, entry in enumerate(history):
        level = entry["level"]
        if k + 1 < len(history) and history[k + 1]["iteration"] > 0:
            continue  # not a level's last iteration (each level counts from 0)
        error = shift_error(result.shifts_per_iteration[k], sample.shifts, sample.angles)
        across, along = across_and_along(error, clean, highpass_px)
        lines.append(f"binning {level}: {float(np.sqrt(np.mean(error ** 2))):.4f} px "
                     f"(across {across:.4f}, along {along:.4f})")
    return lines


def diagnose(base: AlignConfig, region: tuple[int, int, int], n_angles: int, seed: int,
             corner_um: tuple[float, float], edges: tuple[float, ...] | None = None) -> None:
    """Each method from zero and from the true shifts, without and with noise and planes
    (``edges``: the layer stack's interfaces, voxels, for the joint last level)."""
    for noise, plane in ((0.0, 0.0), (NOISE, 0.5)):
        sample = extended_sample(region, n_angles, seed, corner_um=corner_um, noise=noise,
                                 plane_rad=plane)
        for method, changes in DIAGNOSE.items():
            # no smooth-pattern check: these runs print errors and residuals only
            options = dataclasses.replace(base, smooth_check_px=0.0, **changes)
            for start in ("zero", "truth"):
                initial = sample.shifts if start == "truth" else None
                t0 = time.perf_counter()
                result = projection_matching(sample.measured, sample.angles, TILT, options,
                                             initial_shifts_px=initial, layer_edges_px=edges)
                seconds = time.perf_counter() - t0
                error = shift_error_px(result.shifts_px, sample.shifts, sample.angles)
                print(f"seed {seed} noise {noise:.2f} planes {plane:.1f} {method:9s} from "
                      f"{start:5s}: shift error {error:6.3f} px RMS, residual "
                      f"{result.history[-1]['residual_rms']:.4g}, {len(result.history)} "
                      f"iterations, {seconds:6.1f} s", flush=True)


def layout_layer_edges() -> tuple[float, ...]:
    """The layout LEF's layer interfaces in voxels (the samples' regions start at the
    substrate); exits with one line without the layout."""
    from hpc_adept.align.layers import lef_interfaces_um

    if not IC_LEF.is_file():
        sys.exit(f"--layers needs the layout's LEF ({IC_LEF}); the procedural fallback has "
                 f"another stack")
    return tuple(h * 1e-6 / VOXEL_M for h in lef_interfaces_um(IC_LEF))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--region", type=positive_int, nargs=3, default=[40, 56, 56])
    parser.add_argument("--angles", type=positive_int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--binning", type=positive_int, nargs="+", default=[4, 2, 1])
    parser.add_argument("--highpass", type=float, default=8.0,
                        help="align.highpass_sigma_px")
    parser.add_argument("--coarse-rounds", type=int, default=3, help="align.coarse_rounds")
    parser.add_argument("--max-iterations", type=positive_int, default=50,
                        help="align.max_iterations (per level)")
    parser.add_argument("--coarse-lowpass", type=float, default=8.0,
                        help="align.coarse_lowpass_px (4 for windows under ~64 px)")
    parser.add_argument("--corner", type=float, nargs=2, default=[40.0, 28.0],
                        help="layout coordinates (um) of the region's corner")
    parser.add_argument("--flow-eigen-floor", type=eigen_floor, default="auto",
                        help="align.flow_eigen_floor (auto: 0.1 for the extended method, 0 "
                             "for the region-only one)")
    parser.add_argument("--coarse-flow-eigen-floor", type=eigen_floor, default="auto",
                        help="align.coarse_flow_eigen_floor (auto: 0.3 for the extended "
                             "method, at least --flow-eigen-floor; the tables before "
                             "2026-12-05's fourth session used --flow-eigen-floor on every "
                             "level: pass the same value here to repeat them)")
    parser.add_argument("--smooth-gain", type=float, default=1.0,
                        help="align.smooth_gain (0 repeats the tables before it)")
    parser.add_argument("--smooth-harmonics", type=positive_int, default=4,
                        help="align.smooth_harmonics")
    parser.add_argument("--cases", nargs="+", choices=[c[0] for c in CASES],
                        default=[c[0] for c in CASES], help="which cases to run")
    parser.add_argument("--bound-smooth", type=positive_int, default=0, metavar="K",
                        help="the bound on the patterns of harmonics 0 to K (less the four "
                             "unobservable translations) with the widened "
                             "volume unknown (smooth_bound) instead of the alignment")
    parser.add_argument("--bound-iterations", type=positive_int, default=150,
                        help="CGLS iterations of that bound's volume fits")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        type=align_setting, help="any other align.KEY (a YAML value; "
                        "repeatable), e.g. --set momentum=0")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="which methods to run")
    for flag, text in SWITCHES.items():
        parser.add_argument(flag, action="store_true", help=text)
    args = parser.parse_args()
    no_alignment = [flag for flag in ("--structure", "--bound", "--diagnose")
                    if getattr(args, flag[2:])] + (["--bound-smooth"] if args.bound_smooth
                                                   else [])
    if (args.from_truth or args.levels) and no_alignment:
        parser.error(f"--from-truth and --levels apply to the alignment runs, which "
                     f"{no_alignment[0]} replaces")
    region = tuple(args.region)
    base = AlignConfig(volume_shape=region, binning=tuple(args.binning),
                       highpass_sigma_px=args.highpass, coarse_rounds=args.coarse_rounds,
                       coarse_lowpass_px=args.coarse_lowpass,
                       max_iterations=args.max_iterations,
                       flow_eigen_floor=args.flow_eigen_floor,
                       coarse_flow_eigen_floor=args.coarse_flow_eigen_floor,
                       smooth_gain=args.smooth_gain, smooth_harmonics=args.smooth_harmonics)
    try:
        base = with_settings(base, args.set)
    except ConfigError as error:
        parser.error(f"--set: {error}")
    settings = {text.partition("=")[0]: getattr(base, text.partition("=")[0])
                for text in args.set}
    print(f"region {list(region)}, {args.angles} angles, tilt {TILT} deg, binning "
          f"{args.binning}, highpass {args.highpass} px, coarse rounds {args.coarse_rounds}, "
          f"coarse low-pass {args.coarse_lowpass} px, flow eigen floor "
          f"{args.flow_eigen_floor} ({args.coarse_flow_eigen_floor} on the coarser levels), "
          f"corner {args.corner} um" + "".join(f", {k} {v}" for k, v in settings.items()))
    edges = layout_layer_edges() if args.layers else None
    for seed in args.seeds:
        if args.structure:
            structure(region, args.angles, seed, tuple(args.corner), args.highpass)
            continue
        if args.bound_smooth:
            smooth_bound(region, args.angles, seed, tuple(args.corner), args.bound_smooth,
                         args.bound_iterations)
            continue
        if args.bound:
            bound(region, args.angles, seed, tuple(args.corner), "extended+planes" in args.cases)
            continue
        if args.diagnose:
            diagnose(base, region, args.angles, seed, tuple(args.corner), edges)
            continue
        for case, extended, plane in CASES:
            if case in args.cases:
                align_case(args, base, settings, edges, seed, (case, extended, plane))


def align_case(args: argparse.Namespace, base: AlignConfig, settings: dict,
               edges: tuple[float, ...] | None, seed: int,
               case: tuple[str, bool, float]) -> None:
    """Every ``--methods`` on one crop and one of :data:`CASES`, one line each (and the
    ``--levels`` and ``--split`` lines)."""
    name_of_case, extended, plane = case
    region = tuple(args.region)
    clean = np.asarray(extended_sample(region, args.angles, seed, extended=extended,
                                       noise=0.0, corner_um=tuple(args.corner)).measured) \
        if args.split or args.levels else None
    sample = extended_sample(region, args.angles, seed, extended=extended, plane_rad=plane,
                             corner_um=tuple(args.corner), noise=NOISE,
                             shift_sigma_px=PRIOR_PX)
    before = shift_error_px(np.zeros_like(sample.shifts), sample.shifts, sample.angles)
    for method in args.methods:
        # --set wins over a method's own settings (e.g. the region-only momentum)
        options = dataclasses.replace(base, **{**METHODS[method], **settings})
        t0 = time.perf_counter()
        result = projection_matching(
            sample.measured, sample.angles, TILT, options, layer_edges_px=edges,
            initial_shifts_px=sample.shifts if args.from_truth else None)
        seconds = time.perf_counter() - t0
        error = shift_error_px(result.shifts_px, sample.shifts, sample.angles)
        check = result.smooth_check
        told = "" if check is None else \
            (f", smooth check: stopped {check.smooth_distance:.0%} of "
             f"{check.pattern_px:.2f} px away ({check.along_pattern:.0%} along it; "
             f"{'taken back' if check.determined else 'NOT TAKEN BACK'}, "
             f"{check.seconds:.0f} s of the time)")
        name = f"seed {seed} {name_of_case:16s} {method:12s}"
        start = ", started at the truth" if args.from_truth else ""
        print(f"{name} shift error {error:7.3f} px RMS (before {before:.3f}{start}), "
              f"{len(result.history)} iterations, {seconds:7.1f} s{told}", flush=True)
        lines = level_ends(result, sample, clean, base.highpass_sigma_px) \
            if args.levels else []
        if args.split:
            across, along = across_and_along(
                shift_error(result.shifts_px, sample.shifts, sample.angles), clean,
                base.highpass_sigma_px)
            lines.append(f"across the structure {across:.3f} px RMS, along it {along:.3f}")
        for line in lines:
            print(f"{name} {line}", flush=True)


if __name__ == "__main__":
    main()
