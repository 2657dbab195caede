"""The same bits on any number of ranks (issue 21): exact fixed-point sums, the DIP with the
angles split and the FBP volume through ``adept recon`` on 1, 2 and 3 ranks.

The MPI test runs every rank with one torch thread (``runtime.torch_threads: 1``, and
``OMP_NUM_THREADS=1`` from the test helpers): the CPU convolutions' weight gradients depend
on the thread count, so equal bits need an equal thread count per rank.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hpc_adept.config import DipConfig
from hpc_adept.dip import DipNetwork, SerialCommunicator, ShardData, make_input_noise, train_dip
from hpc_adept.io import read_volume
from hpc_adept.lamino import Geometry, project
from hpc_adept.parallel.fixedpoint import (
    FIXED_POINT_BITS,
    dequantize,
    fixed_point_exponent,
    quantize,
)

from .conftest import adept, mpiexec_path

# The problem: 16 x 32 x 32 voxels, 12 angles, the demo's network; the float
# all-reduces of the DDP path give volumes 9 % apart (relative L2) on 1 and 2 ranks after
# 20 iterations here.
CONFIG = {
    "data": {"path": "dataset"},
    "output": {"dir": "run"},
    "simulate": {"phantom": "procedural", "volume_shape": [16, 32, 32],
                 "voxel_size_m": 2.72e-8, "n_angles": 12, "frame_size": 32,
                 "photons_per_pattern": 1.0e5, "seed": 3, "write_projections": True},
    "recon": {"methods": ["fbp", "dip"], "volume_shape": [16, 32, 32]},
    "dip": {"iterations": 30, "checkpoint_every": 0, "decomposition": "angles",
            "in_channels": 16, "channels": [16, 32, 48, 48, 48]},
    "runtime": {"device": "cpu", "torch_threads": 1},
}


def test_fixed_point_sums_do_not_depend_on_order_or_grouping():
    gen = torch.Generator().manual_seed(0)
    terms = [torch.randn(1000, generator=gen) * 10.0 ** float(e) for e in range(-3, 4)]
    k = fixed_point_exponent(max(float(t.abs().max()) for t in terms), len(terms))
    assert k is not None
    forward = sum(quantize(t, k, len(terms)) for t in terms)
    backward = quantize(terms[-1], k, len(terms))
    for t in reversed(terms[:-1]):
        backward = backward + quantize(t, k, len(terms))
    assert torch.equal(forward, backward)
    assert int(forward.abs().max()) < 2**FIXED_POINT_BITS
    exact = np.sum([t.double().numpy() for t in terms], axis=0)
    got = dequantize(forward, k, torch.float64).numpy()
    assert np.max(np.abs(got - exact)) <= len(terms) * 2.0 ** -k
    assert fixed_point_exponent(float("nan"), 3) is None
    assert fixed_point_exponent(0.0, 3) == 0


def test_exact_serial_training_matches_the_float_one():
    """One process scoring angle by angle with exact sums: the float path's loss curve and
    volume up to float rounding (which Adam amplifies a little)."""
    shape, n = (8, 12, 12), 7
    geometry = Geometry(np.arange(n) * 360.0 / n, 61.0, shape, (16, 20))
    truth = np.zeros(shape, np.float32)
    truth[2:5, 3:9, 2:10] = 0.02
    with torch.no_grad():
        targets = project(torch.from_numpy(truth), geometry)
    weights = torch.full((shape[0],), 1e-5)
    noise = make_input_noise(4, shape, 0.1, torch.Generator().manual_seed(1))
    settings = replace(DipConfig(), lr=2e-3, iterations=20, checkpoint_every=0,
                       angles_per_step=4)
    results = []
    for exact in (True, False):
        torch.manual_seed(0)
        shard = ShardData(targets, geometry, np.arange(n), n, weights, 0.5)
        results.append(train_dip(DipNetwork(4, (4, 8), (2, 1), 2), noise, shard, settings,
                                 SerialCommunicator(exact_sums=exact)))
    exact, plain = results
    curve = np.abs(np.subtract(exact.history["loss"], plain.history["loss"]))
    assert np.max(curve / np.abs(plain.history["loss"])) < 1e-4
    rel = np.linalg.norm(exact.volume - plain.volume) / np.linalg.norm(plain.volume)
    assert rel < 1e-3


@pytest.fixture(scope="module")
def det_dataset(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("det")
    (work / "det.yaml").write_text(yaml.safe_dump(CONFIG))
    result = adept("simulate", "-c", "det.yaml", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work


@pytest.mark.mpi
@pytest.mark.slow
def test_recon_gives_the_same_bits_on_1_2_and_3_ranks(det_dataset):
    """``adept recon`` (FBP, and the DIP with the angles split) on 1, 2 and 3 ranks:
    identical volume_fbp.h5 and volume_dip.h5 volumes and identical loss curves, on the
    simulator's default extended sample (the widened volume, the ray mask and the
    plane-free data term); the volume split within its measured bound."""
    if mpiexec_path() is None:
        pytest.skip("mpiexec not available")
    volumes, losses = {}, {}
    for n_ranks in (1, 2, 3):
        run_dir = det_dataset / f"r{n_ranks}"
        run_dir.mkdir()
        (run_dir / "projections.h5").write_bytes(
            (det_dataset / "run" / "projections.h5").read_bytes())
        result = adept("recon", "-c", "det.yaml", "--set", f"output.dir=r{n_ranks}",
                       n_ranks=n_ranks, cwd=det_dataset)
        assert result.returncode == 0, result.stderr[-3000:]
        volumes[n_ranks] = {m: read_volume(run_dir / f"volume_{m}.h5")[0]
                            for m in ("fbp", "dip")}
        losses[n_ranks] = json.loads((run_dir / "dip_history.json").read_text())["loss"]
    assert len(losses[1]) == 30 and losses[1][-1] < losses[1][0]
    for n_ranks in (2, 3):
        for method in ("fbp", "dip"):
            np.testing.assert_array_equal(volumes[n_ranks][method], volumes[1][method],
                                          err_msg=f"{method} on {n_ranks} ranks")
        assert losses[n_ranks] == losses[1]
    _volume_split_within_its_bound(det_dataset)


def _volume_split_within_its_bound(work: Path) -> None:
    """The volume split (z slabs) is not bit-reproducible: BatchNorm's statistics, the
    convolutions' weight gradients and the projections are summed over slabs whose
    boundaries move with the rank count. Its measured bound on this problem isolated
    (2 ranks, 30 iterations): the first loss within 6e-8, the loss curve within 6 %, the
    volume 10 % apart (relative L2), correlation 0.994 (3 ranks: 11 %, 12 %, 0.991);
    asserted with about 2x headroom. (On the extended sample the split drifts further:
    curve 34 %, volume 38 %, correlation 0.93 measured: README.)"""
    iso = work / "isolated"
    iso.mkdir()
    config = {**CONFIG, "simulate": {**CONFIG["simulate"], "sample": "isolated"}}
    (iso / "det.yaml").write_text(yaml.safe_dump(config))
    assert adept("simulate", "-c", "det.yaml", cwd=iso).returncode == 0
    one_run = adept("recon", "-c", "det.yaml", "--set", "recon.methods=[dip]", cwd=iso)
    assert one_run.returncode == 0, one_run.stderr[-3000:]
    one = read_volume(iso / "run" / "volume_dip.h5")[0]
    one_loss = json.loads((iso / "run" / "dip_history.json").read_text())["loss"]
    run_dir = iso / "slabs"
    run_dir.mkdir()
    (run_dir / "projections.h5").write_bytes((iso / "run" / "projections.h5").read_bytes())
    result = adept("recon", "-c", "det.yaml", "--set", "output.dir=slabs",
                   "recon.methods=[dip]", "dip.decomposition=volume", n_ranks=2, cwd=iso)
    assert result.returncode == 0, result.stderr[-3000:]
    volume = read_volume(run_dir / "volume_dip.h5")[0]
    loss = json.loads((run_dir / "dip_history.json").read_text())["loss"]
    np.testing.assert_allclose(loss[0], one_loss[0], rtol=1e-6)
    np.testing.assert_allclose(loss, one_loss, rtol=0.15)
    assert np.linalg.norm(volume - one) / np.linalg.norm(one) < 0.25
    assert np.corrcoef(volume.ravel(), one.ravel())[0, 1] > 0.98
