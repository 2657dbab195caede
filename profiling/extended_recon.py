"""Regions of a wide chip: FBP and the DIP on extended samples against the same regions
isolated, side by side (issue 18).

For every crop and kind the script runs ``adept simulate`` (``simulate.sample: extended``:
the chip around the region projected onto the region's window; ``isolated``: the region
alone in vacuum; ``+planes``: per-projection phase offsets and ramps) with Gaussian noise
(a fraction of the RMS), then ``adept recon`` and ``adept evaluate`` for each variant, and
prints BER / PCC and the vias recovered on the region:

    python profiling/extended_recon.py --crops 40,28 30,20 --angles 32 \\
        --variant "default=" --variant "no margin=recon.lateral_margin=0"

A variant is ``name=override;override;...`` (``adept --set`` syntax). Without the real
layout (../shared/data/ic) the procedural phantom is used, with a notice.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _args import existing_file, non_negative_float, non_negative_int, output_dir, positive_int

ROOT = Path(__file__).resolve().parents[1]
IC = ROOT.parent / "shared" / "data" / "ic"


def simulate(out_dir, config, region, voxel_m, origin_um, n_angles, noise, plane_rad, kind,
             seed):
    """``adept simulate`` of one case into ``out_dir`` (projections.h5 with the noise,
    ground_truth.h5 with the circuit); ``kind`` extended, isolated or either + "+planes"."""
    sample = kind.split("+")[0]
    planes = plane_rad if kind.endswith("+planes") else 0.0
    sets = [f"data.path={out_dir / 'dataset'}", f"output.dir={out_dir}",
            "simulate.phantom=layout", f"simulate.layout_def={IC / 'gcd_nangate45.def'}",
            f"simulate.layout_lef={IC / 'Nangate45_tech.lef'}", "simulate.layout_fallback=true",
            f"simulate.crop_origin_um=[{origin_um[0]},{origin_um[1]}]",
            f"simulate.volume_shape=[{','.join(map(str, region))}]",
            f"simulate.voxel_size_m={voxel_m}", f"simulate.n_angles={n_angles}",
            f"simulate.sample={sample}", "simulate.scans=false",
            "simulate.write_projections=true", f"simulate.projection_noise={noise}",
            f"simulate.phase_offset_rad={planes}", f"simulate.phase_ramp_rad={planes}",
            f"simulate.seed={seed}"]
    adept(["simulate", "-c", str(config), *sum((["--set", s] for s in sets), [])], ROOT)


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


def variant_run_dir(case_dir, name):
    """The run directory of one variant (its volumes and metrics kept side by side), with a
    link to the case's projections."""
    run_dir = case_dir / "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    run_dir.mkdir(exist_ok=True)
    link = run_dir / "projections.h5"
    if not link.exists():
        link.symlink_to((case_dir / "projections.h5").resolve())
    return run_dir


def via_count(scores):
    """(recovered, true) vias over every cut layer of ``metrics.json``'s circuit."""
    vias = (scores.get("circuit") or {}).get("vias") or {}
    return (sum(v["recovered"] for v in vias.values()), sum(v["vias"] for v in vias.values()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=existing_file,
                    default=ROOT / "jobs/configs/extended_study.yaml")
    ap.add_argument("--crops", nargs="+", default=["40,28"], help="crop origins x,y (um)")
    ap.add_argument("--region", default="40,56,56")
    ap.add_argument("--voxel-nm", type=non_negative_float, default=27.2)
    ap.add_argument("--angles", type=positive_int, default=32)
    ap.add_argument("--noise", type=non_negative_float, default=0.02)
    ap.add_argument("--planes-rad", type=non_negative_float, default=0.5)
    ap.add_argument("--kinds", default="extended,isolated,extended+planes")
    ap.add_argument("--methods", default="fbp,dip")
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--out", type=output_dir, default=str(ROOT / "runs/extended_study"))
    ap.add_argument("--seed", type=non_negative_int, default=0)
    a = ap.parse_args(argv)
    region = tuple(int(n) for n in a.region.split(","))
    variants = [v.split("=", 1) for v in (a.variant or ["default="])]
    rows = []
    for crop in a.crops:
        origin = tuple(float(x) for x in crop.split(","))
        for kind in a.kinds.split(","):
            run_dir = a.out / f"{crop.replace(',', '_')}_{kind}"
            run_dir.mkdir(parents=True, exist_ok=True)
            simulate(run_dir, a.config, region, a.voxel_nm * 1e-9, origin, a.angles, a.noise,
                     a.planes_rad, kind, a.seed)
            for name, sets in variants:
                variant_dir = variant_run_dir(run_dir, name)
                overrides = [s for s in sets.split(";") if s] + [
                    f"recon.volume_shape=[{','.join(map(str, region))}]",
                    f"evaluate.reference={run_dir / 'dataset' / 'ground_truth.h5'}"]
                scores, seconds = run_variant(variant_dir, a.config, overrides,
                                              a.methods.split(","))
                for method, s in scores.items():
                    vias = via_count(s)
                    rows.append((crop, kind, name, method, s["ber"], s["pcc"],
                                 s["ber_all_layers"], s["pcc_all_layers"], vias, seconds))
                    print(f"{crop:>8} {kind:>16} {name:>18} {method:>4}  BER {s['ber']:.4f} "
                          f"PCC {s['pcc']:.3f}  (all layers {s['ber_all_layers']:.4f} / "
                          f"{s['pcc_all_layers']:.3f})  vias {vias[0]}/{vias[1]}  "
                          f"{seconds:.0f} s", flush=True)
    (a.out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
