"""LSQ-ML benchmark: time per iteration and object error, hpc_adept vs pty-chi, same data.

For each frame size N a scan is simulated with the project's simulator: an IC-like phase
projection (smooth blobs and 3-pixel metal lines on an empty background), a probe of N/2
pixels diameter on a jittered raster with 70 % overlap (14 x 14 = 196 positions), Poisson
noise at 1e6 photons per pattern. Both codes start from the same probe (the true one, or
``--probe data``: hpc_adept's probe from the data) and run the same number of epochs with the
same batch size and the Gaussian noise model; only the reconstruction loop is timed (pty-chi:
``task.run()``; hpc_adept: ``reconstruct``, after one warm-up call on the GPU). Both objects
are scored the same way: relative error of the field after the optimal global complex scale
(and, second figure, after also removing a linear phase ramp) in the well-lit region (true
illumination >= half its maximum), and the PCC of :func:`hpc_adept.ptycho.phase_projection`
with the true projection.

pty-chi runs in its own virtual environment (never a dependency of this project): this
script re-invokes itself there with ``--ptychi-worker IN.npz OUT.npz``; the worker imports
only NumPy, torch and ptychi. Setup (CPU; see profiling/RESULTS.md, "LSQ-ML (issue 3)")::

    python3 -m venv /tmp/ptychi-venv
    /tmp/ptychi-venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    /tmp/ptychi-venv/bin/pip install --no-deps ptychi
    /tmp/ptychi-venv/bin/pip install h5py matplotlib numpy pandas pydantic scikit-image \\
        scikit-learn scipy tqdm
    # + a stand-in torchvision/transforms.py defining GaussianBlur (pty-chi needs no more)

Usage::

    .venv/bin/python profiling/bench_lsqml.py --sizes 64 256 --iterations 100 50
    .venv/bin/python profiling/bench_lsqml.py --device cuda --sizes 64 256 512

Torch's intra-op threads and scipy.fft's workers are both set by ``--threads`` (default 1: on
a shared machine, spinning OpenMP threads of a 2-thread torch slowed pty-chi down 20x while
another process held a core). Our host FFTs go through torch.fft (``--fft-library both`` also
times scipy.fft side by side). On CPU both codes keep freed host memory in the process, as
adept does by default (``runtime.keep_host_memory``; ``--return-host-memory`` for glibc's
default), so neither pays page faults for fresh large temporaries every batch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _args import positive_int, writable_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PTYCHI_PYTHON = "/tmp/ptychi-venv/bin/python"
PHOTONS = 1e6
RASTER = 14  # positions per axis


# --------------------------------------------------------------------------- the pty-chi side


def ptychi_worker(in_path: str, out_path: str) -> None:
    """Run pty-chi's LSQML on the scan in ``in_path`` and save the object and timing."""
    import torch
    from ptychi.api import LSQMLOptions, enums
    from ptychi.api.task import PtychographyTask

    d = np.load(in_path)
    torch.set_num_threads(int(d["threads"]))
    device = str(d["device"])
    opts = LSQMLOptions()
    opts.data_options.fft_shift = True  # frames have DC at N // 2
    opts.object_options.pixel_size_m = 1.0
    opts.object_options.determine_position_origin_coords_by = (
        enums.ObjectPosOriginCoordsMethods.SPECIFIED)
    # pty-chi maps position p to the object pixel p + origin, the window's center.
    opts.object_options.position_origin_coords = d["origin"]
    opts.probe_options.optimizable = True
    opts.probe_position_options.optimizable = False
    opts.reconstructor_options.num_epochs = int(d["iterations"])
    opts.reconstructor_options.batch_size = int(d["batch_size"])
    opts.reconstructor_options.batching_mode = enums.BatchingModes.RANDOM
    opts.reconstructor_options.noise_model = enums.NoiseModels.GAUSSIAN
    opts.reconstructor_options.default_device = (
        enums.Devices.GPU if device == "cuda" else enums.Devices.CPU)
    opts.reconstructor_options.random_seed = 0
    height, width = (int(v) for v in d["grid_shape"])
    task = PtychographyTask(
        opts, diffraction_data=d["counts"],
        object_data=np.ones((1, height, width), np.complex64),
        probe_data=d["probe"][None, None].astype(np.complex64),
        probe_position_x_px=d["positions"][:, 1], probe_position_y_px=d["positions"][:, 0])
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    task.run()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    obj = task.get_data_to_cpu("object", as_numpy=True)[0]
    np.savez(out_path, object=obj, seconds=seconds, version=_ptychi_version())


def _ptychi_version() -> str:
    from importlib.metadata import version

    return version("ptychi")


# glibc's environment form of hpc_adept.backend.keep_freed_host_memory, for pty-chi's process
KEEP_HOST_MEMORY_ENV = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4611686018427387904"}


def run_ptychi(python: str, scan: dict, probe: np.ndarray, grid, iterations: int,
               batch_size: int, threads: int, device: str,
               keep_host_memory: bool = True) -> dict | None:
    """pty-chi's object and loop time, or None (with the reason printed) when it fails."""
    origin = np.array([grid.field_offset[a] + (grid.field_shape[a] - 1) / 2.0 for a in (0, 1)])
    total = float(scan["counts"].sum((1, 2)).mean())
    probe = probe * math.sqrt(total / float(np.sum(np.abs(probe) ** 2)))
    with tempfile.TemporaryDirectory() as tmp:
        in_path, out_path = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(in_path, counts=scan["counts"], positions=scan["positions"], probe=probe,
                 grid_shape=np.array(grid.shape), origin=origin, iterations=iterations,
                 batch_size=batch_size, threads=threads, device=device)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        if keep_host_memory:
            env.update(KEEP_HOST_MEMORY_ENV)
        proc = subprocess.run([python, __file__, "--ptychi-worker", in_path, out_path],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"pty-chi failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
            return None
        out = np.load(out_path)
        return {"object": out["object"], "seconds": float(out["seconds"]),
                "version": str(out["version"])}


# --------------------------------------------------------------------------- data and scores


def phantom(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """IC-like projection, float64 [nv, nu], radians: blobs and lines on zero background."""
    nv, nu = shape
    scale = nv / 64.0
    yy, xx = np.mgrid[0:nv, 0:nu]
    out = np.zeros(shape)
    for _ in range(max(4, int(4 * scale))):
        cy, cx = rng.uniform(0.15, 0.85) * nv, rng.uniform(0.15, 0.85) * nu
        sigma = rng.uniform(0.08, 0.14) * 64
        out += rng.uniform(0.25, 0.5) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    for _ in range(int(10 * scale**2)):
        r, c = rng.integers(4, nv - 8), rng.integers(4, nu - 8)
        length = rng.integers(6, 32)
        if rng.random() < 0.5:
            out[r:r + 3, c:min(c + length, nu - 4)] += 0.6
        else:
            out[r:min(r + length, nv - 4), c:c + 3] += 0.6
    return out


def simulate(frame: int, seed: int = 0) -> dict:
    """One scan: counts float32 [196, N, N], positions [196, 2], truth and probe."""
    from hpc_adept import sim

    rng = np.random.default_rng(seed)
    diameter = frame / 2.0
    step = diameter * 0.3
    extent = int(round(step * (RASTER - 1))) // 2 * 2
    field = (extent, extent)
    projection = phantom(field, rng)
    probe = sim.make_probe(frame, diameter)
    positions = sim.raster_positions(field, step, 1.0, rng)
    pad = frame // 2 + 4
    obj = sim.object_from_projection(projection, 0.0, pad)
    intensity = sim.diffraction_patterns(obj, pad, field, probe * math.sqrt(PHOTONS), positions)
    counts = rng.poisson(intensity).astype(np.float32)
    lit = _lit_region(probe, positions, field)
    return {"projection": projection, "probe": probe, "positions": positions,
            "counts": counts, "field": field, "lit": lit}


def _lit_region(probe: np.ndarray, positions: np.ndarray, field: tuple[int, int]) -> np.ndarray:
    n = probe.shape[0]
    weight = np.abs(probe) ** 2
    illum = np.zeros((field[0] + 2 * n, field[1] + 2 * n))
    for pr, pc in positions:
        r = int(np.floor(n + (field[0] - n) / 2 + pr))
        c = int(np.floor(n + (field[1] - n) / 2 + pc))
        illum[r:r + n, c:c + n] += weight
    illum = illum[n:n + field[0], n:n + field[1]]
    return illum >= 0.5 * illum.max()


def scores(obj: np.ndarray, grid, scan: dict) -> dict:
    """Relative errors (global scale; also without a linear ramp) and phase-projection PCC."""
    from hpc_adept.ptycho import phase_projection

    (r, c), (nv, nu) = grid.field_offset, grid.field_shape
    field = np.asarray(obj)[r:r + nv, c:c + nu]
    truth = np.exp(1j * scan["projection"])
    region = scan["lit"]
    ratio = field * np.conj(truth)
    phase = np.angle(ratio / ratio[region].mean())
    rows, cols = np.nonzero(region)
    basis = np.stack([np.ones(rows.size), rows, cols], axis=1)
    coef = np.linalg.lstsq(basis, phase[region], rcond=None)[0]
    yy, xx = np.mgrid[0:nv, 0:nu]
    deramped = field * np.exp(-1j * (coef[1] * yy + coef[2] * xx))
    projection, _ = phase_projection(np.asarray(obj), (nv, nu), field_offset=(r, c),
                                     support=region)
    pcc = float(np.corrcoef(projection.ravel(), scan["projection"].ravel())[0, 1])
    return {"error": _relative_error(field, truth, region),
            "error_no_ramp": _relative_error(deramped, truth, region), "pcc": pcc}


def _relative_error(field: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    a, b = field[region], truth[region]
    scale = np.vdot(a, b) / np.vdot(a, a)
    return float(np.linalg.norm(scale * a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------- our side


def run_ours(scan: dict, probe: np.ndarray, iterations: int, batch_size: int, threads: int,
             device: str, fft_library: str = "torch") -> dict:
    """Our reconstruction: object (host), loop seconds, FFT library."""
    from hpc_adept.backend import to_numpy
    from hpc_adept.config import PtychoConfig
    from hpc_adept.ptycho import reconstruct
    from hpc_adept.ptycho.fft import make_fft2

    if device == "cuda":
        import cupy as xp
    else:
        xp = np
    counts = xp.asarray(scan["counts"])
    options = PtychoConfig(iterations=iterations, batch_size=batch_size,
                           fft_library=fft_library)  # type: ignore[arg-type]
    if device == "cuda":  # warm-up: cuFFT plans, kernel compilation
        reconstruct(counts, scan["positions"], scan["field"],
                    PtychoConfig(iterations=2, batch_size=batch_size), probe=probe)
        xp.cuda.Device().synchronize()
    start = time.perf_counter()
    result = reconstruct(counts, scan["positions"], scan["field"], options, probe=probe,
                         fft_workers=threads)
    if device == "cuda":
        xp.cuda.Device().synchronize()
    seconds = time.perf_counter() - start
    return {"object": to_numpy(result.object), "seconds": seconds, "grid": result.grid,
            "fourier_error": result.fourier_error, "fft": make_fft2(xp, threads, fft_library).name}


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[64, 256])
    parser.add_argument("--iterations", type=positive_int, nargs="+", default=[100],
                        help="epochs per size (one value for all, or one per size)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--probe", choices=["true", "data"], default="true")
    parser.add_argument("--ptychi-python", default=DEFAULT_PTYCHI_PYTHON,
                        help="python of the pty-chi venv ('' to skip pty-chi)")
    parser.add_argument("--fft-library", choices=["torch", "scipy", "both"], default="torch",
                        help="host FFTs of ours; 'both' also times scipy.fft side by side")
    parser.add_argument("--return-host-memory", action="store_true",
                        help="leave glibc malloc as it is (runtime.keep_host_memory: false) "
                             "in both codes; by default both keep freed memory, as adept does")
    parser.add_argument("--json", type=writable_file, help="write the figures here")
    parser.add_argument("--ptychi-worker", nargs=2, metavar=("IN", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if len(args.iterations) not in (1, len(args.sizes)):
        parser.error(f"--iterations: one value, or one per size ({len(args.sizes)}), "
                     f"got {len(args.iterations)}")
    if args.ptychi_worker:
        ptychi_worker(*args.ptychi_worker)
        return 0
    sys.path.insert(0, str(REPO))
    if args.device == "cpu":
        import torch  # noqa: F401 - keep torch's threads in line if anything imports it

        torch.set_num_threads(args.threads)
        if not args.return_host_memory:
            from hpc_adept.backend import keep_freed_host_memory

            keep_freed_host_memory()
    iterations = args.iterations * len(args.sizes) if len(args.iterations) == 1 \
        else args.iterations
    rows = []
    for frame, epochs in zip(args.sizes, iterations, strict=True):
        rows.append(bench_one(frame, epochs, args))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def bench_one(frame: int, epochs: int, args: argparse.Namespace) -> dict:
    from hpc_adept.ptycho import probe_from_data

    scan = simulate(frame)
    n = len(scan["positions"])
    probe = scan["probe"] if args.probe == "true" else np.asarray(
        probe_from_data(scan["counts"]))
    print(f"N={frame}: field {scan['field']}, {n} positions, {epochs} epochs, batch "
          f"{args.batch_size}, {args.device}, {args.threads} thread(s), probe {args.probe}",
          flush=True)
    library = "torch" if args.fft_library == "both" else args.fft_library
    ours = run_ours(scan, probe, epochs, args.batch_size, args.threads, args.device, library)
    ours_scores = scores(ours["object"], ours["grid"], scan)
    row = {"frame": frame, "positions": n, "epochs": epochs, "device": args.device,
           "threads": args.threads, "batch_size": args.batch_size, "probe": args.probe,
           "ours": {"s_per_epoch": ours["seconds"] / epochs, **ours_scores,
                    "fft": ours["fft"]}}
    _print_row(f"hpc_adept ({ours['fft']})", row["ours"])
    if args.fft_library == "both" and args.device == "cpu":
        alt = run_ours(scan, probe, epochs, args.batch_size, args.threads, args.device, "scipy")
        row["ours_scipy_fft"] = {"s_per_epoch": alt["seconds"] / epochs,
                                 **scores(alt["object"], alt["grid"], scan), "fft": alt["fft"]}
        _print_row(f"hpc_adept ({alt['fft']})", row["ours_scipy_fft"])
        print(f"  time torch.fft / scipy.fft: "
              f"{row['ours']['s_per_epoch'] / row['ours_scipy_fft']['s_per_epoch']:.2f}",
              flush=True)
    theirs = None
    python = shutil.which(args.ptychi_python) if args.ptychi_python else None
    if python:
        theirs = run_ptychi(python, scan, probe, ours["grid"], epochs,
                            args.batch_size, args.threads, args.device,
                            not args.return_host_memory)
    if theirs is not None:
        row["ptychi"] = {"s_per_epoch": theirs["seconds"] / epochs,
                         **scores(theirs["object"], ours["grid"], scan),
                         "version": theirs["version"]}
        _print_row(f"pty-chi {theirs['version']}", row["ptychi"])
        o, t = row["ours"], row["ptychi"]
        print(f"  ratios ours/pty-chi: time {o['s_per_epoch'] / t['s_per_epoch']:.2f}, "
              f"error {o['error'] / t['error']:.2f}, "
              f"error without ramp {o['error_no_ramp'] / t['error_no_ramp']:.2f}", flush=True)
    else:
        print("  pty-chi: not run", flush=True)
    return row


def _print_row(name: str, r: dict) -> None:
    print(f"  {name:38s} {r['s_per_epoch'] * 1e3:9.1f} ms/epoch   error {r['error']:.4f}   "
          f"without ramp {r['error_no_ramp']:.4f}   PCC {r['pcc']:.4f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
