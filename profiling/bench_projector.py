"""Benchmark: our laminography projector against a reference-style (ADePt paper) one.

Times forward + backward of ``loss = 0.5 * ||project(x) - y||^2`` (gradient wrt x) for

(a) ``hpc_adept.lamino.project``: in-plane rotation (2-D grid per angle) + one fixed
    sparse oblique projection, angles in chunks, no per-angle 3-D grids;
(b) a straightforward projector in the style of the paper's code: zero-pad the volume
    into a cube, and for each angle build a 3-D ``affine_grid`` that turns the beam onto
    one axis, ``grid_sample`` (trilinear) and sum along it. Autograd keeps one 3-D grid
    per angle (N^3 * 3 floats, ~201 MB for N = 256) until the backward pass.

Both use the geometry of DESIGN.md section 3; the script checks that they agree on the
same smooth input (relative difference of projections and of gradients).

Each measurement runs in a fresh subprocess so that peak memory is its own: VmHWM from
/proc/self/status on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. On CPU the
reference runs by default on a subset of the angles (its grids for 125 angles need
~25 GB) and its time and memory are scaled per angle; the output says so.

Usage::

    python profiling/bench_projector.py [--device cpu|cuda|auto] [--angles 125]
        [--shape 144 160 160] [--detector 256 256] [--tilt 61] [--repeats 3]
        [--ref-angles 16] [--dtype float32] [--triton]

``--triton`` (CUDA) adds the fused Triton kernels (``kernel='triton'``) as ``ours-triton``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _args import device_arg, positive_int

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpc_adept.lamino import Geometry, project  # noqa: E402

# glibc returns every freed block above its (dynamic, <= 32 MiB) mmap threshold to the
# OS, so large per-chunk buffers are page-faulted in again on every chunk. These settings
# keep them in the heap; the "ours+malloc" run checks that the CPU default chunk budget
# (32 MiB) already avoids that churn.
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**36)}


#: The workers that time our projector, and the kernel each uses.
OURS = {"ours": "torch", "ours-triton": "triton"}


# --------------------------------------------------------------------------- reference

def reference_project(volume: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Paper-style projector: pad to a cube, rotate with a 3-D grid per angle, sum.

    Parameters
    ----------
    volume : torch.Tensor, [nz, ny, nx]
    geometry : Geometry

    Returns
    -------
    torch.Tensor, [n_angles, nv, nu]
        Line integrals in voxel units (one sample per voxel along the ray), same
        convention as :func:`hpc_adept.lamino.project`.
    """
    nz, ny, nx = geometry.volume_shape
    nv, nu = geometry.detector_shape
    side = max(nz, ny, nx, nv, nu)  # the paper pads 160x160x144 into 256^3
    before = [(side - n) // 2 for n in (nz, ny, nx)]
    pads = []
    for n, b in zip((nx, ny, nz), before[::-1], strict=True):
        pads += [b, side - n - b]
    cube = F.pad(volume, pads)[None, None]  # [1, 1, side, side, side]
    # the volume center sits at cube offset (b + (n - 1) / 2) - (side - 1) / 2 per axis
    shift = [(b + (n - 1) / 2) - (side - 1) / 2 for n, b in zip((nz, ny, nx), before,
                                                                 strict=True)]
    shift_xyz = np.array(shift[::-1])
    d, u, v = geometry.vectors()
    images = []
    for t in range(geometry.n_angles):
        # output (W, H, D) = (col, row, depth) offsets -> volume offsets (x, y, z):
        # p = col u + row v + s d; normalised coordinates (align_corners=False):
        # offset = coord * size / 2 on both sides
        basis = np.stack([u[t] * nu / 2, v[t] * nv / 2, d[t] * side / 2], axis=1)
        theta = np.concatenate([basis, shift_xyz[:, None]], axis=1) * (2.0 / side)
        theta = torch.as_tensor(theta, dtype=volume.dtype, device=volume.device)[None]
        grid = F.affine_grid(theta, [1, 1, side, nv, nu], align_corners=False)
        rotated = F.grid_sample(cube, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)
        images.append(rotated.sum(dim=2)[0, 0])
    return torch.stack(images)


# --------------------------------------------------------------------------- workers

def _test_volume(shape, dtype, device) -> torch.Tensor:
    """Smooth random volume (Gaussian-blurred noise) tapered to zero near the faces."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    vol = gaussian_filter(rng.standard_normal(shape), 2.0) * 5.0
    for axis, n in enumerate(shape):
        edge = np.clip(np.minimum(np.arange(n), n - 1 - np.arange(n)) / 8.0, 0, 1)
        vol *= np.sin(0.5 * np.pi * edge).reshape([-1 if i == axis else 1 for i in
                                                   range(3)])
    return torch.as_tensor(vol, dtype=dtype, device=device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(device: torch.device) -> int:
    """Peak memory of this process: CUDA allocator peak, or VmHWM on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return -1


def _current_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return -1


def _forward_backward(op, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One forward + backward of 0.5 ||op(x) - y||^2; returns the gradient."""
    x = x.detach().requires_grad_(True)
    loss = 0.5 * ((op(x) - y) ** 2).sum()
    loss.backward()
    return x.grad


def worker_time(args: argparse.Namespace) -> dict:
    """Time forward+backward of one method on ``args.worker_angles`` angles."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    angles = np.linspace(0.0, 360.0, args.angles, endpoint=False)[:args.worker_angles]
    geometry = Geometry(angles, args.tilt, tuple(args.shape), tuple(args.detector))
    x = _test_volume(geometry.volume_shape, dtype, device)
    y = torch.zeros(geometry.projection_shape, dtype=dtype, device=device)
    ours = args.worker in OURS

    def op_for(g: Geometry):
        if ours:
            return lambda v: project(v, g, kernel=OURS[args.worker])
        return lambda v: reference_project(v, g)

    op = op_for(geometry)
    # warm-up on two angles (kernels, caches, allocator)
    warm = Geometry(angles[:2], args.tilt, geometry.volume_shape, geometry.detector_shape)
    _forward_backward(op_for(warm), x, y[:2])
    if ours:
        _forward_backward(op, x, y)  # also builds the cached sparse operator
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = _current_bytes(device)
    times = []
    for _ in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        _forward_backward(op, x, y)
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"times_s": times, "peak_bytes": _peak_bytes(device), "baseline_bytes": baseline,
            "n_angles": geometry.n_angles}


def worker_compare(args: argparse.Namespace) -> dict:
    """Relative difference of projections and gradients between the two methods."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    angles = np.linspace(0.0, 360.0, args.angles, endpoint=False)
    idx = np.linspace(0, args.angles - 1, min(args.angles, 8)).round().astype(int)
    geometry = Geometry(angles[idx], args.tilt, tuple(args.shape), tuple(args.detector))
    x = _test_volume(geometry.volume_shape, dtype, device)
    y = torch.zeros(geometry.projection_shape, dtype=dtype, device=device)
    ours = project(x, geometry)
    ref = reference_project(x, geometry)
    g_ours = _forward_backward(lambda v: project(v, geometry), x, y)
    g_ref = _forward_backward(lambda v: reference_project(v, geometry), x, y)
    result = {
        "n_angles": geometry.n_angles,
        "proj_rel_diff": float((ours - ref).norm() / ref.norm()),
        "grad_rel_diff": float((g_ours - g_ref).norm() / g_ref.norm()),
    }
    if args.triton:  # the fused kernels compute the same matrix as ours
        fused = project(x, geometry, kernel="triton")
        g_fused = _forward_backward(lambda v: project(v, geometry, kernel="triton"), x, y)
        result["triton_proj_rel_diff"] = float((fused - ours).norm() / ours.norm())
        result["triton_grad_rel_diff"] = float((g_fused - g_ours).norm() / g_ours.norm())
    return result


# --------------------------------------------------------------------------- driver

def _run_worker(args: argparse.Namespace, worker: str, n_angles: int, env: dict | None):
    """Run one worker in a fresh interpreter; return its result dict."""
    cmd = [sys.executable, __file__, "--worker", worker, "--worker-angles", str(n_angles),
           *(["--triton"] if args.triton else []),
           "--device", args.device, "--angles", str(args.angles), "--tilt", str(args.tilt),
           "--repeats", str(args.repeats), "--dtype", args.dtype,
           "--shape", *map(str, args.shape), "--detector", *map(str, args.detector)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker {worker} failed:\n{proc.stdout}\n{proc.stderr}")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=device_arg(allow_auto=True), default="auto",
                        help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--angles", type=positive_int, default=125,
                        help="angles over 360 deg")
    parser.add_argument("--shape", type=positive_int, nargs=3, default=[144, 160, 160],
                        metavar=("NZ", "NY", "NX"))
    parser.add_argument("--detector", type=positive_int, nargs=2, default=[256, 256],
                        metavar=("NV", "NU"))
    parser.add_argument("--tilt", type=float, default=61.0)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--ref-angles", type=positive_int, default=None,
                        help="angles the reference runs on (default: 16 on CPU, all on "
                             "CUDA); its time and memory are scaled per angle")
    parser.add_argument("--no-malloc-variant", action="store_true",
                        help="skip the run of ours with glibc malloc tuning (CPU)")
    parser.add_argument("--triton", action="store_true",
                        help="also time the fused Triton kernels (kernel='triton'; CUDA)")
    parser.add_argument("--worker", choices=[*OURS, "reference", "compare"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--worker-angles", type=positive_int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.triton and torch.device(args.device).type != "cuda" and not args.worker:
        parser.error("--triton times the compiled kernels: it needs --device cuda")

    if args.worker:
        result = worker_compare(args) if args.worker == "compare" else worker_time(args)
        print("RESULT " + json.dumps(result), flush=True)
        return

    n_ref = args.ref_angles or (16 if args.device == "cpu" else args.angles)
    n_ref = min(n_ref, args.angles)
    side = max(*args.shape, *args.detector)
    grid_bytes = side * args.detector[0] * args.detector[1] * 3 * (
        4 if args.dtype == "float32" else 8)
    device_name = (torch.cuda.get_device_name(args.device) if args.device != "cpu"
                   else platform.processor() or platform.machine())
    print(f"# projector benchmark: volume [nz,ny,nx]={args.shape} {args.dtype}, "
          f"{args.angles} angles over 360 deg, tilt {args.tilt}, detector {args.detector}")
    print(f"# device {args.device} ({device_name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus, repeats {args.repeats}")
    print(f"# reference: cube {side}^3, one 3-D grid of {grid_bytes / 2**20:.0f} MiB per "
          f"angle kept for backward; timed on {n_ref} of {args.angles} angles"
          + (" and scaled per angle" if n_ref < args.angles else ""))

    cmp = _run_worker(args, "compare", args.angles, None)
    print(f"agreement on {cmp['n_angles']} angles (smooth test volume): relative difference "
          f"projections {cmp['proj_rel_diff']:.4f}, gradients {cmp['grad_rel_diff']:.4f}")
    if args.triton:
        print(f"triton kernels against ours: relative difference projections "
              f"{cmp['triton_proj_rel_diff']:.2e}, gradients {cmp['triton_grad_rel_diff']:.2e}")

    runs = {"ours": _run_worker(args, "ours", args.angles, None)}
    if args.triton:
        runs["ours-triton"] = _run_worker(args, "ours-triton", args.angles, None)
    if args.device == "cpu" and not args.no_malloc_variant:
        runs["ours+malloc"] = _run_worker(args, "ours", args.angles, MALLOC_TUNING)
    runs["reference"] = _run_worker(args, "reference", n_ref, None)

    rows = []
    for name, res in runs.items():
        scale = args.angles / res["n_angles"]
        median, best = float(np.median(res["times_s"])) * scale, min(res["times_s"]) * scale
        extra = res["peak_bytes"] - res["baseline_bytes"]
        if res["n_angles"] < args.angles:  # reference: one more grid per extra angle
            extra += (args.angles - res["n_angles"]) * grid_bytes
        rows.append((name, median, best, res, extra))
    print(f"{'method':<12} {'fwd+bwd median [s]':>19} {'min [s]':>9} {'per angle [ms]':>15} "
          f"{'angles run':>11} {'peak mem':>10} {'peak-baseline':>14}")
    for name, median, best, res, extra in rows:
        print(f"{name:<12} {median:>19.3f} {best:>9.3f} {median / args.angles * 1e3:>15.2f} "
              f"{res['n_angles']:>11d} {_gib(res['peak_bytes']):>10} {_gib(extra):>14}")
    print(f"speed-up of ours over the reference (fwd+bwd, {args.angles} angles, median): "
          f"{rows[-1][1] / rows[0][1]:.1f}x; memory above baseline: ours {_gib(rows[0][4])}, "
          f"reference {_gib(rows[-1][4])}"
          + (" (scaled: measured + one grid per further angle)" if n_ref < args.angles
             else ""))
    if args.triton:
        print(f"speed-up of the triton kernels over ours (fwd+bwd, median): "
              f"{rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
