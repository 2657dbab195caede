"""Deep image prior: network, loss terms, trainer (guard, best state, stop, resume),
checkpoints, and the ``adept recon`` dip method on 1 and 2 ranks, SIGTERM and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hpc_adept.config import DipConfig, load_config
from hpc_adept.dip import (
    DipNetwork,
    ShardData,
    count_parameters,
    data_loss,
    emphasise,
    fingerprint,
    fourier_emphasis,
    list_checkpoints,
    load_latest_checkpoint,
    make_input_noise,
    save_checkpoint,
    train_dip,
    tv_loss,
    tv_slice_weights,
    wavelet_emphasis,
)
from hpc_adept.errors import EXIT_STOPPED, ConfigError, DataError
from hpc_adept.io import read_volume
from hpc_adept.lamino import Geometry, backproject, project

from .conftest import REPO, adept, mpiexec_path, run_cmd

TINY_NET = {"in_channels": 4, "channels": [4, 8], "strides": [2, 1], "skip_channels": 2}


def _dip(**changes) -> DipConfig:
    """The dip section these trainer tests were written for: lr 2e-4 and no periodic
    checkpoint (the config's defaults are 1e-3 and 100), then ``changes``."""
    return replace(DipConfig(), **{"lr": 2e-4, "checkpoint_every": 0, **changes})


# ----------------------------------------------------------------------------- network
def test_reference_network_size_and_output_range():
    net = DipNetwork()  # the reference sizes
    assert 2.5e6 < count_parameters(net) < 3.0e6  # "about 2.8 M parameters"
    small = DipNetwork(3, (4, 6, 6), (2, 2, 1), 2)
    noise = make_input_noise(3, (9, 11, 13), 0.1, torch.Generator().manual_seed(0))
    assert float(noise.min()) >= 0.0 and float(noise.max()) <= 0.1
    out = small(noise)
    assert out.shape == (9, 11, 13)  # odd sizes: upsampling goes to the skip's size
    assert float(out.detach().min()) >= -0.03 and float(out.detach().max()) <= 0.03


def test_network_init_is_xavier_with_gain_and_seeded():
    torch.manual_seed(5)
    a = DipNetwork(4, (8, 8), (2, 1), 2, init_gain=0.2)
    torch.manual_seed(5)
    b = DipNetwork(4, (8, 8), (2, 1), 2, init_gain=0.2)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    w = a.encoders[1][0].weight.detach()  # 8 -> 8 channels, 3x3x3
    bound = 0.2 * np.sqrt(6.0 / (8 * 27 + 8 * 27))
    assert float(w.abs().max()) <= bound + 1e-7 and float(w.abs().max()) > 0.8 * bound
    # convolutions feeding BatchNorm carry no bias (it would be removed by BN anyway)
    assert a.encoders[0][0].bias is None and a.head.bias is not None


def test_activation_checkpointing_gives_the_same_gradients():
    noise = make_input_noise(3, (6, 8, 8), 0.1, torch.Generator().manual_seed(0))
    grads = []
    for flag in (False, True):
        torch.manual_seed(1)
        net = DipNetwork(3, (4, 6), (2, 1), 2, activation_checkpointing=flag)
        net(noise.requires_grad_(flag)).square().sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bf16_and_checkpointing_train():
    truth, shard = _tiny_problem()
    device = torch.device("cuda")
    shard = ShardData(shard.targets.to(device), shard.geometry, shard.global_index,
                      shard.n_total, shard.tv_weights.to(device))
    torch.manual_seed(0)
    model = DipNetwork(4, (4, 8), (2, 1), 2, activation_checkpointing=True).to(device)
    noise = make_input_noise(4, truth.shape, 0.1, torch.Generator().manual_seed(1)).to(device)
    result = train_dip(model, noise, shard, _dip(iterations=30, lr=3e-3, bf16=True))
    assert np.isfinite(result.volume).all()
    assert result.best_loss < 0.5 * result.history["loss"][0]


# ----------------------------------------------------------------------------- losses
def _images(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(3, 64, 48))
    return np.cumsum(np.cumsum(base, axis=1), axis=2)  # smooth-ish, like projections


def test_wavelet_emphasis_scales_detail_bands_and_keeps_energy():
    import pywt

    images = _images()
    out = wavelet_emphasis(images, "db8", levels=2, gain=2.5)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(np.linalg.norm(out, axis=(1, 2)),
                               np.linalg.norm(images, axis=(1, 2)), rtol=1e-5)
    with warnings.catch_warnings():  # "level too high": exact with periodization
        warnings.simplefilter("ignore", UserWarning)
        c_in = pywt.wavedec2(images[1], "db8", level=2, mode="periodization")
        c_out = pywt.wavedec2(out[1].astype(np.float64), "db8", level=2,
                              mode="periodization")
    factor = c_out[0] / c_in[0]
    f = float(np.median(factor))
    np.testing.assert_allclose(c_out[0], f * c_in[0], rtol=1e-4, atol=1e-4 * abs(c_in[0]).max())
    for k, gain in ((1, 2.5), (2, 6.25)):  # coarsest detail x2.5, finest x2.5^2
        for band_in, band_out in zip(c_in[k], c_out[k], strict=True):
            np.testing.assert_allclose(band_out, f * gain * band_in, rtol=1e-3,
                                       atol=1e-4 * abs(f * gain * band_in).max())
    np.testing.assert_allclose(wavelet_emphasis(images, gain=1.0), images, rtol=1e-5,
                               atol=1e-5 * abs(images).max())
    odd = images[:, :45, :37]  # odd sizes, 4 levels: still an exact round trip
    np.testing.assert_allclose(wavelet_emphasis(odd, levels=4, gain=1.0), odd, rtol=1e-5,
                               atol=1e-5 * abs(odd).max())


def test_fourier_emphasis_and_none():
    images = _images(1)
    np.testing.assert_allclose(fourier_emphasis(images, gain=1.0), images, rtol=1e-5,
                               atol=1e-5 * abs(images).max())
    out = fourier_emphasis(images, levels=3, gain=2.0)
    np.testing.assert_allclose(np.linalg.norm(out, axis=(1, 2)),
                               np.linalg.norm(images, axis=(1, 2)), rtol=1e-5)

    def high_fraction(x):
        spec = np.abs(np.fft.fft2(x)) ** 2
        k = np.hypot(*np.meshgrid(np.fft.fftfreq(x.shape[1]), np.fft.fftfreq(x.shape[2]),
                                  indexing="ij"))
        return spec[:, k > 0.25].sum() / spec.sum()

    assert high_fraction(out) > 5 * high_fraction(images)
    same = emphasise(images, "none")
    np.testing.assert_array_equal(same, images.astype(np.float32))
    with pytest.raises(ValueError, match="unknown high-pass"):
        emphasise(images, "median")


def test_tv_slice_weights_from_heights():
    w = tv_slice_weights(144, 27.2e-9, (3e-6, 3e-8), (2.75e-6,))
    # slice k is below 2.75 um when its centre (k + 0.5) * 27.2 nm is: k <= 100
    assert (w[:101] == 3e-6).all() and (w[101:] == 3e-8).all()
    w3 = tv_slice_weights(10, 1.0, (1.0, 2.0, 3.0), (3.0, 6.0))
    np.testing.assert_array_equal(w3, [1, 1, 1, 2, 2, 2, 3, 3, 3, 3])


def test_tv_loss_matches_explicit_sum_float64():
    rng = np.random.default_rng(2)
    vol = rng.normal(size=(4, 5, 6))
    weights = np.array([1.0, 0.5, 0.0, 2.0])
    expected = 0.0
    for z in range(4):
        for y in range(5):
            for x in range(6):
                if y + 1 < 5:
                    expected += weights[z] * abs(vol[z, y + 1, x] - vol[z, y, x])
                if x + 1 < 6:
                    expected += weights[z] * abs(vol[z, y, x + 1] - vol[z, y, x])
    got = tv_loss(torch.from_numpy(vol), torch.from_numpy(weights))
    assert got.dtype == torch.float64
    assert abs(float(got) - expected) < 1e-12 * expected


def test_data_term_gradient_is_the_backprojected_residual_float64():
    geometry = Geometry(np.arange(5) * 72.0, 61.0, (6, 8, 8), (14, 14))
    rng = np.random.default_rng(3)
    vol = torch.from_numpy(rng.normal(size=(6, 8, 8))).requires_grad_(True)
    target = torch.from_numpy(rng.normal(size=(5, 14, 14)))
    loss = data_loss(project(vol, geometry), target)
    loss.backward()
    with torch.no_grad():
        expected = backproject(project(vol, geometry) - target, geometry)
        assert abs(float(loss) - 0.5 * float(((project(vol, geometry) - target) ** 2).sum())) \
            < 1e-10 * float(loss)
    torch.testing.assert_close(vol.grad, expected, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- trainer
def _tiny_problem(n_angles: int = 6, shape=(8, 12, 12), seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, np.float32)
    truth[2:4, 3:9, 2:10] = 0.02
    truth[5:7, 2:10, 6:8] = 0.02
    geometry = Geometry(np.arange(n_angles) * 360.0 / n_angles, 61.0, shape, (16, 20))
    with torch.no_grad():
        proj = project(torch.from_numpy(truth), geometry).numpy()
    proj = proj + rng.normal(0, 0.002, proj.shape).astype(np.float32)
    shard = ShardData(torch.from_numpy(proj), geometry, np.arange(n_angles), n_angles,
                      torch.full((shape[0],), 1e-5))
    return truth, shard


def _model_and_noise(shape, seed: int = 0):
    torch.manual_seed(seed)
    model = DipNetwork(TINY_NET["in_channels"], TINY_NET["channels"], TINY_NET["strides"],
                       TINY_NET["skip_channels"])
    noise = make_input_noise(4, shape, 0.1, torch.Generator().manual_seed(seed + 1))
    return model, noise


def test_training_reduces_the_loss_and_returns_the_best_state():
    truth, shard = _tiny_problem()
    model, noise = _model_and_noise(truth.shape)
    result = train_dip(model, noise, shard, _dip(iterations=40, lr=3e-3))
    loss = np.array(result.history["loss"])
    assert len(loss) == 40 and loss[-5:].min() < 0.2 * loss[0]
    assert result.best_loss == pytest.approx(loss.min())
    assert result.history["iteration"][int(np.argmin(loss))] == result.best_iteration
    assert result.volume.shape == truth.shape and result.next_iteration == 40
    # the best volume reproduces the best loss
    with torch.no_grad():
        v = torch.from_numpy(result.volume)
        value = float(data_loss(project(v, shard.geometry), shard.targets)
                      + tv_loss(v, shard.tv_weights))
    assert value == pytest.approx(result.best_loss, rel=1e-4)


def test_angle_groups_cover_the_angles_and_estimate_the_full_loss():
    truth, shard = _tiny_problem(n_angles=6)
    model, noise = _model_and_noise(truth.shape)
    full = train_dip(model, noise, shard, _dip(iterations=1, guard=False))
    model, noise = _model_and_noise(truth.shape)
    halves = train_dip(model, noise, shard,
                       _dip(iterations=2, guard=False, angles_per_step=3))
    # same initial network: half the angles x 2 estimates the full data term
    assert halves.history["data"][0] == pytest.approx(full.history["data"][0], rel=0.3)
    assert halves.history["data"][0] != pytest.approx(full.history["data"][0], rel=1e-6)


def test_guard_rolls_back_a_blow_up_and_lowers_the_rate():
    truth, shard = _tiny_problem()
    model, noise = _model_and_noise(truth.shape)
    sabotaged = []

    def sabotage(it, values):
        if it == 12 and not sabotaged:  # a blow-up: wreck the head's weights once
            sabotaged.append(values["loss"])
            with torch.no_grad():
                model.head.weight.mul_(-300.0)
                model.head.bias.fill_(50.0)

    settings = _dip(iterations=20, lr=2e-3, guard_snapshot_every=5, guard_jump=3.0)
    result = train_dip(model, noise, shard, settings, on_iteration=sabotage)
    assert result.history["rollbacks"] and result.history["rollbacks"][0] == [12, 10]
    lrs = result.history["lr"]
    assert lrs[0] == pytest.approx(2e-3) and lrs[-1] == pytest.approx(1e-3)
    assert result.best_loss <= sabotaged[0] * 1.0001
    assert max(result.history["loss"]) < 3.0 * result.history["loss"][0]
    # without the guard, the sabotage is accepted and the loss history shows the jump
    model, noise = _model_and_noise(truth.shape)
    sabotaged.clear()
    unguarded = train_dip(model, noise, shard, _dip(iterations=20, lr=2e-3,
                                                             guard=False),
                          on_iteration=sabotage)
    assert not unguarded.history["rollbacks"]
    assert max(unguarded.history["loss"]) > 3.0 * min(unguarded.history["loss"][:12])


def test_stop_and_resume_reach_the_uninterrupted_result(tmp_path):
    truth, shard = _tiny_problem()
    model, noise = _model_and_noise(truth.shape)
    settings = _dip(iterations=14, lr=2e-3, guard_snapshot_every=4)
    straight = train_dip(model, noise, shard, settings)

    saved = []
    model, noise = _model_and_noise(truth.shape)
    calls = []

    def stop_after_six():
        calls.append(1)
        return len(calls) >= 6

    first = train_dip(model, noise, shard, settings, stop_requested=stop_after_six,
                      save_checkpoint=lambda s: saved.append(
                          save_checkpoint(tmp_path, {**s, "fingerprint": "f"})))
    assert first.stopped and first.next_iteration == 6 and len(saved) == 1
    found = load_latest_checkpoint(tmp_path, "f")
    assert found is not None and found[1]["iteration"] == 6
    model, _ = _model_and_noise(truth.shape, seed=99)  # other weights: must be replaced
    resumed = train_dip(model, noise, shard, settings, resume_state=found[1])
    assert resumed.next_iteration == 14 and not resumed.stopped
    np.testing.assert_array_equal(resumed.history["loss"], straight.history["loss"])
    np.testing.assert_array_equal(resumed.volume, straight.volume)


def test_guard_verdicts():
    from hpc_adept.dip.guard import RollbackGuard, Verdict

    guard = RollbackGuard(_dip(guard_jump=4.0, guard_max_rollbacks=1))
    nan = float("nan")
    assert guard.verdict(1.0, np.inf, 0, 0) is Verdict.ACCEPT  # the first step
    assert guard.verdict(5.0, 1.0, 0, 3) is Verdict.ACCEPT  # a jump, but no snapshot yet
    assert guard.verdict(nan, 1.0, 0, 3) is Verdict.GIVE_UP
    guard.snapshot = {"iteration": 2}
    assert guard.verdict(3.9, 1.0, 0, 3) is Verdict.ACCEPT
    assert guard.verdict(4.1, 1.0, 0, 3) is Verdict.ROLL_BACK
    assert guard.verdict(nan, 1.0, 0, 3) is Verdict.ROLL_BACK
    assert guard.verdict(4.1, 1.0, 1, 3) is Verdict.ACCEPT  # no rollback left
    assert guard.verdict(nan, 1.0, 1, 3) is Verdict.GIVE_UP
    off = RollbackGuard(_dip(guard=False))
    assert off.verdict(100.0, 1.0, 0, 3) is Verdict.ACCEPT
    with pytest.raises(DataError, match="loss is inf at iteration 7"):
        off.verdict(float("inf"), 1.0, 0, 7)


def test_data_terms_follow_the_decomposition():
    from hpc_adept.dip.shard import NoAngles, OwnAngles, SlabAngles, plan_data_terms
    from hpc_adept.dip.trainer import default_projector

    _, shard = _tiny_problem(n_angles=6)
    assert [type(t) for t in plan_data_terms(shard, None, default_projector)] == [OwnAngles]
    # this rank holds angles 0, 1 of 6; groups of angles_per_step=2: {0, 3}, {1, 4}, {2, 5}
    mine = ShardData(shard.targets[:2], shard.geometry.subset(slice(0, 2)), np.arange(2), 6,
                     shard.tv_weights)
    terms = plan_data_terms(mine, 2, default_projector)
    assert [type(t) for t in terms] == [OwnAngles, OwnAngles, NoAngles]
    assert terms[0].scale == pytest.approx(3.0) and len(terms[0].targets) == 1
    # volume split: the slab is projected for the group's angles, this rank scores its own
    slab = ShardData(shard.targets[2:4], shard.geometry.slab(0, 4), np.arange(2, 4), 6,
                     shard.tv_weights[:4], slab=(0, 4, 8))
    terms = plan_data_terms(slab, 2, default_projector)
    assert all(isinstance(t, SlabAngles) for t in terms)
    # angles 2, 3 here: 3 is row 1 of group {0, 3}, none is in {1, 4}, 2 is row 0 of {2, 5}
    assert [t.scored.tolist() for t in terms] == [[1], [], [0]]


def _trainer_for_sync_count(volume_split: bool):
    """A trainer with everything a step can do on: angle groups, input perturbation, the
    guard with snapshots, TV; with ``volume_split`` the network runs as one slab of a
    SlabCommunicator (one rank in this process: the slab BatchNorm and halo code)."""
    from hpc_adept.dip import DipTrainer
    from hpc_adept.parallel.context import SERIAL
    from hpc_adept.parallel.slabs import SlabCommunicator

    truth, shard = _tiny_problem()
    model, noise = _model_and_noise(truth.shape)
    comm = None
    if volume_split:
        comm = SlabCommunicator(SERIAL, torch.device("cpu"), truth.shape[0],
                                model.total_stride)
        shard = ShardData(shard.targets, shard.geometry.slab(0, truth.shape[0]),
                          shard.global_index, shard.n_total, shard.tv_weights,
                          slab=(0, truth.shape[0], truth.shape[0]))
    dip = _dip(iterations=4, lr=3e-3, angles_per_step=3, input_perturbation=0.02,
               guard_snapshot_every=1)
    return DipTrainer(model, noise, shard, dip, comm)


@pytest.mark.parametrize("volume_split", [False, True], ids=["whole", "slab"])
def test_a_dip_iteration_reads_the_device_once(volume_split):
    """Issue 22 item 5: the loss terms, the stop flag and the guard's inputs reach the host
    in ONE read per iteration (one reduced tensor); BatchNorm, the input perturbation, the
    projector and the record stay on the device. On a GPU each counted call would be a
    synchronisation (torch.cuda.set_sync_debug_mode; tests/test_gpu_paths.py)."""
    from .host_reads import adam_step_counts, count_host_reads

    trainer = _trainer_for_sync_count(volume_split)
    trainer.prepare()
    assert trainer.advance()  # the first iteration builds the caches (grids, operators)
    with count_host_reads() as calls:
        step = trainer.step()
    assert len(calls) <= 1, calls
    assert np.isfinite(step.total) and not step.stop
    trainer.optimizer.zero_grad()
    with count_host_reads(ignore=adam_step_counts(trainer.optimizer)) as calls:
        assert trainer.advance()
    assert len(calls) <= 1, calls  # the whole iteration: step, guard, record, Adam
    assert trainer.iteration == 2 and len(trainer.record.history["loss"]) == 2


def test_the_trainer_projects_through_its_projector():
    from hpc_adept.dip import DipTrainer
    from hpc_adept.dip.trainer import default_projector

    truth, shard = _tiny_problem()
    geometries = []

    def counting(geometry):
        geometries.append(geometry)
        return default_projector(geometry)

    model, noise = _model_and_noise(truth.shape)
    hooked = DipTrainer(model, noise, shard, _dip(iterations=3, angles_per_step=3),
                        projector=counting).fit()
    assert [g.n_angles for g in geometries] == [3, 3]  # one projection per angle group
    model, noise = _model_and_noise(truth.shape)
    plain = train_dip(model, noise, shard, _dip(iterations=3, angles_per_step=3))
    np.testing.assert_array_equal(hooked.volume, plain.volume)


def test_checkpoints_keep_two_and_refuse_a_different_problem(tmp_path):
    state = {"iteration": 0, "fingerprint": fingerprint({"a": 1}, np.ones(3)),
             "model": {"w": torch.ones(2)}, "history": {"loss": [1.0, 0.5]}}
    for it in (5, 10, 15):
        save_checkpoint(tmp_path, {**state, "iteration": it})
    assert [it for it, _ in list_checkpoints(tmp_path)] == [10, 15]
    assert not list(tmp_path.glob(".*tmp*"))
    path, loaded = load_latest_checkpoint(tmp_path, state["fingerprint"])
    assert path.name == "dip_0000015.pt" and loaded["history"]["loss"] == [1.0, 0.5]
    assert fingerprint({"a": 1}, np.ones(3)) != fingerprint({"a": 2}, np.ones(3))
    assert fingerprint({"a": 1}, np.ones(3)) != fingerprint({"a": 1}, np.ones(3) * 2)
    with pytest.raises(DataError, match="different dip config or input data"):
        load_latest_checkpoint(tmp_path, fingerprint({"a": 2}, np.ones(3)))
    assert load_latest_checkpoint(tmp_path / "none", "x") is None
    # a rerun with fewer iterations: only a checkpoint at or before them
    path, _ = load_latest_checkpoint(tmp_path, state["fingerprint"], max_iteration=14)
    assert path.name == "dip_0000010.pt"
    assert load_latest_checkpoint(tmp_path, state["fingerprint"], max_iteration=9) is None
    # ... whose own checkpoints are kept next to the last two of the longer training
    for it in (3, 6, 9):
        save_checkpoint(tmp_path, {**state, "iteration": it})
    assert [it for it, _ in list_checkpoints(tmp_path)] == [6, 9, 10, 15]


def test_resuming_a_longer_training_at_k_equals_a_run_of_k(tmp_path):
    """Nothing in the training depends on the total iteration count (the learning rate
    falls in steps of lr_step), so a checkpoint of a longer run serves a shorter one."""
    truth, shard = _tiny_problem()
    short = _dip(iterations=10, lr=2e-3, lr_step=4, lr_gamma=0.5,
                          guard_snapshot_every=4)
    model, noise = _model_and_noise(truth.shape)
    straight = train_dip(model, noise, shard, short)
    model, noise = _model_and_noise(truth.shape)
    longer = replace(short, iterations=14, checkpoint_every=5)
    train_dip(model, noise, shard, longer, save_checkpoint=lambda s: save_checkpoint(
        tmp_path, {**s, "fingerprint": "f"}))
    path, state = load_latest_checkpoint(tmp_path, "f", max_iteration=10)
    assert state["iteration"] == 10
    model, _ = _model_and_noise(truth.shape, seed=99)
    resumed = train_dip(model, noise, shard, short, resume_state=state)
    assert resumed.next_iteration == 10
    np.testing.assert_array_equal(resumed.history["lr"], straight.history["lr"])
    np.testing.assert_array_equal(resumed.history["loss"], straight.history["loss"])
    np.testing.assert_array_equal(resumed.volume, straight.volume)


def test_checkpoint_sets_per_problem_bounded_and_the_old_layout_adopted(tmp_path):
    from hpc_adept.dip.checkpoint import (
        KEEP_SETS,
        checkpoint_set,
        checkpoint_sets,
        prepare_checkpoint_set,
    )

    prints = [fingerprint({"a": i}) for i in range(KEEP_SETS + 2)]
    state = {"model": {"w": torch.ones(2)}}
    # a checkpoint of the flat layout of earlier versions goes into its own set
    save_checkpoint(tmp_path, {**state, "iteration": 3, "fingerprint": prints[0]})
    current = prepare_checkpoint_set(tmp_path, prints[1])
    assert current == checkpoint_set(tmp_path, prints[1]) and current.is_dir()
    assert not list_checkpoints(tmp_path)
    old = checkpoint_set(tmp_path, prints[0])
    assert [it for it, _ in list_checkpoints(old)] == [3]
    save_checkpoint(current, {**state, "iteration": 2, "fingerprint": prints[1]})
    # dip.resume=false empties the current set only
    prepare_checkpoint_set(tmp_path, prints[1], resume=False)
    assert not list_checkpoints(current) and list_checkpoints(old)
    # at most KEEP_SETS sets, the least recently used go first
    for fp in prints[2:]:
        time.sleep(0.05)  # (distinct modification times, the order of use)
        prepare_checkpoint_set(tmp_path, fp)
    names = [p.name for p in checkpoint_sets(tmp_path)]
    assert names == [checkpoint_set(tmp_path, fp).name for fp in prints[::-1][:KEEP_SETS]]


def test_dip_config_is_validated(tmp_path):
    cfg = load_config(None, ["dip.lr=2e-4", "dip.hpf=wavelet", "dip.channels=[8,16]",
                             "dip.strides=[2,1]"])
    assert cfg.dip.lr == 2e-4 and cfg.dip.channels == (8, 16)
    for bad, message in (("dip.tv_weights=[1e-6]", "one more value"),
                         ("dip.strides=[2]", "equal, non-zero lengths"),
                         ("dip.hpf=median", "dip.hpf must be one of"),
                         ("dip.lr=0", "dip.lr must be > 0"),
                         ("dip.betas=[0.9,1.0]", "dip.betas"),
                         ("dip.guard_jump=1", "guard_jump")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [bad])


# ----------------------------------------------------------------------------- stage / CLI
DIP_CONFIG = {
    "data": {"path": "dataset"},
    "output": {"dir": "run"},
    # isolated: the 1- vs 2-rank agreement holds for data the region volume explains (an
    # extended sample's surroundings make Adam amplify float32 rounding differently)
    "simulate": {"phantom": "procedural", "sample": "isolated", "volume_shape": [16, 16, 16],
                 "voxel_size_m": 2.72e-8, "n_angles": 8, "frame_size": 32,
                 "photons_per_pattern": 1.0e5, "seed": 3, "write_projections": True},
    "recon": {"methods": ["fbp", "dip"], "volume_shape": [16, 16, 16]},
    "dip": {"iterations": 20, "checkpoint_every": 5, **TINY_NET},
    "runtime": {"device": "cpu"},
}


@pytest.fixture(scope="module")
def dip_dataset(tmp_path_factory) -> Path:
    """A simulated dataset and its projections.h5 (written once for the module)."""
    work = tmp_path_factory.mktemp("dip")
    (work / "tiny.yaml").write_text(yaml.safe_dump(DIP_CONFIG))
    result = adept("simulate", "-c", "tiny.yaml", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work


def _recon(work: Path, out: str, *sets: str, n_ranks: int = 1):
    run_dir = work / out
    run_dir.mkdir(exist_ok=True)
    target = run_dir / "projections.h5"
    if not target.exists():
        target.write_bytes((work / "run" / "projections.h5").read_bytes())
    return adept("recon", "-c", "tiny.yaml", "--set", f"output.dir={out}", *sets,
                 n_ranks=n_ranks, cwd=work)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def test_recon_dip_writes_volume_history_and_resumes(dip_dataset):
    result = _recon(dip_dataset, "serial")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = dip_dataset / "serial"
    volume, attrs = read_volume(run_dir / "volume_dip.h5")
    assert volume.shape == (16, 16, 16) and (run_dir / "volume_fbp.h5").is_file()
    assert attrs["method"] == "dip" and 0 <= attrs["best_iteration"] < 20
    history = json.loads((run_dir / "dip_history.json").read_text())
    assert len(history["loss"]) == 20 and history["loss"][-1] < history["loss"][0]
    assert (run_dir / "figures" / "dip_loss.png").is_file()
    assert [it for it, _ in _checkpoints(run_dir)] == [15, 20]
    # a rerun resumes at the end: nothing to train, same volume
    again = _recon(dip_dataset, "serial", "--set", "recon.methods=[dip]")
    assert again.returncode == 0 and "resuming from" in again.stderr
    np.testing.assert_array_equal(read_volume(run_dir / "volume_dip.h5")[0], volume)
    # other settings start their own set (never blocked by, never resuming, the first)
    other = _recon(dip_dataset, "serial", "--set", "recon.methods=[dip]",
                   "--set", "dip.lr=5e-4")
    assert other.returncode == 0, other.stderr[-3000:]
    assert "resuming" not in other.stderr and "starting from iteration 0" in other.stderr
    assert len(read_json_history(run_dir)["loss"]) == 20
    assert len(list((run_dir / "checkpoints" / "dip").iterdir())) == 2
    # back to the first settings: their set is resumed
    back = _recon(dip_dataset, "serial", "--set", "recon.methods=[dip]")
    assert back.returncode == 0 and "(iteration 20 of 20)" in back.stderr
    np.testing.assert_array_equal(read_volume(run_dir / "volume_dip.h5")[0], volume)
    # fewer iterations: a checkpoint at or before them, the result of a run that long
    shorter = _recon(dip_dataset, "serial", "--set", "recon.methods=[dip]",
                     "--set", "dip.iterations=17")
    assert shorter.returncode == 0 and "(iteration 15 of 17)" in shorter.stderr
    short_volume, attrs = read_volume(run_dir / "volume_dip.h5")
    assert attrs["iterations"] == 17
    straight = _recon(dip_dataset, "straight17", "--set", "recon.methods=[dip]",
                      "--set", "dip.iterations=17")
    assert straight.returncode == 0, straight.stderr[-3000:]
    v_straight = read_volume(dip_dataset / "straight17" / "volume_dip.h5")[0]
    assert _relative(v_straight, short_volume) < 1e-6
    fresh = _recon(dip_dataset, "serial", "--set", "recon.methods=[dip]",
                   "--set", "dip.iterations=3")
    assert fresh.returncode == 0 and "past dip.iterations=3" in fresh.stderr
    assert read_volume(run_dir / "volume_dip.h5")[1]["iterations"] == 3


def read_json_history(run_dir: Path) -> dict:
    return json.loads((run_dir / "dip_history.json").read_text())


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The DIP checkpoints of all settings in ``run_dir``, oldest first."""
    root = run_dir / "checkpoints" / "dip"
    sets = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    return sorted(c for s in sets for c in list_checkpoints(s))


@pytest.mark.mpi
def test_recon_dip_one_and_two_ranks_agree(dip_dataset):
    one = _recon(dip_dataset, "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _recon(dip_dataset, "two", n_ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    v1 = read_volume(dip_dataset / "one" / "volume_dip.h5")[0]
    v2 = read_volume(dip_dataset / "two" / "volume_dip.h5")[0]
    assert _relative(v1, v2) < 1e-4
    h1 = json.loads((dip_dataset / "one" / "dip_history.json").read_text())
    h2 = json.loads((dip_dataset / "two" / "dip_history.json").read_text())
    assert h2["n_ranks"] == 2 and len(h1["loss"]) == len(h2["loss"]) == 20
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=1e-4)


@pytest.mark.mpi
def test_recon_dip_volume_decomposition_on_two_ranks(dip_dataset):
    # The exact equivalence (float64, 1e-9) is tests/mpi/check_dip_slabs.py; here the
    # command in float32, where rounding differences grow slowly through Adam.
    if not (dip_dataset / "one" / "volume_dip.h5").is_file():
        assert _recon(dip_dataset, "one").returncode == 0
    two = _recon(dip_dataset, "slabs", "--set", "dip.decomposition=volume", n_ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "volume split in z slabs, rank 0 computes slices 0-7 of 16" in two.stderr
    v1 = read_volume(dip_dataset / "one" / "volume_dip.h5")[0]
    v2, attrs = read_volume(dip_dataset / "slabs" / "volume_dip.h5")
    assert attrs["decomposition"] == "volume" and attrs["n_ranks"] == 2
    h1 = json.loads((dip_dataset / "one" / "dip_history.json").read_text())
    h2 = json.loads((dip_dataset / "slabs" / "dip_history.json").read_text())
    # the first loss is a forward pass of the same weights: equal to float rounding; later
    # ones drift (Adam turns rounding of near-zero gradients into full steps)
    np.testing.assert_allclose(h2["loss"][0], h1["loss"][0], rtol=1e-5)
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=5e-2)
    # the slabs assembled in the right place: the volumes agree up to that drift
    assert np.corrcoef(v1.ravel(), v2.ravel())[0, 1] > 0.99


@pytest.mark.mpi
def test_recon_dip_bf16_on_cpu_one_rank_and_volume_split(dip_dataset):
    """dip.bf16 on CPU (autocast): close to float32, and the slab split (bf16 halos over
    MPI) close to one process in bf16."""
    if not (dip_dataset / "one" / "volume_dip.h5").is_file():
        assert _recon(dip_dataset, "one").returncode == 0
    bf16 = _recon(dip_dataset, "bf16", "--set", "dip.bf16=true")
    assert bf16.returncode == 0, bf16.stderr[-3000:]
    slabs = _recon(dip_dataset, "bf16_slabs", "--set", "dip.bf16=true",
                   "--set", "dip.decomposition=volume", n_ranks=2)
    assert slabs.returncode == 0, slabs.stderr[-3000:]
    v32 = read_volume(dip_dataset / "one" / "volume_dip.h5")[0]
    v16 = read_volume(dip_dataset / "bf16" / "volume_dip.h5")[0]
    v16_slabs = read_volume(dip_dataset / "bf16_slabs" / "volume_dip.h5")[0]
    h32, h16, h16_slabs = (json.loads((dip_dataset / d / "dip_history.json").read_text())
                           for d in ("one", "bf16", "bf16_slabs"))
    # bf16 keeps 8 bits of mantissa: the loss curves agree to a few 1e-3 (measured), the
    # volumes less (0.97-0.98 correlation after 20 iterations: the tiny network's
    # trajectories part in what the projections do not constrain)
    assert h16["loss"][-1] < 0.5 * h16["loss"][0]
    for history in (h16, h16_slabs):
        np.testing.assert_allclose(history["loss"], h32["loss"], rtol=5e-2)
    assert np.corrcoef(v32.ravel(), v16.ravel())[0, 1] > 0.95
    assert np.corrcoef(v16.ravel(), v16_slabs.ravel())[0, 1] > 0.95


@pytest.mark.mpi
def test_volume_decomposition_with_too_many_ranks_is_refused_in_one_line(dip_dataset):
    # 2 slices in blocks of 2 (TINY_NET strides 2, 1): nothing left for rank 1
    result = _recon(dip_dataset, "too_many", "--set", "dip.decomposition=volume",
                    "--set", "recon.volume_shape=[2, 16, 16]", "--set", "recon.methods=[dip]",
                    n_ranks=2)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "use at most 1 ranks or dip.decomposition: angles" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (dip_dataset / "too_many" / "volume_dip.h5").exists()


def test_volume_decomposition_needs_a_block_of_slices_per_rank():
    from hpc_adept.config import load_config
    from hpc_adept.errors import ConfigError
    from hpc_adept.stages.recon import dip_slab

    cfg = load_config(None, ["recon.volume_shape=[13, 16, 16]", "dip.decomposition=volume"])
    # strides (2, 2, 1, 1, 1): blocks of 4 slices, the last one shorter
    assert [dip_slab(cfg, 3, r) for r in range(3)] == [range(0, 8), range(8, 12),
                                                       range(12, 13)]
    with pytest.raises(ConfigError, match="use at most 4 ranks or dip.decomposition: angles"):
        dip_slab(cfg, 5, 4)


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _python_ranks(pid: int) -> list[int]:
    ranks = []
    for child in _descendants(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"hpc_adept" in part for part in cmd):
            ranks.append(child)
    return ranks


def _start_and_terminate(work: Path, out: str, n_ranks: int) -> subprocess.CompletedProcess:
    """Start a long dip run, SIGTERM one rank after the first checkpoint, wait."""
    run_dir = work / out
    run_dir.mkdir(exist_ok=True)
    (run_dir / "projections.h5").write_bytes((work / "run" / "projections.h5").read_bytes())
    cmd = [sys.executable, "-m", "hpc_adept", "recon", "-c", "tiny.yaml", "--set",
           f"output.dir={out}", "--set", "recon.methods=[dip]", "--set", "dip.iterations=400"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MPIEXEC_TIMEOUT="240",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if n_ranks > 1:
        cmd = [mpiexec_path(), "-n", str(n_ranks), *cmd]
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not _checkpoints(run_dir) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    targets = _python_ranks(proc.pid) if n_ranks > 1 else [proc.pid]
    assert len(targets) == n_ranks, targets
    os.kill(targets[-1], signal.SIGTERM)  # one rank only: the others learn it collectively
    stdout, stderr = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("n_ranks", [1, pytest.param(2, marks=[pytest.mark.mpi,
                                                                pytest.mark.slow])])
def test_sigterm_checkpoints_and_a_rerun_reaches_the_uninterrupted_volume(dip_dataset,
                                                                          n_ranks):
    if n_ranks > 1 and mpiexec_path() is None:
        pytest.skip("mpiexec not available")
    out = f"term{n_ranks}"
    stopped = _start_and_terminate(dip_dataset, out, n_ranks)
    assert stopped.returncode == EXIT_STOPPED, stopped.stderr[-3000:]
    assert "adept: stopped: dip: stopped at iteration" in stopped.stderr
    assert "checkpoint written" in stopped.stderr
    run_dir = dip_dataset / out
    assert not (run_dir / "volume_dip.h5").exists()
    history = json.loads((run_dir / "dip_history.json").read_text())
    k = history["iterations_done"]
    assert history["stopped"] and 5 <= k < 400
    assert _checkpoints(run_dir)[-1][0] == k
    # finish a short run: resume to k + 6 iterations and compare with a straight run
    n = str(k + 6)
    resumed = _recon(dip_dataset, out, "--set", "recon.methods=[dip]",
                     "--set", f"dip.iterations={n}", n_ranks=n_ranks)
    assert resumed.returncode == 0 and f"(iteration {k} of {n})" in resumed.stderr
    straight = _recon(dip_dataset, f"straight{n_ranks}", "--set", "recon.methods=[dip]",
                      "--set", f"dip.iterations={n}", n_ranks=n_ranks)
    assert straight.returncode == 0, straight.stderr[-3000:]
    v_resumed = read_volume(run_dir / "volume_dip.h5")[0]
    v_straight = read_volume(dip_dataset / f"straight{n_ranks}" / "volume_dip.h5")[0]
    assert _relative(v_straight, v_resumed) < 1e-6


@pytest.mark.mpi
def test_ddp_kernel_matches_serial_under_mpiexec():
    result = run_cmd(["tests/mpi/check_dip.py"], n_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dip ddp matches serial" in result.stdout


@pytest.mark.mpi
def test_volume_decomposition_kernel_matches_serial_under_mpiexec():
    result = run_cmd(["tests/mpi/check_dip_slabs.py"], n_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dip volume decomposition matches serial on 2 ranks" in result.stdout


@pytest.mark.mpi
def test_a_rank_failing_inside_the_loop_ends_the_job_quickly(dip_dataset):
    """One of two ranks raises inside the DIP loop: both end within 30 s, non-zero, with the
    failing rank's message (never a hang in the gradient all-reduce)."""
    import time

    run_dir = dip_dataset / "fault"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "projections.h5").write_bytes((dip_dataset / "run" / "projections.h5")
                                             .read_bytes())
    start = time.monotonic()
    result = run_cmd([str(REPO / "tests" / "mpi" / "fail_in_dip.py"), "recon", "-c",
                      "tiny.yaml", "--set", "output.dir=fault", "recon.methods=[dip]",
                      "dip.iterations=200"], n_ranks=2, cwd=dip_dataset, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "injected fault in the DIP loop on rank 1" in result.stderr
    assert "adept: error (rank 1)" in result.stderr
    assert elapsed < 30, elapsed
    assert not (run_dir / "volume_dip.h5").exists()


def test_memory_guard_stops_a_dip_that_cannot_fit(dip_dataset):
    """A volume far beyond this machine's memory is refused before any work, in one line."""
    from hpc_adept.dip.memory import estimate_dip_bytes

    small = estimate_dip_bytes(4, (4, 8), (2, 1), 2, (16, 16, 16), 8, (24, 24))
    large = estimate_dip_bytes(4, (4, 8), (2, 1), 2, (32, 32, 32), 8, (24, 24))
    assert large > small  # activations grow with the volume
    run_dir = dip_dataset / "guard"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "projections.h5").write_bytes((dip_dataset / "run" / "projections.h5")
                                             .read_bytes())
    result = adept("recon", "-c", "tiny.yaml", "--set", "output.dir=guard",
                   "recon.methods=[fbp,dip]", "recon.volume_shape=[512,2048,2048]",
                   "runtime.memory_guard=false",  # FBP's guard off: the DIP's own speaks
                   cwd=dip_dataset)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "dip: needs about" in lines[0], result.stderr
    assert "dip.activation_checkpointing" in lines[0]
    assert "runtime.keep_host_memory: false" in lines[0]  # CPU run: kept memory counted
    assert not (run_dir / "volume_fbp.h5").exists()


def test_non_finite_loss_without_guard_stops_with_the_iteration():
    truth, shard = _tiny_problem()
    model, noise = _model_and_noise(truth.shape)

    def poison(it, values):
        if it == 3:  # NaN weights: every later loss is NaN
            with torch.no_grad():
                model.head.weight.fill_(float("nan"))

    with pytest.raises(DataError, match=r"dip: loss is nan at iteration \d+ \(dip.guard is off"):
        train_dip(model, noise, shard, _dip(iterations=10, guard=False),
                  on_iteration=poison)
