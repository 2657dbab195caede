"""Phase-projection extraction with and without a vacuum reference (issue 18, item 2).

Object phases are built from laminographic projections of IC phantoms onto a region's
detector window (region 40 x 56 x 56 voxels of 27.2 nm, L = 61 deg, 32 angles):

- ``isolated``: the region alone in vacuum;
- ``extended``: the chip continues around the region (the phantom widened by
  :func:`hpc_adept.lamino.region.lateral_margin_px`), projected with
  ``LaminoOperator(Geometry(angles, 61, wide_shape, region_detector_shape))``.

Each projection gets a random offset and linear ramp (each of the three coefficients
uniform in +-0.5 rad; the ramps are per field height / width) and Gaussian noise (``rel``:
2 % of the projections' RMS, as ``simulate.projection_noise``; ``abs``: 0.02 rad, about
what LSQ-ML leaves). For each ``ptycho.phase_reference`` method the table gives, in mrad,
RMS over the angles and pixels:

- ``fix``: of ``extracted - true`` after removing its best constant + ramp per projection
  (the part later stages cannot fix);
- ``left``: of that best constant + ramp (what later stages must fit, or get wrong when
  they trust the reference);

and the ``auto`` rule's statistics (:func:`hpc_adept.ptycho.phase.background_level`,
medians over the angles: the fraction of the field on the flat low level, below it, and
the level's sharpness)
and its choice (``v`` vacuum, ``p`` plane per angle; the stage takes ``vacuum`` for a data
set only when every angle does). The ``pick`` cases chose the rule's
thresholds; the ``check`` cases were run after. ``--ptycho`` adds LSQ-ML runs of small
simulated scans (one angle each) whose object is chip everywhere, also beyond the scanned
field.

Usage::

    OMP_NUM_THREADS=1 python profiling/phase_reference.py [--angles 32] [--ptycho]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from _args import non_negative_int, positive_int

from hpc_adept.lamino import Geometry, LaminoOperator
from hpc_adept.lamino.region import extended_shape, lateral_margin_px
from hpc_adept.phantom import ground_truth_volume, make_phantom
from hpc_adept.phantom.layout import centred_crop_origin, load_layout
from hpc_adept.phantom.procedural import procedural_phantom
from hpc_adept.ptycho.phase import extract_phase
from hpc_adept.stages.simulate import auto_projection_shape

REGION = (40, 56, 56)
TILT = 61.0
VOXEL = 27.2e-9
ENERGY = 6200.0
DEF = "../shared/data/ic/gcd_nangate45.def"
LEF = "../shared/data/ic/Nangate45_tech.lef"
METHODS = ("vacuum", "plane", "auto")


@dataclass(frozen=True)
class Case:
    """A phantom: ``procedural`` (``seed``, ``fill``) or ``layout`` (crop shift in um)."""

    name: str
    kind: str
    role: str  # 'pick' (chose the thresholds) or 'check'
    seed: int = 0
    fill: float = 0.5
    shift_um: tuple[float, float] = (0.0, 0.0)
    nz: int = REGION[0]


CASES = (
    Case("proc s1", "procedural", "pick", seed=1),
    Case("proc s1 fill .9", "procedural", "pick", seed=1, fill=0.9),
    Case("layout centre", "layout", "pick"),
    Case("proc s2", "procedural", "check", seed=2),
    Case("proc s3 fill .9", "procedural", "check", seed=3, fill=0.9),
    Case("proc s4 fill .7", "procedural", "check", seed=4, fill=0.7),
    Case("layout +20,-15 um", "layout", "check", shift_um=(20.0, -15.0)),
    Case("layout 80 thick", "layout", "check", shift_um=(-25.0, 10.0), nz=80),
)


def wide_volume(case: Case, wide: tuple[int, int, int]) -> np.ndarray:
    """Per-voxel phase (float64 ``wide``) of the case's phantom, the region at its centre."""
    if case.kind == "procedural":
        occ = procedural_phantom(wide, VOXEL, case.seed, fill=case.fill)
    else:
        layout, _ = load_layout(DEF, LEF)
        x0, y0 = centred_crop_origin(layout, wide, VOXEL)
        origin = (x0 + case.shift_um[0], y0 + case.shift_um[1])
        occ = make_phantom("layout", wide, VOXEL, layout_def=DEF, layout_lef=LEF,
                           crop_origin_um=origin, supersample=2)
    return ground_truth_volume(occ, ENERGY, VOXEL).astype(np.float64)


def projections(case: Case, angles: np.ndarray, pad: int = 0
                ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """True projections ``[n, nv + 2 pad, nu + 2 pad]`` of the isolated region and of the
    extended chip on the region's detector window (grown by ``pad`` on each side)."""
    region = (case.nz, *REGION[1:])
    window = auto_projection_shape(region, TILT)
    detector = (window[0] + 2 * pad, window[1] + 2 * pad)
    margin = lateral_margin_px(region, detector, TILT)
    wide = extended_shape(region, margin)
    volume = wide_volume(case, wide)
    isolated = np.zeros_like(volume)
    m, ny, nx = margin, REGION[1], REGION[2]
    isolated[:, m:m + ny, m:m + nx] = volume[:, m:m + ny, m:m + nx]
    op = LaminoOperator(Geometry(angles, TILT, wide, detector), kernel="torch")
    with torch.no_grad():
        out = [op.forward(torch.from_numpy(v)).numpy() for v in (isolated, volume)]
    return out[0], out[1], window


def basis(shape: tuple[int, int]) -> np.ndarray:
    """Constant and ramps per field height / width, ``[nv * nu, 3]``."""
    nv, nu = shape
    rows, cols = np.mgrid[0:nv, 0:nu]
    return np.stack([np.ones(nv * nu), (rows.ravel() - (nv - 1) / 2) / nv,
                     (cols.ravel() - (nu - 1) / 2) / nu], axis=1)


def split_error(error: np.ndarray, support: np.ndarray | None = None) -> tuple[float, float]:
    """(RMS after the best plane, RMS of that plane) of ``error`` [nv, nu] on ``support``."""
    support = np.ones(error.shape, bool) if support is None else support
    b = basis(error.shape)[support.ravel()]
    e = error[support]
    plane = b @ np.linalg.lstsq(b, e, rcond=None)[0]
    return float(np.sqrt(np.mean((e - plane) ** 2))), float(np.sqrt(np.mean(plane**2)))


def measure(truth: np.ndarray, noise: str, rng: np.random.Generator) -> dict:
    """Per method: (fix, left) RMS in rad; the rule's statistics and choices."""
    sigma = 0.02 * float(np.sqrt(np.mean(truth**2))) if noise == "rel" else 0.02
    b = basis(truth.shape[1:])
    sums = {m: np.zeros(2) for m in METHODS}
    levels, belows, sharps, choices = [], [], [], []
    for proj in truth:
        disturbed = proj + (b @ rng.uniform(-0.5, 0.5, 3)).reshape(proj.shape)
        disturbed += sigma * rng.standard_normal(proj.shape)
        obj = np.exp(1j * disturbed)
        for method in METHODS:
            out = extract_phase(obj, proj.shape, reference=method)
            sums[method] += np.square(split_error(out.phase - proj))
            if method == "auto":
                levels.append(out.background.level)
                belows.append(out.background.below)
                sharps.append(out.background.sharpness)
                choices.append(out.reference[0])
    n = len(truth)
    return {"rms": {m: np.sqrt(sums[m] / n) for m in METHODS},
            "level": float(np.median(levels)), "below": float(np.median(belows)),
            "sharp": float(np.median(sharps)),
            "choice": "".join(sorted(set(choices))) + f" {choices.count('v')}/{n}"}


def table(angles: np.ndarray) -> None:
    """Print the table of the synthetic object phases."""
    head = ("| case | set | sample | noise | level | below | sharp | auto | "
            + " | ".join(f"{m} fix | {m} left" for m in METHODS) + " |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for case in CASES:
        t0 = time.perf_counter()
        isolated, extended, _ = projections(case, angles)
        for sample, truth in (("isolated", isolated), ("extended", extended)):
            for noise in ("rel", "abs"):
                r = measure(truth, noise, np.random.default_rng(7))
                cells = " | ".join(f"{1e3 * r['rms'][m][0]:.1f} | {1e3 * r['rms'][m][1]:.0f}"
                                   for m in METHODS)
                print(f"| {case.name} | {case.role} | {sample} | {noise} | {r['level']:.3f} | "
                      f"{r['below']:.3f} | {r['sharp']:.2f} | {r['choice']} | {cells} |",
                      flush=True)
        print(f"<!-- {case.name}: {time.perf_counter() - t0:.1f} s -->", flush=True)


def ptycho_runs(n_runs: int) -> None:
    """LSQ-ML of small simulated scans, the object chip everywhere (extended) or the region
    in vacuum (isolated), both beyond the scanned field too; true probe, 100 epochs,
    1e6 photons per pattern; scored on the field lit at >= half the maximum."""
    from hpc_adept import sim
    from hpc_adept.config import PtychoConfig
    from hpc_adept.ptycho import reconstruct

    frame, pad = 32, 20
    angles = np.arange(n_runs) * (360.0 / n_runs) + 11.0
    for case in (CASES[2], CASES[4]):  # layout centre (pick), procedural fill 0.9 (check)
        isolated, extended, window = projections(case, angles, pad=pad)
        for name, big in (("isolated", isolated), ("extended", extended)):
            for k in range(n_runs):
                rng = np.random.default_rng(k)
                probe = sim.make_probe(frame, 20.0)
                positions = sim.raster_positions(window, 7.0, 1.0, rng)
                obj = np.exp(1j * big[k])  # chip (or vacuum) beyond the field as well
                intensity = sim.diffraction_patterns(obj, pad, window,
                                                     probe * math.sqrt(1e6), positions)
                counts = rng.poisson(intensity).astype(np.float32)
                result = reconstruct(counts, positions, window, PtychoConfig(),
                                     probe=probe).to_host()
                print(ptycho_row(case, name, angles[k], result, big[k][pad:-pad, pad:-pad]),
                      flush=True)


def ptycho_row(case: Case, sample: str, angle: float, result, truth: np.ndarray) -> str:
    """One table row: each method's (fix, left) on the well-lit field, mrad."""
    cells = []
    for method in METHODS:
        out = extract_phase(result, reference=method)
        fix, left = split_error(out.phase - truth, _lit(result, truth.shape))
        cells.append(f"{1e3 * fix:.1f} | {1e3 * left:.0f}")
    g = out.background
    return (f"| ptycho {case.name} | {sample} | {angle:.0f} | {g.level:.3f} | {g.below:.3f} | "
            f"{g.sharpness:.2f} | {out.reference} | " + " | ".join(cells) + " |")


def _lit(result, window: tuple[int, int]) -> np.ndarray:
    """The field pixels lit at >= half the maximum illumination."""
    r0, c0 = result.grid.field_offset
    illum = np.asarray(result.illumination).real[r0:r0 + window[0], c0:c0 + window[1]]
    return illum >= 0.5 * illum.max()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--angles", type=positive_int, default=32)
    parser.add_argument("--ptycho", type=non_negative_int, default=0, metavar="N",
                        help="also N LSQ-ML runs per sample (0: none)")
    parser.add_argument("--no-table", action="store_true")
    args = parser.parse_args()
    angles = np.arange(args.angles) * (360.0 / args.angles)
    if not args.no_table:
        table(angles)
    if args.ptycho:
        print("\n| run | sample | angle | level | below | sharp | auto | "
              + " | ".join(f"{m} fix | {m} left" for m in METHODS) + " |")
        print("|" + "---|" * 13)
        ptycho_runs(args.ptycho)


if __name__ == "__main__":
    main()
