"""Projection-matching alignment: accuracy on a real-layout phantom and time per iteration.

Sections (each prints its numbers; all in one run):

1. accuracy without noise: the real IC layout (``../shared/data/ic``; the procedural phantom
   with a notice when absent), projections shifted by known random shifts (sigma 3 px,
   clipped at 10 px), aligned with the default options; RMS error of the shifts after
   removing the global offset and the rigid sin/cos drift, and the FBP Pearson correlation
   with the phantom from the shifted, the aligned and the unshifted projections.
2. accuracy with the noise of a real 1e5-photon ptychographic reconstruction: with
   ``--ptycho-run DIR`` (a run directory whose ``projections.h5`` came from ``adept ptycho``
   on a dataset simulated by ``adept simulate`` with ``--ptycho-dataset``), the LSQ-ML
   projections are shifted by known shifts and aligned; the same numbers as in 1.
3. time per alignment iteration for ``--timing-angles`` angles of ``--timing-shape``
   projections (default 125 of 256 x 256, volume 144 x 160 x 160) at each binning level,
   with the operators shared over the MPI ranks of this run (run it under
   ``mpiexec -n 2`` for the two-rank time: then only this section runs).

Commands::

    .venv/bin/python profiling/bench_align.py --ptycho-run /tmp/b5/run \
        --ptycho-dataset /tmp/b5/dataset
    .venv/bin/mpiexec -n 2 .venv/bin/python profiling/bench_align.py --timing-only
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _args import device_arg, positive_int

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpc_adept.align import (  # noqa: E402
    fourier_shift,
    projection_matching,
    remove_rigid_drift,
)
from hpc_adept.config import AlignConfig  # noqa: E402
from hpc_adept.io import read_ground_truth, read_projections  # noqa: E402
from hpc_adept.lamino import Geometry, fbp, project  # noqa: E402
from hpc_adept.parallel import DistributedLaminoOperator, get_context  # noqa: E402
from hpc_adept.phantom import make_phantom  # noqa: E402
from hpc_adept.stages.align import shift_and_crop  # noqa: E402
from hpc_adept.stages.simulate import auto_projection_shape  # noqa: E402

IC = (REPO / ".." / "shared" / "data" / "ic").resolve()
TILT = 61.0


def residual_error(estimate: np.ndarray, truth: np.ndarray, angles: np.ndarray
                   ) -> tuple[float, float]:
    """RMS and max shift error (px) after removing the global offset and the rigid drift."""
    err = estimate - truth
    for _ in range(3):  # the drift basis holds a row offset, the mean a column offset
        err = err - err.mean(axis=0)
        err, _ = remove_rigid_drift(err, angles, TILT)
    return float(np.sqrt(np.mean(err ** 2))), float(np.abs(err).max())


def pcc(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def random_shifts(n: int, seed: int) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).normal(0.0, 3.0, (n, 2)), -10.0, 10.0)


def phantom(shape: tuple[int, int, int]) -> np.ndarray:
    """Per-voxel phase [nz, ny, nx] float64 of the demo crop of the real layout."""
    if (IC / "gcd_nangate45.def").is_file():
        occ = make_phantom("layout", shape, 2.72e-8, layout_def=IC / "gcd_nangate45.def",
                           layout_lef=IC / "Nangate45_tech.lef", crop_origin_um=(40.0, 28.0))
    else:
        print(f"NOTICE: {IC} not found: procedural phantom instead of the real layout")
        occ = make_phantom("procedural", shape, 2.72e-8, seed=0)
    return occ.astype(np.float64) * 0.026


def accuracy(label: str, measured_ideal: np.ndarray, ideal: np.ndarray, truth_volume: np.ndarray,
             angles: np.ndarray, options: AlignConfig, seed: int) -> None:
    """Shift ``measured_ideal`` by known shifts, align, print the errors and FBP PCCs."""
    n = len(angles)
    shifts = random_shifts(n, seed)
    measured = fourier_shift(torch.from_numpy(measured_ideal.astype(np.float64)),
                             torch.from_numpy(shifts)).float()
    volume_shape = truth_volume.shape
    t0 = time.perf_counter()
    result = projection_matching(measured, angles, TILT,
                                 dataclasses.replace(options, volume_shape=volume_shape))
    seconds = time.perf_counter() - t0
    rms, worst = residual_error(result.shifts_px, shifts, angles)
    before, _ = residual_error(np.zeros_like(shifts), shifts, angles)
    geometry = Geometry(angles, TILT, volume_shape, ideal.shape[1:])
    full = ideal.shape[1:]
    aligned = shift_and_crop(measured.numpy(), result.shifts_px, full)
    volumes = {
        "shifted": fbp(measured.numpy(), geometry),
        "aligned": fbp(aligned, geometry),
        "unshifted": fbp(measured_ideal.astype(np.float32), geometry),
    }
    levels = sorted({h["level"] for h in result.history}, reverse=True)
    counts = [sum(h["level"] == b for h in result.history) for b in levels]
    print(f"[{label}] {n} angles, projections {list(full)}, volume {list(volume_shape)}")
    print(f"[{label}] shift RMS before {before:.3f} px; after alignment RMS {rms:.4f} px, "
          f"max {worst:.4f} px (offset and rigid drift removed)")
    print(f"[{label}] iterations per binning level {dict(zip(levels, counts, strict=True))}, "
          f"alignment {seconds:.1f} s")
    print(f"[{label}] FBP PCC with the phantom: " +
          ", ".join(f"{k} {pcc(v, truth_volume):.4f}" for k, v in volumes.items()))


def section_noise_free(options: AlignConfig, shape: tuple[int, int, int], n_angles: int
                       ) -> None:
    volume = phantom(shape)
    angles = np.arange(n_angles) * 360.0 / n_angles
    det = auto_projection_shape(shape, TILT)
    ideal = project(torch.from_numpy(volume), Geometry(angles, TILT, shape, det)).numpy()
    accuracy("noise-free", ideal, ideal, volume, angles, options, seed=11)


def section_ptycho(options: AlignConfig, run_dir: Path, dataset: Path) -> None:
    ps = read_projections(run_dir / "projections.h5")
    truth = read_ground_truth(dataset / "ground_truth.h5", require_occupancy=False).volume
    truth = truth.astype(np.float64)
    geometry = Geometry(ps.angles_deg, ps.tilt_deg, truth.shape, ps.projections.shape[1:])
    ideal = project(torch.from_numpy(truth), geometry).numpy()
    recon = ps.projections.astype(np.float64)
    # LSQ-ML phase has a free offset per projection: compare after removing it
    inside = ideal > 0.05 * ideal.max()
    diff = recon - ideal
    diff -= np.array([d[m].mean() for d, m in zip(diff, inside, strict=True)])[:, None, None]
    noise = float(np.sqrt(np.mean(diff[inside] ** 2)))
    print(f"[ptycho] {run_dir / 'projections.h5'}: LSQ-ML phase error RMS {noise:.4f} rad "
          f"(signal RMS {float(np.sqrt(np.mean(ideal[inside] ** 2))):.4f} rad) where the "
          f"projection is > 5 % of its max")
    base = projection_matching(torch.from_numpy(ps.projections), ps.angles_deg, TILT,
                               dataclasses.replace(options, volume_shape=truth.shape))
    print(f"[ptycho] shifts found in the unshifted LSQ-ML projections: RMS "
          f"{residual_error(base.shifts_px, np.zeros_like(base.shifts_px), ps.angles_deg)[0]:.4f}"
          f" px (offset and drift removed)")
    accuracy("ptycho 1e5", recon, ideal, truth, ps.angles_deg, options, seed=12)


def section_timing(args: argparse.Namespace) -> None:
    ctx = get_context()
    device = torch.device(args.device)
    n, (nv, nu) = args.timing_angles, args.timing_shape
    volume_shape = tuple(args.timing_volume)
    angles = np.arange(n) * 360.0 / n
    rng = np.random.default_rng(0)
    # a smooth random volume: timing does not depend on the content
    vol = torch.from_numpy(rng.standard_normal(volume_shape).astype(np.float32))
    operator = DistributedLaminoOperator(Geometry(angles, TILT, volume_shape, (nv, nu)),
                                         ctx=ctx)
    projections = operator.forward(vol.to(device))
    for factor in args.timing_levels:
        options = AlignConfig(binning=(factor,), max_iterations=args.timing_iterations,
                              tolerance_px=1e-9, coarse_rounds=0, volume_shape=volume_shape)
        if device.type == "cuda":
            torch.cuda.synchronize()
        result = projection_matching(projections, angles, TILT, options,
                                     ops=operator.with_geometry)
        times = [h["seconds"] for h in result.history]
        if ctx.is_root:
            print(f"[timing] {ctx.size} rank(s), {torch.get_num_threads()} thread(s), "
                  f"{device}: {n} angles of {nv}x{nu}, volume {list(volume_shape)}, binning "
                  f"{factor}: {len(times)} iterations, median {np.median(times):.2f} s, "
                  f"min {min(times):.2f} s per iteration "
                  f"(reconstruct_iterations={options.reconstruct_iterations})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=positive_int, nargs=3, default=[136, 96, 96],
                        help="phantom volume of section 1 (default: the demo crop)")
    parser.add_argument("--angles", type=positive_int, default=125)
    parser.add_argument("--ptycho-run", type=Path, default=None)
    parser.add_argument("--ptycho-dataset", type=Path, default=None)
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--timing-angles", type=positive_int, default=125)
    parser.add_argument("--timing-shape", type=positive_int, nargs=2, default=[256, 256])
    parser.add_argument("--timing-volume", type=positive_int, nargs=3, default=[144, 160, 160])
    parser.add_argument("--timing-levels", type=positive_int, nargs="+", default=[4, 2, 1])
    parser.add_argument("--timing-iterations", type=positive_int, default=3)
    parser.add_argument("--device", type=device_arg(),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads per rank (default: the node's cores / ranks)")
    args = parser.parse_args()
    for flag, path in (("--ptycho-run", args.ptycho_run),
                       ("--ptycho-dataset", args.ptycho_dataset)):
        if path is not None and not path.is_dir():
            parser.error(f"{flag}: {path} is not a directory")
    if args.threads:
        torch.set_num_threads(args.threads)
    options = AlignConfig()
    print(f"options: {options}")
    if not args.timing_only and get_context().size == 1:
        section_noise_free(options, tuple(args.shape), args.angles)
        if args.ptycho_run is not None:
            section_ptycho(options, args.ptycho_run, args.ptycho_dataset or
                           args.ptycho_run.parent / "dataset")
    if not args.no_timing:
        section_timing(args)


if __name__ == "__main__":
    # the cores of this node shared between the ranks on it
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // get_context().local_size))
    main()
