"""Tests of the LSQ-ML ptychography kernel and the phase-projection extraction.

The reconstructions run on one small simulated scan (``_scan``): a 64 x 64 IC-like phase
projection (smooth blobs plus 3-pixel metal lines on an empty background, up to ~1.5 rad),
32 x 32 frames, a probe of 20 pixels diameter on a jittered 7-pixel raster (100 positions),
Poisson noise at 1e6 photons per pattern. Each 100-iteration run takes about half a second
on one core.

Thresholds were measured on this scan and three more seeds (profiling/RESULTS.md, "LSQ-ML
(issue 3)") and carry a margin of about 1.5x: with the true probe, LSQ-ML reaches a relative
object error of 0.0087-0.0095 (Gaussian model) and 0.0088-0.0092 (Poisson); pty-chi's LSQML
reaches 0.017-0.046 on the same data (its object keeps a linear phase ramp).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpc_adept import sim
from hpc_adept.backend import _cupy_usable
from hpc_adept.config import PtychoConfig
from hpc_adept.errors import ConfigError
from hpc_adept.ptycho import (
    add_probe_modes,
    lsqml,
    make_object_grid,
    optimal_steps,
    orthogonalize_modes,
    phase_projection,
    probe_from_data,
    reconstruct,
    solve_step_system,
    unwrap_phase,
)
from hpc_adept.ptycho.phase import (
    extract_phase,
    fit_background_plane,
    fit_plane,
    trusts_background,
)

FIELD = (64, 64)
FRAME = 32
PHOTONS = 1e6
ERROR_TRUE_PROBE = 0.015     # measured 0.0087-0.0095 over four seeds
ERROR_DATA_PROBE = 0.015     # 300 epochs, linear-ramp ambiguity removed; measured 0.0087-0.0097
PCC_MIN = 0.97               # the bar; measured > 0.999 with the true probe


def _phantom(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """IC-like projection, float64 [nv, nu], radians: blobs and lines on a zero background."""
    nv, nu = shape
    yy, xx = np.mgrid[0:nv, 0:nu]
    out = np.zeros(shape)
    for _ in range(4):
        cy, cx = rng.uniform(0.2, 0.8) * nv, rng.uniform(0.2, 0.8) * nu
        sigma = rng.uniform(0.08, 0.14) * nv
        out += rng.uniform(0.25, 0.5) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    for _ in range(10):
        r, c = rng.integers(4, nv - 8), rng.integers(4, nu - 8)
        length = rng.integers(6, nv // 2)
        if rng.random() < 0.5:
            out[r:r + 3, c:min(c + length, nu - 4)] += 0.6
        else:
            out[r:min(r + length, nv - 4), c:c + 3] += 0.6
    return out


def _simulate(seed: int = 0, jitter: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    projection = _phantom(FIELD, rng)
    probe = sim.make_probe(FRAME, 20.0)
    positions = sim.raster_positions(FIELD, 7.0, jitter, rng)
    pad = FRAME // 2 + 4
    obj = sim.object_from_projection(projection, 0.0, pad)
    intensity = sim.diffraction_patterns(obj, pad, FIELD, probe * math.sqrt(PHOTONS), positions)
    counts = rng.poisson(intensity).astype(np.float32)
    return {"projection": projection, "probe": probe, "positions": positions,
            "counts": counts, "intensity": intensity, "object": obj, "pad": pad}


@pytest.fixture(scope="module")
def scan() -> dict:
    return _simulate()


@pytest.fixture(scope="module")
def lit(scan: dict) -> np.ndarray:
    """Well-illuminated field pixels: the true illumination >= half its maximum, [nv, nu]."""
    weight = np.abs(scan["probe"]) ** 2
    illum = np.zeros((FIELD[0] + 2 * FRAME, FIELD[1] + 2 * FRAME))
    for pr, pc in scan["positions"]:
        r = int(np.floor(FRAME + (FIELD[0] - FRAME) / 2 + pr))
        c = int(np.floor(FRAME + (FIELD[1] - FRAME) / 2 + pc))
        illum[r:r + FRAME, c:c + FRAME] += weight
    illum = illum[FRAME:FRAME + FIELD[0], FRAME:FRAME + FIELD[1]]
    return illum >= 0.5 * illum.max()


def object_error(result: lsqml.LsqmlResult, projection: np.ndarray, region: np.ndarray,
                 remove_ramp: bool = False) -> float:
    """Relative error of the field after the optimal global complex scale (and linear ramp)."""
    field = np.asarray(result.to_host().object)[result.field_slices()]
    truth = np.exp(1j * projection)
    if remove_ramp:
        ratio = field * np.conj(truth)
        phase = np.angle(ratio / ratio[region].mean())
        rows, cols = np.nonzero(region)
        basis = np.stack([np.ones(rows.size), rows, cols], axis=1)
        coef = np.linalg.lstsq(basis, phase[region], rcond=None)[0]
        yy, xx = np.mgrid[0:field.shape[0], 0:field.shape[1]]
        field = field * np.exp(-1j * (coef[1] * yy + coef[2] * xx))
    a, b = field[region], truth[region]
    scale = np.vdot(a, b) / np.vdot(a, a)
    return float(np.linalg.norm(scale * a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def gaussian_run(scan: dict) -> lsqml.LsqmlResult:
    return reconstruct(scan["counts"], scan["positions"], FIELD, PtychoConfig(),
                       probe=scan["probe"])


# --------------------------------------------------------------------------- conventions


def test_forward_model_matches_simulator(scan: dict):
    """Our windows, sub-pixel probe shifts and FFT give the simulator's frames exactly."""
    positions = scan["positions"][:7]
    pad = scan["pad"]
    grid = lsqml.ObjectGrid(shape=scan["object"].shape, field_shape=FIELD,
                            field_offset=(pad, pad), frame_size=FRAME)
    origin = grid.window_origin(positions)
    starts = np.floor(origin).astype(np.int64)
    ramps = lsqml.shift_ramps(origin - starts, FRAME, "complex128")
    probe_hat = np.fft.fft2(scan["probe"])
    shifted = np.fft.ifft2(probe_hat[None, None] * ramps)
    patches = lsqml.gather_patches(scan["object"], starts, FRAME)
    far = np.fft.fft2(shifted * patches[:, None], norm="ortho")
    ours = np.fft.fftshift(np.abs(far[:, 0]) ** 2, axes=(-2, -1)) * PHOTONS
    np.testing.assert_allclose(ours, scan["intensity"][:7], rtol=1e-9, atol=1e-6)


def test_object_grid_holds_every_window():
    positions = np.array([[-20.3, 15.7], [18.9, -22.1], [0.0, 0.0]])
    grid = make_object_grid(positions, (40, 50), 16, padding_px=2)
    starts = np.floor(grid.window_origin(positions))
    assert starts.min() >= 2
    assert (starts + 16 + 2 <= np.array(grid.shape)).all()
    r, c = grid.field_offset
    assert r >= 0 and c >= 0 and r + 40 <= grid.shape[0] and c + 50 <= grid.shape[1]


@pytest.mark.parametrize("scatter", [lsqml.scatter_add, lsqml.scatter_add_indexed])
def test_scatter_add_sums_overlaps(scatter):
    image = np.zeros((6, 7), dtype=np.complex64)
    starts = np.array([[0, 0], [1, 2], [1, 2]])
    values = np.ones((3, 3, 3), dtype=np.complex64) * np.array([1, 2, 3])[:, None, None]
    scatter(image, starts, values)
    expected = np.zeros((6, 7))
    expected[0:3, 0:3] += 1
    expected[1:4, 2:5] += 5
    np.testing.assert_array_equal(image.real, expected)
    patches = lsqml.gather_patches(image, starts, 3)
    np.testing.assert_array_equal(patches[1], image[1:4, 2:5])


def test_scatter_add_loop_and_indexed_agree_for_one_mode_windows():
    rng = np.random.default_rng(5)
    starts = rng.integers(0, 20, size=(9, 2))
    values = (rng.standard_normal((9, 1, 12, 12))
              + 1j * rng.standard_normal((9, 1, 12, 12))).astype(np.complex64)
    looped, indexed = np.zeros((2, 32, 32), dtype=np.complex64)
    lsqml.scatter_add(looped, starts, values)
    lsqml.scatter_add_indexed(indexed, starts, values)
    np.testing.assert_allclose(looped, indexed, rtol=0, atol=1e-5)
    assert np.count_nonzero(looped) > 0


def test_gather_and_scatter_of_windows_are_adjoint():
    """LSQ-ML's window gather and its scatter-add (host loop and indexed paths) are an
    operator and its adjoint."""
    import torch

    from hpc_adept.linop import FunctionOperator, dottest

    starts = np.array([[0, 0], [3, 5], [3, 5], [10, 2], [7, 11]])
    shape, n = (20, 24), 8

    def gather(t, indexed=False):
        fn = lsqml.gather_patches_indexed if indexed else lsqml.gather_patches
        return torch.from_numpy(np.ascontiguousarray(fn(t.numpy(), starts, n)))

    def scatter(t, scatter_fn):
        image = np.zeros(shape)
        scatter_fn(image, starts, t.numpy())
        return torch.from_numpy(image)

    for scatter_fn in (lsqml.scatter_add, lsqml.scatter_add_indexed):
        for indexed in (False, True):
            op = FunctionOperator(lambda t, i=indexed: gather(t, i),
                                  lambda t, f=scatter_fn: scatter(t, f),
                                  shape, (len(starts), n, n))
            dottest(op, rtol=1e-12, seed=3)


def test_indexed_gather_at_paper_size_where_window_offsets_pass_2_to_the_31():
    """Issue 22: the GPU gathers windows through explicit indices. At the paper's size (a
    773^2 object, 512^2 frames) the all-windows view spans 262^2 x 512^2 = 1.8e10 > 2^31
    elements, which CuPy builds with the as_strided indexing bug get wrong; the indexed path
    never forms it, and equals the host's strided gather."""
    height, frame = 773, 512
    assert (height - frame + 1) ** 2 * frame**2 > 2**31
    rng = np.random.default_rng(7)
    image = (rng.standard_normal((height, height))
             + 1j * rng.standard_normal((height, height))).astype(np.complex64)
    starts = np.array([[0, 0], [261, 261], [130, 7], [261, 0]])
    indexed = lsqml.gather_patches_indexed(image, starts, frame)
    np.testing.assert_array_equal(indexed, lsqml.gather_patches(image, starts, frame))
    np.testing.assert_array_equal(indexed[1], image[261:, 261:])
    assert lsqml.patch_indices(starts, (frame, frame), height).max() == height**2 - 1


@pytest.mark.parametrize("mode", ["sparse", "compact"])
def test_batches_partition_positions(mode: str):
    rng = np.random.default_rng(0)
    positions = sim.raster_positions((60, 60), 6.0, 0.5, rng)
    plan = lsqml.plan_batches(positions, 16, mode, rng)
    batches = plan.epoch(rng)
    joined = np.sort(np.concatenate(batches))
    np.testing.assert_array_equal(joined, np.arange(len(positions)))
    spread = np.mean([np.mean(np.ptp(positions[b], axis=0)) for b in batches])
    # Sparse batches span the field; compact ones a small patch of it.
    assert spread > 40 if mode == "sparse" else spread < 30


# --------------------------------------------------------------------------- step sizes


def test_step_solver_known_2x2():
    # [[2, 1], [1, 3]] [a, b] = [4, 7]  ->  a = 1, b = 2 (no regularisation)
    a_obj, a_probe = solve_step_system(np.array([2.0]), np.array([3.0]), np.array([1.0]),
                                       np.array([4.0]), np.array([7.0]), regularization=0.0)
    assert a_obj[0] == pytest.approx(1.0) and a_probe[0] == pytest.approx(2.0)


def test_optimal_steps_use_real_off_diagonal():
    """``chi = 0.7 u + 1.3 v`` with complex, non-orthogonal u, v is recovered exactly; with
    the complex (or absolute) off-diagonal of the paper's typo it would not be."""
    rng = np.random.default_rng(3)
    u = (rng.standard_normal((2, 1, 8, 8)) + 1j * rng.standard_normal((2, 1, 8, 8)))
    v = 0.6j * u + 0.4 * (rng.standard_normal(u.shape) + 1j * rng.standard_normal(u.shape))
    chi = 0.7 * u + 1.3 * v
    a_obj, a_probe = optimal_steps(u, v, chi, regularization=0.0)
    np.testing.assert_allclose(a_obj, 0.7, rtol=1e-10)
    np.testing.assert_allclose(a_probe, 1.3, rtol=1e-10)
    uv = np.sum(np.conj(u) * v, axis=(1, 2, 3))
    assert np.all(np.abs(uv.imag) > 0.3 * np.abs(uv.real))  # the test is not trivial
    # Without a probe direction the solve is 1x1: a = Re<u, chi> / |u|^2.
    a_only, zero = optimal_steps(u, None, 0.5 * u, regularization=0.0)
    np.testing.assert_allclose(a_only, 0.5, rtol=1e-10)
    np.testing.assert_array_equal(zero, 0.0)


def test_poisson_step_solves_line_search():
    rng = np.random.default_rng(1)
    intensity = rng.uniform(50, 150, (3, 16, 16))
    counts = rng.poisson(intensity * 1.2).astype(float)
    xi = 1.0 - counts / intensity
    alpha = lsqml.poisson_step(xi, intensity, counts, newton_steps=8)

    def likelihood(a: float, j: int) -> float:
        model = (1 - a * xi[j]) ** 2 * intensity[j]
        return float(np.sum(model - counts[j] * np.log(model)))

    for j in range(3):
        best = min(np.linspace(0, 1, 2001), key=lambda a: likelihood(a, j))
        assert alpha[j] == pytest.approx(best, abs=1e-3)


# --------------------------------------------------------------------------- probes


def test_probe_from_data_scale_and_center(scan: dict):
    probe = probe_from_data(scan["counts"])
    assert probe.shape == (FRAME, FRAME) and probe.dtype == np.complex64
    total = float(np.sum(np.abs(probe) ** 2))
    assert total == pytest.approx(scan["counts"].sum((1, 2)).mean(), rel=1e-4)
    weight = np.abs(probe) ** 2
    coords = np.arange(FRAME) - (FRAME - 1) / 2
    assert abs(np.sum(weight.sum(1) * coords) / total) < 1.0
    assert abs(np.sum(weight.sum(0) * coords) / total) < 1.0


def test_modes_orthogonal_and_mixture_preserved():
    probe = sim.make_probe(24, 10.0).astype(np.complex64)
    modes = add_probe_modes(probe, 3, energy_fraction=0.1)
    gram = np.einsum("aij,bij->ab", modes.conj(), modes)
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-5 * np.abs(gram).max()
    power = np.real(np.diag(gram))
    assert power[0] >= power[1] >= power[2] > 0
    rng = np.random.default_rng(2)
    mixed = np.einsum("ab,bij->aij", np.linalg.qr(rng.standard_normal((3, 3)))[0], modes)
    again = orthogonalize_modes(mixed.astype(np.complex64))
    np.testing.assert_allclose(np.sum(np.abs(again) ** 2, 0), np.sum(np.abs(modes) ** 2, 0),
                               rtol=1e-4, atol=1e-6 * np.abs(modes).max() ** 2)


# --------------------------------------------------------------------------- reconstructions


def test_true_probe_gaussian_reaches_error(scan, lit, gaussian_run):
    error = object_error(gaussian_run, scan["projection"], lit)
    assert error < ERROR_TRUE_PROBE, error
    assert gaussian_run.iterations == 100
    assert gaussian_run.fourier_error.shape == (100,)
    assert gaussian_run.fourier_error.dtype == np.float64


def test_fourier_error_decreases_to_noise_floor(scan, gaussian_run):
    error = gaussian_run.fourier_error
    assert error[-1] < 0.1 * error[0]
    assert np.all(error[10:] <= 1.05 * error[9])
    # Noise floor: the error of the true model on the noisy counts, same metric.
    floor = np.sum((np.sqrt(scan["intensity"]) - np.sqrt(scan["counts"])) ** 2)
    floor /= scan["counts"].sum()
    assert error[-1] < 1.1 * floor, (error[-1], floor)


def test_phase_projection_correlates(scan, gaussian_run):
    phase, amplitude = phase_projection(gaussian_run)
    assert phase.shape == FIELD and phase.dtype == np.float32
    assert amplitude.shape == FIELD and amplitude.dtype == np.float32
    pcc = np.corrcoef(phase.ravel(), scan["projection"].ravel())[0, 1]
    assert pcc > PCC_MIN, pcc
    background = scan["projection"] < 1e-3
    assert abs(float(np.median(phase[background]))) < 0.02
    assert np.median(amplitude) == pytest.approx(1.0, abs=0.02)


def test_poisson_model(scan, lit):
    result = reconstruct(scan["counts"], scan["positions"], FIELD,
                         PtychoConfig(noise_model="poisson"), probe=scan["probe"])
    assert object_error(result, scan["projection"], lit) < ERROR_TRUE_PROBE
    assert result.fourier_error[-1] < 0.1 * result.fourier_error[0]


def test_probe_from_data(scan, lit):
    """From the back-propagated mean pattern (no probe given). The linear phase ramp is a
    true ambiguity of a refined probe. From this poor start (relative probe error ~0.5) the
    100-position scan needs ~300 epochs: at 100 the error was 0.014-0.085 over four seeds."""
    result = reconstruct(scan["counts"], scan["positions"], FIELD,
                         PtychoConfig(iterations=300))
    error = object_error(result, scan["projection"], lit, remove_ramp=True)
    assert error < ERROR_DATA_PROBE, error
    phase, _ = phase_projection(result)
    assert np.corrcoef(phase.ravel(), scan["projection"].ravel())[0, 1] > PCC_MIN



def large_probe_scan() -> tuple[np.ndarray, np.ndarray, tuple[int, int], np.ndarray]:
    """A scan with a probe of N/2 diameter (64 x 64 frames, 32 px aperture, 70 % overlap):
    (counts [n, 64, 64] float32, positions px, field, true projection)."""
    frame, diameter, field = 64, 32.0, (124, 124)
    rng = np.random.default_rng(0)
    projection = _phantom(field, rng)
    probe = sim.make_probe(frame, diameter)
    positions = sim.raster_positions(field, 0.3 * diameter, 1.0, rng)
    pad = frame // 2 + 4
    obj = sim.object_from_projection(projection, 0.0, pad)
    intensity = sim.diffraction_patterns(obj, pad, field, probe * math.sqrt(PHOTONS), positions)
    return rng.poisson(intensity).astype(np.float32), positions, field, projection


def test_probe_from_scan_large_probe():
    """A probe of N/2 diameter (64 x 64 frames, 32 px aperture propagated at Fresnel number
    4, 70 % overlap): the back-propagated mean pattern is a poor start there (PCC 0.962 after
    100 epochs here; at 256^2 LSQ-ML does not converge from it). From the retrieved pupil
    with the defocus fitted on the scan, PCC 0.981 / 0.993 (seeds 0 / 1) after 100 epochs,
    0.985 / 0.999 after 150; the true probe gives 0.999."""
    from hpc_adept.ptycho import probe_from_scan
    from hpc_adept.ptycho.probe import retrieve_pupil

    diameter = 32.0
    counts, positions, field, projection = large_probe_scan()
    pupil, radius = retrieve_pupil(counts.mean(0))
    assert pupil.min() >= 0 and radius == pytest.approx(1.15 * diameter / 2, rel=0.15)
    start = probe_from_scan(counts, positions, field)
    assert float(np.sum(np.abs(start) ** 2)) == pytest.approx(counts.sum((1, 2)).mean(),
                                                              rel=1e-4)
    result = reconstruct(counts, positions, field, PtychoConfig(iterations=150), probe=start)
    phase, _ = phase_projection(result)
    assert np.corrcoef(phase.ravel(), projection.ravel())[0, 1] > PCC_MIN

@pytest.mark.parametrize(("options", "dtype"), [
    (PtychoConfig(batch_mode="compact", momentum=True), "complex64"),
    (PtychoConfig(momentum=True), "complex64"),
    (PtychoConfig(probe_modes=2), "complex64"),
    (PtychoConfig(batch_size=50), "complex128"),
], ids=["compact+momentum", "sparse+momentum", "two-modes", "complex128"])
def test_variants_converge(scan, lit, options, dtype):
    result = reconstruct(scan["counts"], scan["positions"], FIELD, options, probe=scan["probe"],
                         dtype=dtype)
    assert object_error(result, scan["projection"], lit) < ERROR_TRUE_PROBE
    assert result.probe.shape == (options.probe_modes, FRAME, FRAME)
    assert result.object.dtype == np.dtype(dtype)


def test_bad_pixel_mask_is_honoured(scan, lit):
    rng = np.random.default_rng(4)
    mask = rng.random((FRAME, FRAME)) < 0.03
    mask[:, 5] = True  # a dead column
    garbage = scan["counts"].copy()
    garbage[:, mask] = rng.uniform(0, 1e5, (garbage.shape[0], int(mask.sum())))
    masked = reconstruct(garbage, scan["positions"], FIELD, PtychoConfig(),
                         probe=scan["probe"], mask=mask)
    unmasked = reconstruct(garbage, scan["positions"], FIELD, PtychoConfig(),
                           probe=scan["probe"])
    good = object_error(masked, scan["projection"], lit)
    assert good < ERROR_TRUE_PROBE, good
    assert object_error(unmasked, scan["projection"], lit) > 3 * good


def test_position_correction_recovers_errors(scan, lit):
    """Positions whose window holds structure are recovered; over the empty background a
    position is not determined by the data (it keeps its error there, and may drift)."""
    rng = np.random.default_rng(5)
    offsets = rng.uniform(-1.5, 1.5, scan["positions"].shape)
    offsets -= offsets.mean(0)
    options = PtychoConfig(position_correction=True, position_correction_start=5)
    result = reconstruct(scan["counts"], scan["positions"] + offsets, FIELD, options,
                         probe=scan["probe"])
    structured = np.array([_window_std(scan["projection"], p) > 0.1
                           for p in scan["positions"]])
    assert structured.mean() > 0.5

    def distances(error: np.ndarray) -> np.ndarray:
        error = error - error.mean(0)
        return np.sqrt(np.sum(error**2, axis=1))

    before = distances(offsets)[structured]
    after = distances(result.positions_px - scan["positions"])[structured]
    rms_before, rms_after = np.sqrt(np.mean(before**2)), np.sqrt(np.mean(after**2))
    # measured 1.03 -> 0.11 px (seed 0) and 0.05 px (seed 1)
    assert rms_after < 0.2 and rms_after < 0.2 * rms_before, (rms_before, rms_after)
    assert object_error(result, scan["projection"], lit) < 2 * ERROR_TRUE_PROBE


def _window_std(projection: np.ndarray, position: np.ndarray, half: int = 8) -> float:
    """Standard deviation of the projection in the central 16 x 16 pixels of a window."""
    r = int(round((projection.shape[0] - 1) / 2 + position[0]))
    c = int(round((projection.shape[1] - 1) / 2 + position[1]))
    return float(projection[max(r - half, 0):r + half, max(c - half, 0):c + half].std())


def test_callback_stops_early(scan):
    seen = []

    def stop_at_three(iteration: int, error: float) -> bool:
        seen.append((iteration, error))
        return iteration == 2

    result = reconstruct(scan["counts"], scan["positions"], FIELD, PtychoConfig(),
                         probe=scan["probe"], callback=stop_at_three)
    assert result.iterations == 3 and len(seen) == 3
    np.testing.assert_array_equal(result.fourier_error, [e for _, e in seen])


def test_bad_inputs_rejected(scan):
    with pytest.raises(ConfigError, match="ptycho.noise_model"):
        reconstruct(scan["counts"], scan["positions"], FIELD,
                    PtychoConfig(noise_model="laplace"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dtype"):
        reconstruct(scan["counts"], scan["positions"], FIELD, dtype="complex32")
    with pytest.raises(ValueError, match="positions_px"):
        reconstruct(scan["counts"], scan["positions"][:5], FIELD, PtychoConfig(iterations=1))
    with pytest.raises(ValueError, match="mask"):
        reconstruct(scan["counts"], scan["positions"], FIELD, PtychoConfig(iterations=1),
                    mask=np.zeros((3, 3), bool))


# --------------------------------------------------------------------------- phase


def test_unwrap_recovers_smooth_phase():
    yy, xx = np.mgrid[0:70, 0:90]
    truth = 0.004 * (yy - 30) ** 2 + 0.2 * xx + 2.5 * np.sin(xx / 11.0) * np.cos(yy / 13.0)
    wrapped = np.angle(np.exp(1j * truth))
    unwrapped = unwrap_phase(wrapped)
    np.testing.assert_allclose(unwrapped - unwrapped[0, 0], truth - truth[0, 0], atol=1e-9)


def test_phase_projection_removes_offset_and_ramp():
    rng = np.random.default_rng(6)
    truth = _phantom((80, 72), rng) * 4.0  # up to ~6 rad: wraps
    yy, xx = np.mgrid[0:80, 0:72]
    obj = np.exp(1j * (truth + 0.05 * yy - 0.08 * xx + 2.0))
    obj *= 1 + 0.01 * rng.standard_normal(obj.shape)
    phase, amplitude = phase_projection(obj, (80, 72))
    np.testing.assert_allclose(phase, truth, atol=0.05)
    assert np.median(amplitude) == pytest.approx(1.0, abs=0.01)


def test_background_plane_ignores_structure():
    rng = np.random.default_rng(7)
    truth = _phantom((64, 64), rng)
    yy, xx = np.mgrid[0:64, 0:64]
    plane = 0.3 + 0.01 * yy - 0.02 * xx
    fitted, background = fit_background_plane(truth + plane, np.ones((64, 64), bool))
    # The blobs' Gaussian tails leave the "empty" background a few mrad above zero.
    np.testing.assert_allclose(fitted, plane, atol=5e-3)
    assert not np.any(background & (truth > 0.05))


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_cupy_matches_numpy(scan):
    """Same code on CuPy: float32 agreement (measured on an H200: object 1.6e-5, Fourier
    error 6e-6 relative after 20 epochs; complex128: 5e-13)."""
    if not _cupy_usable():
        pytest.skip("cupy is not importable or no CUDA device is usable")
    import cupy

    options = PtychoConfig(iterations=20)
    host = reconstruct(scan["counts"], scan["positions"], FIELD, options, probe=scan["probe"])
    device = reconstruct(cupy.asarray(scan["counts"]), scan["positions"], FIELD, options,
                         probe=scan["probe"])
    assert isinstance(device.object, cupy.ndarray)
    device = device.to_host()
    assert np.abs(device.object - host.object).max() < 2e-4 * np.abs(host.object).max()
    assert np.abs(device.probe - host.probe).max() < 2e-4 * np.abs(host.probe).max()
    np.testing.assert_allclose(device.fourier_error, host.fourier_error, rtol=1e-4)


@pytest.mark.gpu
def test_cupy_position_correction_matches_numpy(scan):
    if not _cupy_usable():
        pytest.skip("cupy is not importable or no CUDA device is usable")
    import cupy

    offsets = np.random.default_rng(5).uniform(-1.0, 1.0, scan["positions"].shape)
    options = PtychoConfig(iterations=15, position_correction=True,
                           position_correction_start=5)
    start = scan["positions"] + offsets
    host = reconstruct(scan["counts"], start, FIELD, options, probe=scan["probe"])
    device = reconstruct(cupy.asarray(scan["counts"]), start, FIELD, options,
                         probe=scan["probe"])
    structured = np.array([_window_std(scan["projection"], p) > 0.1
                           for p in scan["positions"]])
    diff = np.abs(device.positions_px - host.positions_px)[structured]
    assert diff.max() < 1e-2, diff.max()


# --------------------------------------------------------------------------- host FFTs


@pytest.mark.parametrize("library", ["torch", "scipy"])
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_host_fft_pair_is_orthonormal_and_matches_numpy(library, dtype):
    from hpc_adept.ptycho.fft import make_fft2

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 2, 24, 24)) + 1j * rng.standard_normal((3, 2, 24, 24)))
    fft = make_fft2(np, library=library)
    assert library in fft.name
    y = fft.forward(x.astype(dtype))
    assert y.dtype == dtype and y.shape == x.shape
    tol = 1e-5 if dtype == np.complex64 else 1e-12
    reference = np.fft.fft2(x, norm="ortho")
    assert np.max(np.abs(y - reference)) < tol * np.max(np.abs(reference))
    back = fft.inverse(y, overwrite=True)
    assert np.max(np.abs(back - x)) < tol * np.max(np.abs(x))


def test_torch_host_fft_takes_views_read_only_and_reversed_arrays():
    from hpc_adept.ptycho.fft import make_fft2

    rng = np.random.default_rng(4)
    x = (rng.standard_normal((4, 16, 16)) + 1j * rng.standard_normal((4, 16, 16)))
    fft = make_fft2(np, library="torch")
    for view in (x[::-1], x[:, ::2, ::2], x.transpose(0, 2, 1)):
        assert np.allclose(fft.forward(view), np.fft.fft2(view, norm="ortho"), atol=1e-12)
    frozen = x.copy()
    frozen.flags.writeable = False
    assert np.allclose(fft.inverse(frozen), np.fft.ifft2(x, norm="ortho"), atol=1e-12)


def test_lsqml_gives_the_same_object_with_either_host_fft(scan):
    runs = [reconstruct(scan["counts"], scan["positions"], FIELD,
                        PtychoConfig(iterations=20, fft_library=library), probe=scan["probe"])
            for library in ("torch", "scipy")]
    a, b = (np.asarray(r.object) for r in runs)
    assert np.max(np.abs(a - b)) < 1e-3 * np.max(np.abs(a))
    with pytest.raises(ConfigError, match="ptycho.fft_library"):
        reconstruct(scan["counts"], scan["positions"], FIELD,
                    PtychoConfig(fft_library="fftw"))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- phase reference


def test_plane_reference_removes_an_added_plane_exactly():
    """``plane``: the weighted least-squares constant and ramp go, whatever was added; what
    is left has zero weighted mean and ramp."""
    rng = np.random.default_rng(8)
    truth = _phantom((60, 70), rng) + 0.3
    weight = rng.uniform(0.2, 1.0, truth.shape)
    support = np.ones(truth.shape, bool)
    support[:, :4] = False  # an unlit strip: no weight there
    yy, xx = np.mgrid[0:60, 0:70]
    out = {}
    for name, added in (("none", 0.0), ("plane", 0.4 - 0.006 * yy + 0.009 * xx)):
        out[name] = extract_phase(np.exp(1j * (truth + added)), truth.shape, support=support,
                                  weight=weight, reference="plane")
        assert out[name].reference == "plane" and out[name].offset_arbitrary
    np.testing.assert_allclose(out["plane"].phase, out["none"].phase, atol=2e-6)
    expected = truth - fit_plane(truth, np.where(support, weight, 0.0))
    np.testing.assert_allclose(out["plane"].phase, expected, atol=2e-6)
    w = np.where(support, weight, 0.0)
    for moment in (np.ones_like(w), yy, xx):
        assert abs(np.sum(w * moment * out["plane"].phase)) < 1e-3 * np.sum(w)


def _region_projections(seed: int, extended: bool, n_angles: int = 4) -> np.ndarray:
    """Projections [n, nv, nu] (rad) of a procedural chip region (40 x 56 x 56 voxels of
    27.2 nm, L = 61 deg) on its detector window: alone in vacuum or inside the chip."""
    import torch

    from hpc_adept.lamino import Geometry, LaminoOperator
    from hpc_adept.lamino.region import extended_shape, lateral_margin_px
    from hpc_adept.phantom import ground_truth_volume
    from hpc_adept.phantom.procedural import procedural_phantom
    from hpc_adept.stages.simulate import auto_projection_shape

    region = (40, 56, 56)
    window = auto_projection_shape(region, 61.0)
    margin = lateral_margin_px(region, window, 61.0)
    wide = extended_shape(region, margin)
    volume = ground_truth_volume(procedural_phantom(wide, 27.2e-9, seed), 6200.0, 27.2e-9)
    if not extended:
        keep = np.zeros(wide, bool)
        keep[:, margin:margin + region[1], margin:margin + region[2]] = True
        volume = np.where(keep, volume, 0.0)
    angles = np.arange(n_angles) * (360.0 / n_angles) + 10.0
    op = LaminoOperator(Geometry(angles, 61.0, wide, window), kernel="torch")
    with torch.no_grad():
        return op.forward(torch.from_numpy(volume.astype(np.float64))).numpy()


def test_vacuum_background_is_not_biased_by_noise():
    """The vacuum fit refined on its level: with 20 mrad of noise the vacuum beside an
    isolated region ends at 0 (the quantile fit alone left it about 0.5 sigma = 10 mrad
    above: measured 7-12 mrad here)."""
    rng = np.random.default_rng(9)
    for proj in _region_projections(12, extended=False, n_angles=3):
        yy, xx = np.mgrid[0:proj.shape[0], 0:proj.shape[1]]
        noisy = proj + 0.02 * rng.standard_normal(proj.shape) + 0.3 + 0.004 * yy - 0.003 * xx
        out = extract_phase(np.exp(1j * noisy), proj.shape, reference="vacuum")
        assert out.reference == "vacuum" and not out.offset_arbitrary
        vacuum = proj == 0
        assert vacuum.mean() > 0.3
        assert abs(float(np.mean((out.phase - proj)[vacuum]))) < 3e-3
        plane, _ = fit_background_plane(noisy, np.ones(proj.shape, bool))
        assert abs(float(np.mean((noisy - plane - proj)[vacuum]))) > 5e-3  # the old fit


@pytest.mark.parametrize("extended", [False, True], ids=["isolated", "extended"])
def test_auto_reference_tells_vacuum_from_chip(extended):
    """``auto`` on phantoms its thresholds were not chosen on (profiling/phase_reference.py
    chose them on seeds 1-4): the region in vacuum keeps the vacuum fit; inside a chip
    whose every ray crosses metal somewhere near the low end (the procedural phantom), it
    takes the plane. 2 % noise, offsets and ramps up to 0.5 rad."""
    rng = np.random.default_rng(10)
    truth = _region_projections(11, extended)
    yy, xx = np.mgrid[0:truth.shape[1], 0:truth.shape[2]]
    sigma = 0.02 * float(np.sqrt(np.mean(truth**2)))
    for proj in truth:
        c, gy, gx = rng.uniform(-0.5, 0.5, 3)
        disturbed = (proj + c + gy * yy / truth.shape[1] + gx * xx / truth.shape[2]
                     + sigma * rng.standard_normal(proj.shape))
        out = extract_phase(np.exp(1j * disturbed), proj.shape, reference="auto")
        assert out.reference == ("plane" if extended else "vacuum"), out.background
        assert trusts_background(out.background) is not extended
        if not extended:  # the vacuum fit: offset and ramp right to the noise
            np.testing.assert_allclose(out.phase, proj, atol=6 * sigma)


def test_bad_phase_reference_rejected():
    obj = np.exp(1j * _phantom((32, 32), np.random.default_rng(0)))
    with pytest.raises(ValueError, match="reference"):
        extract_phase(obj, (32, 32), reference="mean")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ptycho.phase_reference must be one of"):
        PtychoConfig(phase_reference="none").check()  # type: ignore[arg-type]
