"""Every GPU path of the pipeline (issue 22, item 6), and the CPU-reachable logic behind them.

The ``gpu`` tests skip without a CUDA device; ``profiling/gpu_session.sh check`` runs them
on a GPU machine and fails when any is skipped. They cover: one DIP iteration synchronising
with the host at most once (``torch.cuda.set_sync_debug_mode``), DDP with two ranks on one
GPU (gloo), the volume split with two ranks on one GPU (tensors staged through MPI, the
backward's MPI calls on autograd's device thread), the Triton projector inside DIP
training, CuPy probe fitting, and the ptycho stage with a fitted probe (CuPy's pool handed
back at its end).
"""

from __future__ import annotations

import sys
import types
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from hpc_adept.config import DipConfig
from hpc_adept.dip import DipNetwork, ShardData, make_input_noise
from hpc_adept.lamino import Geometry, project

from .conftest import adept, run_cmd

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cupy_or_skip():
    from hpc_adept.backend import _cupy_usable

    if not _cupy_usable():
        pytest.skip("cupy is not importable or no CUDA device is usable")
    import cupy

    return cupy


def _problem(device: torch.device, n_angles: int = 6, shape=(8, 12, 12)):
    """A tiny DIP problem on ``device``: (model, noise, shard)."""
    truth = np.zeros(shape, np.float32)
    truth[2:4, 3:9, 2:10] = 0.02
    geometry = Geometry(np.arange(n_angles) * 360.0 / n_angles, 61.0, shape, (16, 20))
    with torch.no_grad():
        targets = project(torch.from_numpy(truth), geometry)
    shard = ShardData(targets.to(device), geometry, np.arange(n_angles), n_angles,
                      torch.full((shape[0],), 1e-5, device=device))
    torch.manual_seed(0)
    model = DipNetwork(4, (4, 8), (2, 1), 2).to(device)
    noise = make_input_noise(4, shape, 0.1, torch.Generator().manual_seed(1)).to(device)
    return model, noise, shard


def _dip(**changes) -> DipConfig:
    return replace(DipConfig(), **{"lr": 3e-3, "checkpoint_every": 0, **changes})


# ----------------------------------------------------------------------------- CPU logic
def test_input_perturbation_on_the_cpu_keeps_its_numbers():
    """Drawn on the device now; on the CPU the stream is the one of before (a host
    generator seeded with seed * 1_000_003 + iteration), and a slab is the slab of the
    one-process draw."""
    from hpc_adept.dip.trainer import input_jitter

    shape = (1, 3, 8, 5, 6)
    before = torch.randn(shape, generator=torch.Generator().manual_seed(7 * 1_000_003 + 4))
    assert torch.equal(input_jitter(shape, None, 7, 4), before)
    part = input_jitter((1, 3, 4, 5, 6), (2, 6, 8), 7, 4, torch.device("cpu"))
    assert torch.equal(part, before[:, :, 2:6])


def test_rotation_grids_are_cached_per_geometry_and_bounded(monkeypatch):
    from hpc_adept.lamino import projector

    geometry = Geometry(np.linspace(0, 300, 7), 61.0, (6, 10, 12), (12, 16))
    volume = torch.rand(geometry.volume_shape, generator=torch.Generator().manual_seed(0))
    projector.clear_grid_cache()
    built = []
    original = projector._rotation_grid
    monkeypatch.setattr(projector, "_rotation_grid",
                        lambda *a, **k: built.append(1) or original(*a, **k))
    first = projector.project_torch(volume, geometry, 2**30)
    n_built = len(built)
    assert n_built >= 1
    again = projector.project_torch(volume, geometry, 2**30)
    back = projector.backproject_torch(first, geometry, 2**30)
    assert len(built) == n_built  # the projection and its adjoint reuse the grids
    assert torch.equal(first, again)
    # a budget too small for one grid: built per call, the results unchanged
    projector.clear_grid_cache()
    monkeypatch.setitem(projector.GRID_CACHE_BYTES, "cpu", 16)
    assert torch.equal(projector.project_torch(volume, geometry, 2**30), first)
    assert torch.equal(projector.backproject_torch(first, geometry, 2**30), back)
    assert len(built) == 3 * n_built
    projector.clear_grid_cache()


def test_optimiser_and_autotuning_change_nothing_on_the_cpu(monkeypatch):
    from hpc_adept.dip.trainer import autotune_convolutions, make_adam

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    autotune_convolutions(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    adam = make_adam(torch.nn.Linear(2, 2), _dip())
    assert not adam.defaults.get("fused")  # the default Adam: unchanged CPU results


def test_mpi_thread_level_is_checked_for_gpu_tensors():
    """The backward of CUDA tensors runs on autograd's device thread and calls MPI there
    (volume split, ranks sharing a GPU): refused in one line below THREAD_SERIALIZED."""
    from hpc_adept.parallel.slabs import mpi_thread_problem

    def mpi(level: int):
        return types.SimpleNamespace(THREAD_SINGLE=0, THREAD_FUNNELED=1, THREAD_SERIALIZED=2,
                                     THREAD_MULTIPLE=3, Query_thread=lambda: level)

    assert mpi_thread_problem(mpi(0), "cpu") is None  # CPU backward: the main thread
    assert mpi_thread_problem(mpi(2), "cuda") is None
    assert mpi_thread_problem(mpi(3), "cuda") is None
    problem = mpi_thread_problem(mpi(1), "cuda")
    assert "MPI_THREAD_FUNNELED" in problem and "\n" not in problem
    try:  # this machine's MPI, as mpi4py initialised it
        from mpi4py import MPI
    except ImportError:
        return
    assert mpi_thread_problem(MPI, "cuda") is None, MPI.Query_thread()


def test_cupy_pools_are_handed_back_after_the_ptycho_stage(monkeypatch):
    from hpc_adept.stages.ptycho import release_cupy_pool

    freed = []
    pool = types.SimpleNamespace(free_all_blocks=lambda: freed.append("device"))
    pinned = types.SimpleNamespace(free_all_blocks=lambda: freed.append("pinned"))
    plans = types.SimpleNamespace(clear=lambda: freed.append("fft plans"))
    config = types.SimpleNamespace(get_plan_cache=lambda: plans)
    fake = types.SimpleNamespace(get_default_memory_pool=lambda: pool,
                                 get_default_pinned_memory_pool=lambda: pinned,
                                 fft=types.SimpleNamespace(config=config))
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    release_cupy_pool()  # CuPy never imported: nothing to do, nothing imported
    assert "cupy" not in sys.modules and freed == []
    monkeypatch.setitem(sys.modules, "cupy", fake)
    release_cupy_pool()
    assert freed == ["fft plans", "device", "pinned"]  # plans first: they hold pool blocks


def test_alignment_reads_update_and_residual_exactly_in_one_copy():
    from hpc_adept.align.matching import _to_host

    from .host_reads import count_host_reads

    update = torch.tensor([[0.1, -2.5], [1e-8, 3.0]], dtype=torch.float32)
    residual = torch.tensor([0.3, 1.0 / 3.0], dtype=torch.float64)
    with count_host_reads(reads=("cpu", "item", "tolist")) as calls:
        host_update, host_residual = _to_host(update, residual)
    assert calls == ["cpu"]
    assert host_update.dtype == np.float32 and host_residual.dtype == np.float64
    assert np.array_equal(host_update, update.numpy())
    assert np.array_equal(host_residual, residual.numpy())


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kernel", ["torch", "triton"])
@pytest.mark.parametrize("volume_split", [False, True], ids=["whole", "slab"])
def test_gpu_dip_iteration_synchronises_once(kernel, volume_split):
    """Step, guard, record and fused Adam of one iteration: the one read of the reduced
    (data, TV, stop) tensor is the only synchronisation."""
    from hpc_adept.backend import cuda_sync_sites
    from hpc_adept.dip import DipTrainer
    from hpc_adept.parallel.context import SERIAL
    from hpc_adept.parallel.slabs import SlabCommunicator

    if kernel == "triton":
        pytest.importorskip("triton")
    device = torch.device("cuda")
    model, noise, shard = _problem(device)
    comm = None
    if volume_split:
        nz = noise.shape[2]
        comm = SlabCommunicator(SERIAL, device, nz, model.total_stride)
        shard = replace(shard, geometry=shard.geometry.slab(0, nz), slab=(0, nz, nz))
    trainer = DipTrainer(model, noise, shard, _dip(iterations=4, angles_per_step=3,
                                                   input_perturbation=0.02), comm,
                         kernel=kernel)
    trainer.prepare()
    for _ in trainer.data_terms:  # each angle group builds its tables; cuDNN's search
        assert trainer.advance()
    assert trainer.optimizer.defaults.get("fused") and torch.backends.cudnn.benchmark
    syncs = cuda_sync_sites(trainer.advance)
    assert len(syncs) <= 1, syncs
    assert trainer.iteration == len(trainer.data_terms) + 1
    assert np.isfinite(trainer.record.history["loss"]).all()


@pytest.mark.gpu
@needs_cuda
def test_gpu_triton_projector_inside_dip_training():
    """runtime.projector: triton trains the DIP like the torch kernel (same operator)."""
    pytest.importorskip("triton")
    from hpc_adept.dip import DipTrainer

    device = torch.device("cuda")
    curves = {}
    for kernel in ("torch", "triton"):
        model, noise, shard = _problem(device)
        result = DipTrainer(model, noise, shard, _dip(iterations=15), kernel=kernel).fit()
        assert np.isfinite(result.volume).all()
        curves[kernel] = np.array(result.history["loss"])
    assert curves["triton"][-1] < 0.7 * curves["triton"][0]
    np.testing.assert_allclose(curves["triton"][0], curves["torch"][0], rtol=1e-4)
    np.testing.assert_allclose(curves["triton"], curves["torch"], rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.mpi
@needs_cuda
def test_gpu_ddp_two_ranks_on_one_gpu():
    """Angles split, two ranks sharing the GPU: DDP over gloo with CUDA tensors gives the
    one-process training, and an iteration reads the device once."""
    result = run_cmd(["tests/mpi/check_dip.py"], n_ranks=2, env={"ADEPT_CHECK_DEVICE": "cuda"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dip ddp matches serial" in result.stdout


@pytest.mark.gpu
@pytest.mark.mpi
@needs_cuda
def test_gpu_volume_split_two_ranks_on_one_gpu():
    """Volume split, two ranks sharing the GPU: halo planes and sums staged through MPI
    (from autograd's device thread in the backward) give the one-process network and
    training."""
    result = run_cmd(["tests/mpi/check_dip_slabs.py"], n_ranks=2,
                     env={"ADEPT_CHECK_DEVICE": "cuda"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dip volume decomposition matches serial on 2 ranks" in result.stdout


@pytest.mark.gpu
def test_gpu_cupy_probe_fitting():
    """probe_from_scan on CuPy arrays (the large-probe case of tests/test_ptycho.py): a
    CuPy probe with the scan's energy from which LSQ-ML on the GPU converges."""
    cupy = _cupy_or_skip()
    from hpc_adept.config import PtychoConfig
    from hpc_adept.ptycho import phase_projection, probe_from_scan, reconstruct

    from .test_ptycho import PCC_MIN, large_probe_scan

    host_counts, positions, field, projection = large_probe_scan()
    counts = cupy.asarray(host_counts)
    start = probe_from_scan(counts, positions, field)
    assert isinstance(start, cupy.ndarray)
    energy = float(cupy.sum(cupy.abs(start) ** 2))
    assert energy == pytest.approx(float(counts.sum(axis=(1, 2)).mean()), rel=1e-4)
    result = reconstruct(counts, positions, field, PtychoConfig(iterations=150), probe=start)
    phase, _ = phase_projection(result.to_host())
    assert np.corrcoef(phase.ravel(), projection.ravel())[0, 1] > PCC_MIN


@pytest.mark.gpu
def test_gpu_ptycho_stage_with_a_fitted_probe(tmp_path):
    """adept ptycho on the GPU with ptycho.initial_probe: fitted (no probe in the files):
    the projections match the truth, as on the CPU (tests/test_ptycho_stage.py)."""
    _cupy_or_skip()
    from .test_ptycho_stage import CONFIG, assert_projections_match_truth

    config = {**CONFIG, "simulate": {**CONFIG["simulate"], "store_probe": False,
                                     "n_angles": 2},
              "runtime": {"device": "cuda"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = adept("simulate", "-c", "c.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    result = adept("ptycho", "-c", "c.yaml", "--set", "ptycho.iterations=40",
                   "ptycho.initial_probe=fitted", "ptycho.projection_shape=[32,32]",
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_projections_match_truth(tmp_path / "run", tmp_path / "dataset", 0.97)


@pytest.mark.gpu
def test_gpu_cupy_pool_is_empty_after_release():
    cupy = _cupy_or_skip()
    from hpc_adept.stages.ptycho import release_cupy_pool

    block = cupy.ones((1024, 1024), dtype=cupy.complex64)
    del block
    assert cupy.get_default_memory_pool().total_bytes() > 0  # kept by the pool
    release_cupy_pool()
    assert cupy.get_default_memory_pool().total_bytes() == 0


@pytest.mark.gpu
def test_gpu_memory_guard_counts_cupys_pool_as_used():
    """Blocks CuPy's pool keeps are used memory to the DIP memory guard (cudaMemGetInfo)
    until the ptycho stage hands them back."""
    cupy = _cupy_or_skip()
    from hpc_adept.backend import available_memory_bytes
    from hpc_adept.stages.ptycho import release_cupy_pool

    device = torch.device("cuda", cupy.cuda.Device().id)
    size, slack = 1 << 30, 64 << 20
    release_cupy_pool()
    free_before, _ = available_memory_bytes(device)
    block = cupy.empty(size, dtype=cupy.uint8)
    del block  # back in the pool, not in the driver
    held, _ = available_memory_bytes(device)
    release_cupy_pool()
    after, _ = available_memory_bytes(device)
    assert held <= free_before - size + slack
    assert after >= held + size - slack
