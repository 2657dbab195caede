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


@pytest.mark.parametrize(("device", "local_size", "gpus", "expected"), [
    ("cpu", 2, 0, "gloo"),
    ("cuda", 1, 1, "nccl"),
    ("cuda", 4, 4, "nccl"),
    ("cuda", 2, 1, "gloo"),  # make demo's 2 ranks on a one-GPU workstation
])
def test_torch_backend_uses_nccl_only_with_a_gpu_per_rank(monkeypatch, device, local_size,
                                                          gpus, expected):
    import torch

    import hpc_adept.backend
    from hpc_adept.parallel.torchdist import torch_backend

    monkeypatch.setattr(hpc_adept.backend, "cuda_device_count", lambda: gpus)
    assert torch_backend(torch.device(device), local_size) == expected
