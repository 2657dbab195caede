"""Parallel helpers: partitions, serial fallback, and the MPI paths under mpiexec -n 2."""

from __future__ import annotations

import pytest

from hpc_adept.parallel import block_range, cyclic_indices
from hpc_adept.parallel.collectives import allreduce_sum, gather_dict
from hpc_adept.parallel.context import SERIAL

from .conftest import REPO, run_cmd


@pytest.mark.parametrize("n_items", [0, 1, 5, 7, 125])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_partitions_cover_once(n_items, size):
    for part in (block_range, cyclic_indices):
        seen = [i for rank in range(size) for i in part(n_items, size, rank)]
        assert sorted(seen) == list(range(n_items))
    lengths = [len(block_range(n_items, size, r)) for r in range(size)]
    assert max(lengths) - min(lengths) <= 1


def test_partition_rejects_bad_rank():
    with pytest.raises(ValueError):
        block_range(4, 2, 2)


def test_serial_collectives_are_identity():
    import numpy as np

    a = np.arange(3.0)
    assert allreduce_sum(SERIAL, a) is a
    assert gather_dict(SERIAL, {1: "x"}) == {1: "x"}


@pytest.mark.mpi
def test_mpi_context_and_collectives_two_ranks():
    result = run_cmd([str(REPO / "tests" / "mpi" / "check_collectives.py")], n_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "collectives ok on 2 ranks" in result.stdout


@pytest.mark.mpi
def test_torch_distributed_from_mpi_two_ranks():
    result = run_cmd([str(REPO / "tests" / "mpi" / "check_torchdist.py")], n_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gloo allreduce ok" in result.stdout


@pytest.mark.mpi
def test_distributed_lamino_operator_two_ranks():
    result = run_cmd([str(REPO / "tests" / "mpi" / "check_lamino_operator.py")], n_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed lamino operator ok on 2 ranks" in result.stdout


def test_dynamic_queue_serial():
    from hpc_adept.parallel.workqueue import DynamicQueue

    with DynamicQueue(SERIAL, 4) as queue:
        assert list(queue) == [0, 1, 2, 3]
        assert queue.take() is None


@pytest.mark.mpi
def test_dynamic_queue_two_ranks():
    result = run_cmd([str(REPO / "tests" / "mpi" / "check_workqueue.py")], n_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "workqueue ok" in result.stdout


@pytest.mark.parametrize(("placements", "expected"), [
    ([("n0", None), ("n0", None)], "gloo"),  # CPUs
    ([("n0", "GPU-a")], "nccl"),
    ([("n0", "GPU-a"), ("n0", "GPU-b"), ("n0", "GPU-c"), ("n0", "GPU-d")], "nccl"),
    ([("n0", "GPU-a"), ("n0", "GPU-a")], "gloo"),  # make demo's 2 ranks on one GPU
    # a scheduler showing each task one GPU: every rank sees cuda:0, each a different GPU
    ([("n0", "visible=0/index=0"), ("n0", "visible=1/index=0")], "nccl"),
    # nodes that differ: one has a GPU per rank, the other shares one: all ranks take gloo
    ([("n0", "GPU-a"), ("n0", "GPU-b"), ("n1", "GPU-c"), ("n1", "GPU-c")], "gloo"),
    ([("n0", "GPU-a"), ("n1", None)], "gloo"),
])
def test_torch_backend_uses_nccl_only_with_a_gpu_per_rank(placements, expected):
    from hpc_adept.parallel.torchdist import backend_for

    assert backend_for(placements) == expected


def test_device_identity_of_a_cpu_is_none():
    import torch

    from hpc_adept.parallel.torchdist import agree_torch_backend, device_identity

    assert device_identity(torch.device("cpu")) is None
    assert agree_torch_backend(SERIAL, None) == "gloo"
    assert agree_torch_backend(SERIAL, "GPU-a") == "nccl"


@pytest.mark.mpi
def test_ranks_agree_on_the_backend_and_exchange_large_halo_planes():
    """Issue 22: one backend for all ranks, whatever each rank sees; halo planes above
    NCCL's internal buffer (4 MiB) exchanged in one batch (here over gloo)."""
    result = run_cmd([str(REPO / "tests" / "mpi" / "check_backend_and_halo.py")], n_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backend agreement and halo exchange ok" in result.stdout


@pytest.mark.mpi
def test_reregistration_two_ranks():
    """A projection on a wrong match is searched again and moved alike on 2 ranks."""
    result = run_cmd([str(REPO / "tests" / "mpi" / "check_reregistration.py")], n_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "re-registration ok on 2 ranks" in result.stdout
