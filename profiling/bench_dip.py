"""DIP benchmarks: time per iteration, peak memory and quality (FBP vs DIP, BER and PCC).

Speed on CPU with 1 vs 2 ranks and on a GPU at the paper's size; quality against the ground
truth.

    # everything that fits this machine (CPU speed with 1 and 2 ranks, GPU if present,
    # the quality study):
    python profiling/bench_dip.py all
    # parts:
    python profiling/bench_dip.py speed --shape 32 48 48 --angles 32 --iterations 5
    python profiling/bench_dip.py gpu                 # 144x160x160, 125 angles of 256x256
    python profiling/bench_dip.py quality --iterations 300
    # one timing worker (what `speed` runs under mpiexec -n 1 and -n 2):
    mpiexec -n 2 python profiling/bench_dip.py worker --shape 32 48 48 --angles 32

The quality study simulates a crop of the real IC layout (default 48x64x64 voxels of
27.2 nm, 61 deg tilt), 50 angles over 360 deg (1/8 of a dense set of 400 angles, which
over-samples this width 2x like the paper's 2000 angles for 160 voxels), with Gaussian
noise of ``--noise`` times the RMS of the projections, and compares FBP with DIP variants.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _args import device_arg, json_list, non_negative_float, positive_int, writable_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpc_adept.backend import keep_freed_host_memory  # noqa: E402
from hpc_adept.config import DipConfig  # noqa: E402
from hpc_adept.dip import (  # noqa: E402
    DipNetwork,
    ShardData,
    count_parameters,
    data_weight,
    emphasise,
    make_input_noise,
    train_dip,
    tv_slice_weights,
)
from hpc_adept.lamino import Geometry, fbp, project  # noqa: E402
from hpc_adept.stages.simulate import auto_projection_shape  # noqa: E402

IC_DIR = REPO.parent / "shared" / "data" / "ic"


# ----------------------------------------------------------------------------- metrics
def _metrics():
    """(ber, pcc, source) taking (reconstruction, reference) volumes: GMM binarisation of
    each volume by hpc_adept.metrics when present, else the simple versions below."""
    try:
        from hpc_adept.metrics import ber as ber_occupancy
        from hpc_adept.metrics import fit_gmm, pcc
    except ImportError:
        return _ber, _pcc, "bench_dip (GMM, 2 components)"

    def ber(reconstruction: np.ndarray, reference: np.ndarray) -> float:
        return ber_occupancy(fit_gmm(reference).binarize(reference),
                             fit_gmm(reconstruction).binarize(reconstruction))

    return ber, lambda rec, ref: pcc(ref, rec), "hpc_adept.metrics (GMM binarisation)"


def _gmm_binarise(volume: np.ndarray) -> np.ndarray:
    from sklearn.mixture import GaussianMixture

    values = volume.reshape(-1, 1).astype(np.float64)
    sample = values[:: max(1, len(values) // 50000)]
    gmm = GaussianMixture(2, random_state=0).fit(sample)
    high = int(np.argmax(gmm.means_.ravel()))
    return (gmm.predict(values) == high).reshape(volume.shape)


def _ber(reconstruction: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean(_gmm_binarise(reconstruction) != _gmm_binarise(reference)))


def _pcc(reconstruction: np.ndarray, reference: np.ndarray) -> float:
    return float(np.corrcoef(reconstruction.ravel(), reference.ravel())[0, 1])


# ----------------------------------------------------------------------------- helpers
def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _settings(iterations: int, **kw) -> DipConfig:
    """The dip section of these benchmarks: lr 2e-4 (the paper's) and no periodic checkpoint
    unless ``kw`` says otherwise."""
    return replace(DipConfig(), **{"iterations": iterations, "lr": 2e-4, "checkpoint_every": 0,
                                   **kw})


def _network(channels, strides, in_channels, skip, seed, device, checkpointing=False):
    torch.manual_seed(seed)
    return DipNetwork(in_channels, channels, strides, skip,
                      activation_checkpointing=checkpointing).to(device)


# ----------------------------------------------------------------------------- speed
def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of a benchmark rank: ``cuda`` means ``cuda:local_rank`` (modulo the GPUs
    of the node, as adept's runtime.device does), so ranks of a node spread over its GPUs;
    an explicit ``cuda:N`` or ``cpu`` is taken as it is."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and the default stream follow this rank's GPU
    return device


def cuda_syncs_per_iteration(model, noise, shard, settings, comm) -> int:
    """Host synchronisations of one DIP iteration on CUDA (step, guard, record, Adam), as
    torch's sync debug mode reports them, after one iteration of every angle group (which
    fills the caches: each group builds its projector's tables on first use)."""
    from hpc_adept.backend import cuda_sync_sites
    from hpc_adept.dip import DipTrainer

    trainer = DipTrainer(model, noise, shard, replace(settings, iterations=10**6), comm)
    trainer.prepare()
    for _ in range(len(trainer.data_terms)):
        trainer.advance()
    sites = cuda_sync_sites(trainer.advance)
    if len(sites) > 1:
        print("host synchronisations:", *sites, sep="\n  ", file=sys.stderr)
    return len(sites)


def speed_worker(args: argparse.Namespace) -> None:
    """Time DIP iterations on this process's share of the angles (under mpiexec or alone)."""
    from hpc_adept.parallel import block_range, get_context
    from hpc_adept.parallel.ddp import DdpCommunicator
    from hpc_adept.parallel.slabs import SlabCommunicator
    from hpc_adept.parallel.torchdist import destroy_torch_distributed

    ctx = get_context()
    if not args.return_host_memory:
        keep_freed_host_memory()  # what adept does (runtime.keep_host_memory: true)
    device = rank_device(args.device, ctx.local_rank)
    shape = tuple(args.shape)
    det = tuple(args.detector) if args.detector else auto_projection_shape(shape, 61.0)
    angles = np.arange(args.angles) * 360.0 / args.angles
    full = Geometry(angles, 61.0, shape, det)
    mine = block_range(args.angles, ctx.size, ctx.rank)
    gen = torch.Generator().manual_seed(0)
    targets = torch.rand((len(mine), *det), generator=gen).to(device)
    model = _network(args.channels, args.strides, args.in_channels, 8, 0, device,
                     args.checkpointing)
    noise = make_input_noise(args.in_channels, shape, 0.1,
                             torch.Generator().manual_seed(1)).to(device)
    if args.decomposition == "volume":
        comm = SlabCommunicator(ctx, device, shape[0], int(np.prod(args.strides)))
        z0, z1 = comm.start, comm.stop
        shard = ShardData(targets, full.slab(z0, z1), np.arange(mine.start, mine.stop),
                          args.angles, torch.full((z1 - z0,), 3e-6, device=device),
                          slab=(z0, z1, shape[0]))
        noise = noise[:, :, z0:z1].contiguous()
    else:
        comm = DdpCommunicator(ctx, device)
        shard = ShardData(targets, full.subset(slice(mine.start, mine.stop)) if len(mine)
                          else None, np.arange(mine.start, mine.stop), args.angles,
                          torch.full((shape[0],), 3e-6, device=device))
    settings = _settings(args.warmup, guard=False, bf16=args.bf16)
    train_dip(model, noise, shard, settings, comm)  # warm-up (allocations, caches)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train_dip(model, noise, shard, _settings(args.iterations, guard=False, bf16=args.bf16), comm)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_it = (time.perf_counter() - t0) / args.iterations
    syncs = cuda_syncs_per_iteration(model, noise, shard, settings, comm) \
        if device.type == "cuda" else None
    times = comm.sum(torch.tensor([per_it], dtype=torch.float64, device=device)).cpu()
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else _peak_rss_mib())
    peaks = comm.sum(torch.tensor([peak], dtype=torch.float64, device=device)).cpu()
    # an undestroyed gloo group can end the process in std::terminate at exit (seen once)
    destroy_torch_distributed()
    if ctx.is_root:
        print(json.dumps({"ranks": ctx.size, "shape": list(shape), "angles": args.angles,
                          "detector": list(det), "device": str(device),
                          "parameters": count_parameters(model),
                          "decomposition": args.decomposition,
                          "s_per_iteration": float(times[0]) / ctx.size,
                          "peak_mib_per_rank": float(peaks[0]) / ctx.size,
                          "host_syncs_per_iteration": syncs,
                          "memory_kind": "cuda max_memory_allocated" if device.type == "cuda"
                          else "max RSS"}))


def _worker_cmd(args: argparse.Namespace, n_ranks: int, device: str) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--device", device,
           "--shape", *map(str, args.shape), "--angles", str(args.angles),
           "--iterations", str(args.iterations), "--warmup", str(args.warmup),
           "--in-channels", str(args.in_channels),
           "--channels", *map(str, args.channels), "--strides", *map(str, args.strides),
           "--decomposition", args.decomposition]
    if args.detector:
        cmd += ["--detector", *map(str, args.detector)]
    if args.bf16:
        cmd.append("--bf16")
    if args.checkpointing:
        cmd.append("--checkpointing")
    if args.return_host_memory:
        cmd.append("--return-host-memory")
    if n_ranks > 1:
        mpiexec = Path(sys.executable).parent / "mpiexec"
        cmd = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(n_ranks), *cmd]
    return cmd


def _run_worker(cmd: list[str], threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed(args: argparse.Namespace) -> None:
    """CPU strong scaling, in one run: the same problem with 1 rank x 1 thread, 1 rank x 2
    threads, 1 rank x 1 thread returning freed memory to the OS, and 2 ranks x 1 thread with
    the angles split (DDP) and with the volume split (z slabs). With ``--repeats N`` the
    configurations are run N times in turn and each keeps its fastest run (the machine's
    noise only ever adds time)."""
    cores = os.cpu_count() or 1
    print(f"== CPU speed: volume {args.shape}, {args.angles} angles, channels "
          f"{args.channels}, {cores} cores, best of {args.repeats}")
    returned = argparse.Namespace(**{**vars(args), "return_host_memory": True})
    configs = {"1 rank x 1 thread": (args, 1, 1), "1 rank x 2 threads": (args, 1, 2),
               "1 rank x 1 thread, memory to OS": (returned, 1, 1)}
    for how in ("angles", "volume"):
        two = argparse.Namespace(**{**vars(args), "decomposition": how})
        configs[f"2 ranks x 1 thread, {how} split"] = (two, 2, 1)
    runs: dict[str, dict] = {}
    for _ in range(max(1, args.repeats)):
        for label, (cfg, ranks, threads) in configs.items():
            result = _run_worker(_worker_cmd(cfg, ranks, "cpu"), threads)
            if label not in runs or result["s_per_iteration"] < runs[label]["s_per_iteration"]:
                runs[label] = result
    one_1, one_2 = runs["1 rank x 1 thread"], runs["1 rank x 2 threads"]
    for label, r in runs.items():
        print(f"{label:>32}: {r['s_per_iteration'] * 1e3:9.1f} ms/iteration, peak "
              f"{r['peak_mib_per_rank']:.0f} MiB per rank ({r['memory_kind']})")
    for how in ("angles", "volume"):
        two_1 = runs[f"2 ranks x 1 thread, {how} split"]
        eff = one_1["s_per_iteration"] / (2 * two_1["s_per_iteration"])
        print(f"{how} split: strong-scaling efficiency 1 -> 2 ranks (1 thread each) "
              f"{eff:.2f} (speed-up {one_1['s_per_iteration'] / two_1['s_per_iteration']:.2f}"
              f"); vs 1 rank x 2 threads: "
              f"{one_2['s_per_iteration'] / two_1['s_per_iteration']:.2f}x")
    kept = runs["1 rank x 1 thread, memory to OS"]["s_per_iteration"] / one_1["s_per_iteration"]
    print(f"keeping freed host memory (runtime.keep_host_memory, the default): 1 rank "
          f"{kept:.2f}x faster than returning it to the OS")


def gpu(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        print("== GPU: torch.cuda not available, paper-size benchmark skipped")
        return
    name = torch.cuda.get_device_name(0)
    paper = argparse.Namespace(**{**vars(args), "shape": [144, 160, 160], "angles": 125,
                                  "detector": [256, 256], "channels": [32, 64, 96, 96, 96],
                                  "strides": [2, 2, 1, 1, 1], "in_channels": 48})
    print(f"== GPU ({name}): paper size 144x160x160, 125 angles of 256x256")
    for bf16, ckpt in ((False, False), (True, False), (True, True)):
        paper.bf16, paper.checkpointing = bf16, ckpt
        r = _run_worker(_worker_cmd(paper, 1, "cuda"), 4)
        print(f"bf16={bf16!s:5} activation checkpointing={ckpt!s:5}: "
              f"{r['s_per_iteration'] * 1e3:8.1f} ms/iteration, peak "
              f"{r['peak_mib_per_rank']:.0f} MiB, {r['parameters']} parameters, "
              f"{r['host_syncs_per_iteration']} host synchronisation(s) per iteration")


# ----------------------------------------------------------------------------- quality
def simulate_crop(shape, n_angles, noise_rel, seed=0, origin=(40.0, 28.0)):
    """Ground truth (phase per voxel), geometry and noisy projections of a layout crop."""
    from hpc_adept.phantom import ground_truth_volume, make_phantom

    voxel = 2.72e-8
    defp, lefp = IC_DIR / "gcd_nangate45.def", IC_DIR / "Nangate45_tech.lef"
    if defp.is_file() and lefp.is_file():
        occupancy = make_phantom("layout", shape, voxel, layout_def=defp, layout_lef=lefp,
                                 crop_origin_um=origin)
        kind = f"real layout crop at {list(origin)} um"
    else:
        occupancy = make_phantom("procedural", shape, voxel, seed=seed)
        kind = "procedural phantom (layout files not found)"
    truth = ground_truth_volume(occupancy, 6200.0, voxel).astype(np.float32)
    angles = np.arange(n_angles) * 360.0 / n_angles
    geometry = Geometry(angles, 61.0, shape, auto_projection_shape(shape, 61.0))
    with torch.no_grad():
        clean = project(torch.from_numpy(truth), geometry).numpy()
    rng = np.random.default_rng(seed)
    sigma = noise_rel * float(np.sqrt(np.mean(clean**2)))
    noisy = (clean + rng.normal(0.0, sigma, clean.shape)).astype(np.float32)
    return truth, occupancy, geometry, noisy, voxel, kind


def run_dip(noisy, geometry, voxel, *, iterations, lr, hpf="none", levels=4, gain=2.5,
            tv=(3e-6, 3e-8), channels=(32, 64, 96, 96, 96), in_channels=48, guard=True,
            seed=0, log_every=0, data_term="mean", bf16=False):
    shape = geometry.volume_shape
    targets = torch.from_numpy(emphasise(noisy, hpf, "db8", levels, gain))
    weights = tv_slice_weights(shape[0], voxel, tv, [2.75e-6])
    shard = ShardData(targets, geometry, np.arange(geometry.n_angles), geometry.n_angles,
                      torch.from_numpy(weights).float(),
                      data_weight(data_term, geometry.n_angles, geometry.detector_shape))
    model = _network(channels, (2, 2, 1, 1, 1), in_channels, 8, seed, "cpu")
    noise = make_input_noise(in_channels, shape, 0.1, torch.Generator().manual_seed(seed + 1))
    trace = []

    def on_it(it, values):
        if log_every and it % log_every == 0:
            trace.append((it, values["loss"]))

    # bf16: the network under autocast (on CPU too, to check its accuracy against float32)
    settings = _settings(iterations, lr=lr, lr_step=max(1, 2 * iterations // 3), guard=guard,
                         bf16=bf16)
    t0 = time.perf_counter()
    result = train_dip(model, noise, shard, settings, seed=seed, on_iteration=on_it)
    return result, time.perf_counter() - t0, trace


def quality(args: argparse.Namespace) -> None:
    ber, pcc, source = _metrics()
    shape = tuple(args.qshape)
    truth, _, geometry, noisy, voxel, kind = simulate_crop(shape, args.qangles, args.noise)
    print(f"== quality: {kind}, volume {list(shape)}, {args.qangles} angles at 61 deg, "
          f"noise {args.noise:g} x RMS; metrics from {source}")
    with torch.no_grad():
        rec_fbp = fbp(torch.from_numpy(noisy), geometry).numpy()
    print(f"{'method':<52} {'BER':>7} {'PCC':>7}  notes")
    print(f"{'FBP':<52} {ber(rec_fbp, truth):7.4f} {pcc(rec_fbp, truth):7.4f}", flush=True)
    variants = args.variants if args.variants else [
        {"name": "DIP default (plain projections, lr 1e-3, guard)", "lr": 1e-3},
        {"name": "DIP paper recipe (wavelet HPF, lr 2e-4)", "lr": 2e-4, "hpf": "wavelet"},
    ]
    for v in variants:
        name = v.pop("name")
        result, secs, _ = run_dip(noisy, geometry, voxel, iterations=args.iterations, **v)
        note = (f"{args.iterations} its, best it {result.best_iteration}, "
                f"{len(result.history['rollbacks'])} rollbacks, "
                f"{secs / args.iterations:.2f} s/it")
        vol = result.volume
        print(f"{name:<52} {ber(vol, truth):7.4f} {pcc(vol, truth):7.4f}  {note}", flush=True)
        if args.save:
            np.save(Path(args.save) / f"{name.split()[0]}_{name.split()[1]}.npy", vol)


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["all", "speed", "gpu", "quality", "worker"])
    parser.add_argument("--shape", type=positive_int, nargs=3, default=[32, 48, 48])
    parser.add_argument("--detector", type=positive_int, nargs=2, default=None)
    parser.add_argument("--angles", type=positive_int, default=32)
    parser.add_argument("--iterations", type=positive_int, default=None)
    parser.add_argument("--warmup", type=positive_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=1,
                        help="speed: run every configuration this many times, keep the best")
    parser.add_argument("--in-channels", type=positive_int, default=48)
    parser.add_argument("--channels", type=positive_int, nargs="+",
                        default=[32, 64, 96, 96, 96])
    parser.add_argument("--strides", type=positive_int, nargs="+", default=[2, 2, 1, 1, 1])
    parser.add_argument("--device", type=device_arg(), default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--return-host-memory", action="store_true",
                        help="worker: leave glibc malloc as it is (runtime.keep_host_memory: "
                             "false) instead of keeping freed memory for reuse")
    parser.add_argument("--decomposition", choices=["angles", "volume"], default="angles",
                        help="worker: how 2+ ranks share the DIP (speed runs both)")
    parser.add_argument("--qshape", type=positive_int, nargs=3, default=[48, 64, 64])
    parser.add_argument("--qangles", type=positive_int, default=50)
    parser.add_argument("--noise", type=non_negative_float, default=0.05)
    parser.add_argument("--save", type=writable_dir, default=None,
                        help="directory for the DIP volumes (.npy)")
    parser.add_argument("--variants", type=json_list, default=None,
                        help="JSON list of DIP variants (run_dip keyword arguments + name)")
    args = parser.parse_args()
    if len(args.channels) != len(args.strides):
        parser.error(f"--channels and --strides need one value per level: got "
                     f"{len(args.channels)} and {len(args.strides)}")
    if args.variants is not None and not all(
            isinstance(v, dict) and isinstance(v.get("name"), str) for v in args.variants):
        parser.error("--variants: every variant must be a JSON object with a \"name\"")
    if args.part == "worker":
        args.iterations = args.iterations or 5
        speed_worker(args)
        return
    if args.part in ("all", "speed"):
        args.iterations = args.iterations or 5
        speed(args)
    if args.part in ("all", "gpu"):
        args.iterations = args.iterations or 20
        gpu(args)
    if args.part in ("all", "quality"):
        args.iterations = 300 if args.part == "all" or args.iterations is None else args.iterations
        quality(args)


if __name__ == "__main__":
    main()
