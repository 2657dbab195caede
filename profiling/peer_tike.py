"""tike's own simulated laminography data set, reconstructed by ``adept run`` and scored
against tike's own reconstructions of it (issue 19: "a peer's own simulated laminography
data set is reconstructed at least as well as that peer's own reconstruction").

The data set is tike's test fixture (AdvancedPhotonSource/tike ``tests/data/``):
``lamino_setup.pickle.lzma`` = ``[data, original, theta, tilt]`` written by
``tests/test_lamino.py::TestLaminoRecon.create_dataset`` (a 64^3 crop of a chip, complex
``delta + i beta``, projected by ``tike.lamino.simulate`` at 58 angles over 360 deg,
``tilt = pi/3``, no noise), and tike's reconstructions of it, ``lamino_cgrad.pickle.lzma``
(``tike.lamino.lamino`` conjugate gradient, 1 + 30 iterations) and
``lamino_bucket.pickle.lzma`` (``tike.lamino.bucket``). The pickles are parsed by
:func:`hpc_adept.io.formats.numpy_pickle.read_pickled_arrays`, never unpickled. They are
third-party data: bring them with the ``fetch`` tool (or a clone of tike) and pass the
folder; nothing of them enters this repository.

What a user would do: the real part of tike's projections (the ``delta`` part; times
``--scale`` so that a voxel's phase is of the order of copper's at our voxel sizes: tike's
units are arbitrary) as a TIFF stack, tike's angles (radians) in a text file, and ``adept
run`` with ``data.format: tiff-stack``, ``data.angle_convention: tike``,
``data.laminography_angle_deg`` = tike's ``tilt`` (radians, tike's convention), no
alignment (the data are aligned), FBP and the DIP (the demo's network) on the whole 64^3
box. The TIFF reader moves tike's projections from tike's centres (``n / 2``) onto ours
(``(n - 1) / 2``), so that our voxels are tike's; the first line printed gives the match of
our projector with tike's projections before and after that move. Scores, every method on
the same voxels against ``original.real``: PCC over the box and over the chip's bounding
box. No BER: tike's chip is not two-class (vacuum, a matrix
near 0.6e-5 and metal near 2e-5 of delta), so a two-class binarisation scores whichever
split the mixture picks (measured: 0.03 or 0.17 for one volume, tied or full covariance).

    OMP_NUM_THREADS=2 .venv/bin/python profiling/peer_tike.py /path/to/tike/tests/data \\
        --iterations 300

``--alignment-check`` instead runs the alignment (FBP only) on tike's data on our centres
and on tike's own, and prints what it finds against the reader's move
(:func:`alignment_check`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from _args import positive_int

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpc_adept.errors import DataError  # noqa: E402
from hpc_adept.io.formats import to_adept_angles, to_adept_laminography  # noqa: E402
from hpc_adept.io.formats.numpy_pickle import read_pickled_arrays  # noqa: E402
from hpc_adept.io.runfiles import read_volume  # noqa: E402
from hpc_adept.metrics import pcc  # noqa: E402


def read_tike_set(folder: Path) -> dict:
    """tike's data set and whichever of its reconstructions are there (complex arrays)."""
    try:
        setup = read_pickled_arrays(folder / "lamino_setup.pickle.lzma")
    except DataError as exc:
        raise SystemExit(f"peer_tike: {exc}") from None
    if not (isinstance(setup, list) and len(setup) == 4
            and all(isinstance(a, np.ndarray) for a in setup[:3])
            and isinstance(setup[3], float)):
        raise SystemExit("peer_tike: lamino_setup.pickle.lzma is not [data, original, theta, "
                         "tilt]")
    data, original, theta, tilt = setup
    if not (data.ndim == 3 and original.ndim == 3 and theta.shape == (data.shape[0],)):
        raise SystemExit(f"unexpected shapes: data {data.shape}, original {original.shape}, "
                         f"theta {theta.shape}")
    recons = {}
    for name in ("cgrad", "bucket"):
        path = folder / f"lamino_{name}.pickle.lzma"
        if path.is_file():
            try:
                volume = read_pickled_arrays(path)
            except DataError as exc:
                raise SystemExit(f"peer_tike: {exc}") from None
            if not isinstance(volume, np.ndarray) or volume.shape != original.shape:
                raise SystemExit(f"{path}: not an array of shape {original.shape}")
            recons[f"tike {name}"] = volume.real
        else:
            print(f"note: {path} absent, tike's {name} not scored", file=sys.stderr)
    return dict(data=data, original=original, theta=np.asarray(theta, np.float64),
                tilt=float(tilt), recons=recons)


def geometry_check(s: dict) -> tuple[float, float]:
    """PCC of our projector (tike's angles mapped onto ours) with tike's own projections,
    as tike centres them and moved onto our centres (what the TIFF reader does)."""
    import torch

    from hpc_adept.align import shift_images
    from hpc_adept.io.formats import centre_shifts
    from hpc_adept.lamino import Geometry, LaminoOperator

    angles = to_adept_angles(s["theta"], "tike")
    tilt = to_adept_laminography(s["tilt"], "tike")
    op = LaminoOperator(Geometry(angles, tilt, s["original"].shape, s["data"].shape[1:]))
    shifts = centre_shifts(angles, tilt, s["data"].shape[1:], "tike")
    with torch.no_grad():
        ours = op.forward(torch.from_numpy(s["original"].real.astype(np.float64))).numpy()
        moved = shift_images(torch.from_numpy(s["data"].real.astype(np.float64)),
                             torch.from_numpy(shifts), pad=2).numpy()
    return pcc(s["data"].real, ours), pcc(moved, ours)


def write_inputs(work: Path, s: dict, scale: float, iterations: int, threads: int,
                 align: bool = False, stack_shifts: np.ndarray | None = None) -> None:
    """The TIFF stack, the angle file and the config of ``adept run``: no alignment, FBP and
    the DIP; or (``align``) the alignment at binning 2 and 1 and FBP only.
    ``stack_shifts`` [n, 2] (pixels, tike's angle order) moves the projections first."""
    import tifffile

    stack = s["data"].real.astype(np.float64) * scale
    if stack_shifts is not None:
        import torch

        from hpc_adept.align import shift_images

        stack = shift_images(torch.from_numpy(stack), torch.from_numpy(stack_shifts),
                             pad=2).numpy()
    tifffile.imwrite(work / "stack.tif", stack.astype(np.float32), photometric="minisblack")
    (work / "angles.txt").write_text("# tike theta, radians\n" + "".join(
        f"{float(t)!r}\n" for t in s["theta"]))
    config = {
        "data": {"path": "stack.tif", "format": "tiff-stack", "angles_path": "angles.txt",
                 "angle_convention": "tike", "laminography_angle_deg": s["tilt"],
                 "pixel_size_m": 2.72e-8},
        "output": {"dir": "run"},
        "align": {"enabled": True, "binning": [2, 1]} if align else {"enabled": False},
        "recon": {"methods": ["fbp"] if align else ["fbp", "dip"],
                  "volume_shape": list(s["original"].shape)},
        "dip": {"iterations": iterations, "checkpoint_every": 0, "in_channels": 16,
                "channels": [16, 32, 48, 48, 48], "output_range": [-0.06, 0.06]},
        "runtime": {"device": "cpu", "torch_threads": threads},
    }
    (work / "c.yaml").write_text(yaml.safe_dump(config))


def scores(truth: np.ndarray, volume: np.ndarray, box: tuple[slice, ...]) -> dict:
    """PCC over the whole box and over the chip's bounding box."""
    return {"pcc": round(pcc(truth, volume), 4),
            "pcc_chip": round(pcc(truth[box], volume[box]), 4)}


def run_adept(work: Path, settings: list[str]) -> float:
    """``adept run -c c.yaml`` in ``work``; its wall time, seconds."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "hpc_adept", "run", "-c", "c.yaml",
                        *(["--set", *settings] if settings else [])],
                       cwd=work, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    if r.returncode:
        raise SystemExit(f"adept run failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def alignment_check(s: dict, scale: float, threads: int, work: Path) -> None:
    """Projection matching (alignment on, as a user would leave it) on tike's data as the
    reader hands them (on our centres: the shifts it finds should be ~0) and as tike
    centres them (the reader's move undone first: it should find that move itself, up to
    the rigid translation of the object that no alignment can see)."""
    import h5py

    from hpc_adept.align import remove_rigid_drift
    from hpc_adept.io.formats import centre_shifts

    angles = to_adept_angles(s["theta"], "tike")
    tilt = to_adept_laminography(s["tilt"], "tike")
    move = centre_shifts(angles, tilt, s["data"].shape[1:], "tike")
    for name, undo in (("on our centres", None), ("on tike's centres", -move)):
        folder = work / name.replace(" ", "_").replace("'", "")
        folder.mkdir(parents=True, exist_ok=True)
        write_inputs(folder, s, scale, 1, threads, align=True, stack_shifts=undo)
        run_adept(folder, [])
        with h5py.File(folder / "run" / "aligned.h5", "r") as f:
            found = f["shifts_px"][()]
        expected = np.zeros_like(found) if undo is None else undo[np.argsort(angles,
                                                                             kind="stable")]
        left, translation = remove_rigid_drift(found - expected, np.sort(angles), tilt)
        print(json.dumps({"alignment": name, "largest_shift_px": round(float(
            np.abs(found).max()), 4), "mean_shift_px": np.round(found.mean(0), 4).tolist(),
            "expected_mean_px": np.round(expected.mean(0), 4).tolist(),
            "rms_px_from_expected_after_rigid": round(float(np.sqrt(np.mean(left ** 2))), 4),
            "rigid_translation_voxels": np.round(translation, 3).tolist()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tike_data", type=Path, help="tike's tests/data folder")
    parser.add_argument("--iterations", type=positive_int, default=300)
    parser.add_argument("--scale", type=float, default=1000.0,
                        help="factor on tike's projections (arbitrary units -> radians)")
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="settings passed to adept run (e.g. dip.tv_weights=[0,0])")
    parser.add_argument("--alignment-check", action="store_true",
                        help="instead of the reconstructions: what the alignment finds on "
                             "our centres and on tike's (see alignment_check)")
    args = parser.parse_args()
    if not (args.tike_data / "lamino_setup.pickle.lzma").is_file():
        parser.error(f"{args.tike_data}: no lamino_setup.pickle.lzma")
    s = read_tike_set(args.tike_data)
    as_tike_centres, on_ours = geometry_check(s)
    print(json.dumps({"data": list(s["data"].shape), "volume": list(s["original"].shape),
                      "angles": len(s["theta"]), "tilt_rad": s["tilt"],
                      "geometry_pcc_our_projector_vs_tike": round(as_tike_centres, 4),
                      "geometry_pcc_on_our_centres": round(on_ours, 5)}))
    truth = s["original"].real.astype(np.float64)
    nz = np.nonzero(truth)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in nz)
    with tempfile.TemporaryDirectory(prefix="peer_tike_") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.alignment_check:
            alignment_check(s, args.scale, args.threads, work)
            return
        write_inputs(work, s, args.scale, args.iterations, args.threads)
        wall = run_adept(work, args.set)
        volumes = {f"adept {m}": read_volume(work / "run" / f"volume_{m}.h5")[0]
                   for m in ("fbp", "dip")}
    volumes.update(s["recons"])
    print(json.dumps({"adept_run_wall_s": round(wall, 1), "iterations": args.iterations,
                      "set": args.set}))
    for name, volume in volumes.items():
        print(json.dumps({"method": name, **scores(truth, np.asarray(volume, np.float64),
                                                    box)}))


if __name__ == "__main__":
    main()
