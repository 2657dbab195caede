"""Regions of a wide chip: FBP and the DIP on extended samples against the same regions
isolated, side by side (issue 18).

For every crop the script builds the projections of the chip around the region (the
layout widened by the detector window's reach, :mod:`hpc_adept.lamino.region`) onto the
region's window, and those of the region alone in vacuum; adds Gaussian noise (a fraction
of the RMS) and, optionally, per-projection phase offsets and ramps; then runs
``adept recon`` and ``adept evaluate`` for each variant and prints BER / PCC on the region:

    python profiling/extended_recon.py --crops 40,28 30,20 --angles 32 \\
        --variant "default=" --variant "no margin=recon.lateral_margin=0"

A variant is ``name=override;override;...`` (``adept --set`` syntax). Without the real
layout (../shared/data/ic) the procedural phantom is used, with a notice.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_adept.io import ProjectionSet, write_ground_truth, write_projections  # noqa: E402
from hpc_adept.lamino import Geometry, LaminoOperator  # noqa: E402
from hpc_adept.lamino.region import extended_shape, lateral_margin_px  # noqa: E402
from hpc_adept.phantom import ground_truth_volume, make_phantom  # noqa: E402
from hpc_adept.stages.simulate import auto_projection_shape  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IC = ROOT.parent / "shared" / "data" / "ic"
ENERGY_EV = 6200.0


def phantom(shape, voxel_m, origin_um, seed):
    """Occupancy of a layout crop (procedural without the layout)."""
    d, lef = IC / "gcd_nangate45.def", IC / "Nangate45_tech.lef"
    if d.is_file() and lef.is_file():
        return make_phantom("layout", shape, voxel_m, layout_def=d, layout_lef=lef,
                            crop_origin_um=origin_um, supersample=2)
    print("notice: layout not found, procedural phantom", file=sys.stderr)
    return make_phantom("procedural", shape, voxel_m, seed=seed)


def build(region, voxel_m, origin_um, n_angles, noise, plane_rad, seed, tilt=61.0):
    """(truth volume, occupancy, {kind: projections}) of one crop."""
    window = auto_projection_shape(region, tilt)
    m = lateral_margin_px(region, window, tilt)
    wide = extended_shape(region, m)
    shift_um = m * voxel_m * 1e6
    occ_wide = phantom(wide, voxel_m, (origin_um[0] - shift_um, origin_um[1] - shift_um),
                       seed)
    vol_wide = ground_truth_volume(occ_wide, ENERGY_EV, voxel_m).astype(np.float64)
    region_vol = vol_wide[:, m:m + region[1], m:m + region[2]]
    angles = np.arange(n_angles) * 360.0 / n_angles
    out = {}
    rng = np.random.default_rng(seed)
    for kind, vol in (("extended", vol_wide), ("isolated", region_vol)):
        op = LaminoOperator(Geometry(angles, tilt, vol.shape, window), kernel="torch")
        with torch.no_grad():
            p = op.forward(torch.from_numpy(np.ascontiguousarray(vol))).numpy()
        rms = math.sqrt(float(np.mean(p**2)))
        p = p + rng.standard_normal(p.shape) * noise * rms
        out[kind] = p
        if plane_rad > 0:
            v = (np.arange(window[0]) - (window[0] - 1) / 2) / (window[0] / 2)
            u = (np.arange(window[1]) - (window[1] - 1) / 2) / (window[1] / 2)
            c = rng.uniform(-plane_rad, plane_rad, (n_angles, 3))
            out[kind + "+planes"] = (p + c[:, 0, None, None] + c[:, 1, None, None] * v[:, None]
                                     + c[:, 2, None, None] * u[None, :])
    occ = occ_wide[:, m:m + region[1], m:m + region[2]]
    return region_vol.astype(np.float32), (occ >= 0.5).astype(np.uint8), angles, out, m


def adept(args, cwd):
    r = subprocess.run([sys.executable, "-m", "hpc_adept", *args], cwd=cwd,
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"adept {' '.join(args)}: {r.stderr.strip().splitlines()[-1:]}")


def run_variant(run_dir, config, overrides, methods):
    t0 = time.perf_counter()
    sets = [f"output.dir={run_dir}", f"recon.methods=[{','.join(methods)}]",
            "recon.input=projections", *overrides]
    adept(["recon", "-c", str(config), *sum((["--set", s] for s in sets), [])], ROOT)
    adept(["evaluate", "-c", str(config), *sum((["--set", s] for s in sets), [])], ROOT)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: metrics[k] for k in methods}, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "jobs/configs/extended_study.yaml")
    ap.add_argument("--crops", nargs="+", default=["40,28"], help="crop origins x,y (um)")
    ap.add_argument("--region", default="40,56,56")
    ap.add_argument("--voxel-nm", type=float, default=27.2)
    ap.add_argument("--angles", type=int, default=32)
    ap.add_argument("--noise", type=float, default=0.02)
    ap.add_argument("--planes-rad", type=float, default=0.5)
    ap.add_argument("--kinds", default="extended,isolated,extended+planes")
    ap.add_argument("--methods", default="fbp,dip")
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--out", type=Path, default=ROOT / "runs/extended_study")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    region = tuple(int(n) for n in a.region.split(","))
    variants = [v.split("=", 1) for v in (a.variant or ["default="])]
    rows = []
    for crop in a.crops:
        origin = tuple(float(x) for x in crop.split(","))
        truth, occ, angles, data, m = build(region, a.voxel_nm * 1e-9, origin, a.angles,
                                            a.noise, a.planes_rad, a.seed)
        for kind in a.kinds.split(","):
            run_dir = a.out / f"{crop.replace(',', '_')}_{kind}"
            run_dir.mkdir(parents=True, exist_ok=True)
            write_ground_truth(run_dir / "ground_truth.h5", truth, occ, a.voxel_nm * 1e-9)
            write_projections(run_dir / "projections.h5", ProjectionSet(
                data[kind].astype(np.float32), angles, 61.0, a.voxel_nm * 1e-9))
            for name, sets in variants:
                overrides = [s for s in sets.split(";") if s] + [
                    f"recon.volume_shape=[{','.join(map(str, region))}]",
                    f"evaluate.reference={run_dir / 'ground_truth.h5'}"]
                scores, seconds = run_variant(run_dir, a.config, overrides,
                                              a.methods.split(","))
                for method, s in scores.items():
                    rows.append((crop, kind, name, method, s["ber"], s["pcc"],
                                 s["ber_all_layers"], s["pcc_all_layers"], seconds))
                    print(f"{crop:>8} {kind:>16} {name:>18} {method:>4}  BER {s['ber']:.4f} "
                          f"PCC {s['pcc']:.3f}  (all layers {s['ber_all_layers']:.4f} / "
                          f"{s['pcc_all_layers']:.3f})  {seconds:.0f} s", flush=True)
    (a.out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
