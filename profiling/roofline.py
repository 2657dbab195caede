"""Roofline notes: bytes and FLOPs of the three hot kernels, the floor they imply, and the
measured time over that floor.

    python profiling/roofline.py                 # this machine (CPU), measured in one run
    python profiling/roofline.py --device cuda   # on a GPU

For each kernel a simple model counts what must move and what must be computed:

- **projector** (forward + adjoint, the DIP's data term), volume [nz, ny, nx], A angles,
  detector [nv, nu]. Our projector rotates every z slice per angle (bilinear, ~8 FLOP per
  sample, n_s = nz * n_rows * n_cols samples per angle) and applies the fixed oblique
  matrix (2 taps, 4 FLOP per sample); the adjoint does the same in reverse. Bytes: the
  unfused implementation writes and reads the rotated intermediate once per angle and
  direction (4 * n_s * 4 B), plus the volume and projections once. The *ideal* floor of a
  fused kernel (volume in cache, projections streamed) is also given. On a GPU with
  Triton both implementations are timed: ``torch`` (unfused) and ``triton`` (the fused
  kernels of :mod:`hpc_adept.lamino.fused`, for which the ideal floor is the relevant one).
- **LSQ-ML iteration**, P positions of N x N complex64 frames: exit wave, FFT, modulus
  projection, inverse FFT, object and probe gradients and the line search: ~12 passes over
  a frame (8 B per pixel) and 2 x 5 N^2 log2 N^2 FFT FLOPs + ~60 FLOP per pixel.
- **DIP step** (forward + backward of the network, projector excluded): the convolutions'
  FLOPs (2 * C_in * C_out * k^3 per output voxel, x3 for the backward) and the activations
  (every layer output written once and read ~3 times in float32).

The machine's limits are measured here (STREAM-like triad for bandwidth, a large matmul for
FLOP/s) unless given; the kernels' times are measured in the same run. Printed: floor =
max(bytes / bandwidth, FLOPs / peak), and measured / floor.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _args import device_arg, positive_int

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hpc_adept.backend import keep_freed_host_memory
from hpc_adept.dip import DipNetwork, make_input_noise
from hpc_adept.lamino import Geometry, LaminoOperator
from hpc_adept.lamino.fused import available as fused_available


def _best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def machine_limits(device: torch.device) -> tuple[float, float]:
    """(bytes/s of a triad a = b + s c, float32 FLOP/s of a 4096^2 matmul), measured."""
    n = 64 * 2**20 // 4  # 3 x 64 MiB: far beyond the caches
    b = torch.rand(n, device=device)
    c = torch.rand(n, device=device)
    a = torch.empty_like(b)
    triad = _best(lambda: torch.add(b, c, alpha=1.5, out=a), 5)
    m = 4096 if device.type == "cuda" else 2048
    x = torch.rand(m, m, device=device)
    y = torch.rand(m, m, device=device)
    mm = _best(lambda: torch.mm(x, y), 3)
    return 3 * 4 * n / triad, 2 * m**3 / mm


def projector_model(shape: tuple[int, int, int], n_angles: int,
                    detector: tuple[int, int]) -> dict[str, float]:
    nz, ny, nx = shape
    radius = math.hypot((nx + 1) / 2, (ny + 1) / 2)
    n_rows = 2 * math.ceil(radius) + 1
    n_cols = min(detector[1], 2 * math.ceil(radius))
    samples = n_angles * nz * n_rows * n_cols
    volume, projections = 4 * nz * ny * nx, 4 * n_angles * detector[0] * detector[1]
    return {"flops": 2 * samples * (8 + 4),
            "bytes": 2 * (2 * 4 * samples) + 2 * (volume + projections),
            "ideal_bytes": 2 * (volume + projections)}


def lsqml_model(frame: int, positions: int) -> dict[str, float]:
    px = frame * frame
    return {"flops": positions * (2 * 5 * px * math.log2(px) + 60 * px),
            "bytes": positions * 12 * 8 * px}


def dip_model(shape: tuple[int, int, int]) -> dict[str, float]:
    flops, activations = 0.0, 0.0

    def count(module, inputs, output) -> None:
        nonlocal flops, activations
        activations += output.numel()
        if isinstance(module, torch.nn.Conv3d):
            k = math.prod(module.kernel_size)
            flops += 2 * module.in_channels * module.out_channels * k * output[0, 0].numel()

    with torch.device("meta"):
        model = DipNetwork()
        noise = torch.empty(1, 48, *shape)
    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    model(noise)
    for hook in hooks:
        hook.remove()
    return {"flops": 3 * flops, "bytes": 4 * 4 * activations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=device_arg(), default="cpu")
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--return-host-memory", action="store_true",
                        help="leave glibc malloc as it is (runtime.keep_host_memory: false)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = not args.return_host_memory and keep_freed_host_memory()  # as adept does
    gpu = device.type == "cuda"
    bw, peak = machine_limits(device)
    where = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    where += ", freed host memory kept" if kept else ", freed host memory returned to the OS"
    print(f"== {where}: triad {bw / 1e9:.1f} GB/s, matmul {peak / 1e9:.1f} GFLOP/s (measured)")

    rows = []
    # projector: the paper's size on a GPU, a CPU-sized one here
    shape, n_angles, det = (((144, 160, 160), 125, (256, 256)) if gpu
                            else ((64, 96, 96), 32, (128, 160)))
    g = Geometry(np.arange(n_angles) * 360.0 / n_angles, 61.0, shape, det)
    vol = torch.rand(shape, device=device)
    proj = torch.rand(g.projection_shape, device=device)
    model = projector_model(shape, n_angles, det)
    kernels = ["torch", "triton"] if gpu and fused_available() else ["torch"]
    for kernel in kernels:  # the fused Triton kernels compile for GPUs only
        op = LaminoOperator(g, kernel=kernel)
        t = _best(lambda op=op: (op.forward(vol), op.adjoint(proj)), args.repeats)
        rows.append((f"projector fwd+adj {list(shape)}, {n_angles} angles, {kernel} kernel",
                     model, t))

    # LSQ-ML: real iterations of our solver on one simulated scan (profiling/bench_lsqml.py)
    import bench_lsqml

    frame = 512 if gpu else 128
    scan = bench_lsqml.simulate(frame)
    epochs = 5
    run = bench_lsqml.run_ours(scan, scan["probe"], epochs, 32, torch.get_num_threads(),
                               "cuda" if gpu else "cpu")
    positions = len(scan["positions"])
    rows.append((f"LSQ-ML iteration, {positions} frames of {frame}^2",
                 lsqml_model(frame, positions), run["seconds"] / epochs))

    # DIP step: the reference network, forward + backward
    dshape = (144, 160, 160) if gpu else (32, 64, 64)
    torch.manual_seed(0)
    net = DipNetwork().to(device)
    noise = make_input_noise(48, dshape, 0.1, torch.Generator().manual_seed(1)).to(device)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        net(noise).sum().backward()

    t = _best(step, args.repeats)
    rows.append((f"DIP network fwd+bwd {list(dshape)}", dip_model(dshape), t))

    print("| kernel | GFLOP | GB moved | floor [ms] (bound) | measured [ms] | measured / floor |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m, measured in rows:
        t_bw, t_fl = m["bytes"] / bw, m["flops"] / peak
        floor = max(t_bw, t_fl)
        bound = "memory" if t_bw >= t_fl else "compute"
        print(f"| {name} | {m['flops'] / 1e9:.2f} | {m['bytes'] / 1e9:.3f} | "
              f"{floor * 1e3:.2f} ({bound}) | {measured * 1e3:.1f} | {measured / floor:.1f} |")
        if "ideal_bytes" in m:
            ideal = max(m["ideal_bytes"] / bw, t_fl)
            print(f"| ... fused-kernel floor (volume in cache) | | {m['ideal_bytes'] / 1e9:.3f} | "
                  f"{ideal * 1e3:.2f} | | {measured / ideal:.1f} |")


if __name__ == "__main__":
    main()
