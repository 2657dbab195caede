"""Evaluation kernels: GMM binarisation, BER, PCC, layer exclusion, registration, PSD."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from hpc_adept.metrics import (
    affine_fit,
    ber,
    ber_per_layer,
    center_crop_slices,
    common_region,
    estimate_shift,
    exclude_ambiguous_layers,
    fit_gmm,
    layer_ranges,
    partly_filled_metal,
    pcc,
    pcc_per_layer,
    power_spectrum,
    psd_cuts,
    register,
    restrict,
)


def blocky_occupancy(shape, seed=0, fraction=0.3):
    """Random 0/1 volume of 2x2x2 blocks (a crude IC: clusters, not salt and pepper)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random(tuple((n + 1) // 2 for n in shape)) < fraction
    return coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: shape[0], : shape[1], : shape[2]]


def flip_voxels(occupancy, layer_counts, seed=1):
    """Copy of ``occupancy`` with exactly ``layer_counts[k]`` voxels flipped in layer k."""
    rng = np.random.default_rng(seed)
    flipped = occupancy.copy()
    per_layer = occupancy.shape[1] * occupancy.shape[2]
    for k, count in layer_counts.items():
        chosen = rng.choice(per_layer, size=count, replace=False)
        layer = flipped[k].reshape(-1)
        layer[chosen] = ~layer[chosen]
    return flipped


def test_ber_known_exactly_through_gmm_binarisation():
    shape = (10, 24, 24)
    truth = blocky_occupancy(shape)
    counts = {2: 7, 5: 30, 9: 1}
    estimate = flip_voxels(truth, counts)
    rng = np.random.default_rng(2)
    # Two clear modes (0.026 rad metal contrast, noise sigma 0.002) for both volumes.
    ref_values = 0.026 * truth + 0.002 * rng.standard_normal(shape)
    est_values = -0.01 + 0.05 * estimate + 0.004 * rng.standard_normal(shape)
    ref_model = fit_gmm(ref_values, n_samples=3000, seed=0)
    est_model = fit_gmm(est_values, n_samples=3000, seed=0)
    assert ref_model.separated and ref_model.separation > 8
    assert np.array_equal(ref_model.binarize(ref_values), truth)
    assert np.array_equal(est_model.binarize(est_values), estimate)
    total = sum(counts.values())
    assert ber(ref_model.binarize(ref_values), est_model.binarize(est_values)) == \
        total / truth.size
    expected = np.zeros(shape[0])
    for k, c in counts.items():
        expected[k] = c / (shape[1] * shape[2])
    np.testing.assert_array_equal(ber_per_layer(truth, estimate), expected)


def test_gmm_recovers_the_mixture_and_its_equal_posterior_threshold():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0.0, 1.0, 60_000), rng.normal(6.0, 1.0, 60_000)])
    model = fit_gmm(values, n_samples=50_000, seed=4)
    assert model.means == pytest.approx((0.0, 6.0), abs=0.05)
    assert model.stds == pytest.approx((1.0, 1.0), abs=0.05)
    # Equal weights and widths: the posteriors cross half-way.
    assert model.threshold == pytest.approx(0.5 * sum(model.means), abs=0.05)
    assert model.posterior(np.array([model.threshold]))[0] == pytest.approx(0.5, abs=1e-9)
    assert model.as_dict()["n_samples"] == 50_000
    # The same seed gives the same fit; the subsample really is a subsample.
    assert fit_gmm(values, n_samples=50_000, seed=4).threshold == model.threshold
    with pytest.raises(ValueError, match="constant"):
        fit_gmm(np.ones((4, 4, 4)))
    # An already binary volume (a reference without /occupancy) is reproduced exactly.
    binary = blocky_occupancy((8, 12, 12), seed=12, fraction=0.1)
    assert np.array_equal(fit_gmm(binary.astype(np.float32)).binarize(binary), binary)


def test_pcc_matches_numpy_and_a_float64_sum():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((6, 9, 11)).astype(np.float32)
    b = (0.7 * a + 0.5 * rng.standard_normal(a.shape)).astype(np.float32)
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    n = x.size
    by_sums = (n * (x * y).sum() - x.sum() * y.sum()) / math.sqrt(
        (n * (x * x).sum() - x.sum() ** 2) * (n * (y * y).sum() - y.sum() ** 2))
    assert pcc(a, b) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert pcc(a, b) == pytest.approx(by_sums, abs=1e-10)
    per_layer = pcc_per_layer(a, b)
    for k in range(a.shape[0]):
        assert per_layer[k] == pytest.approx(np.corrcoef(a[k].ravel(), b[k].ravel())[0, 1],
                                             abs=1e-12)
    assert pcc(a, 3.0 * a - 2.0) == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(pcc(a, np.zeros_like(a)))


def test_layer_exclusion_all_empty_and_ambiguous_layers():
    shape = (6, 20, 20)
    occupancy = blocky_occupancy(shape, seed=6)
    occupancy[1] = False  # an empty layer: no feature to score
    occupancy[4] = True  # an all-metal layer
    posterior = np.where(occupancy, 0.99, 0.01)
    posterior[3, :10] = 0.5  # half of layer 3 between the modes
    result = exclude_ambiguous_layers(occupancy, posterior, min_class_fraction=0.01,
                                      max_uncertain_fraction=0.15)
    assert np.flatnonzero(result.excluded).tolist() == [1, 3, 4]
    assert "metal fraction" in result.reasons[1]
    assert "dielectric fraction" in result.reasons[4]
    assert "uncertain" in result.reasons[3]
    assert result.uncertain_fraction[3] == pytest.approx(0.5)
    # A binary reference: only the class-fraction rule applies.
    binary = exclude_ambiguous_layers(occupancy, None, min_class_fraction=0.01)
    assert np.flatnonzero(binary.excluded).tolist() == [1, 4]
    assert binary.uncertain_fraction is None


def test_layers_cut_through_the_tops_of_lines_are_excluded():
    """A binary reference with its phase: a layer whose metal voxels are all only partly
    filled (0.6 of the metal phase, labelled metal by fill >= 0.5) is excluded; a layer
    with a few partial voxels at the lines' sides is kept."""
    shape = (5, 10, 10)
    occupancy = np.zeros(shape, bool)
    occupancy[:, 2:8, 3:6] = True  # a line through every layer
    volume = np.where(occupancy, 0.05, 0.002)  # dielectric 0.002, metal 0.05 rad
    volume[2][occupancy[2]] = 0.002 + 0.6 * 0.048  # layer 2: the line's top, 60 % filled
    volume[3, 2:8, 3] = 0.002 + 0.7 * 0.048  # layer 3: one side column of 3 partly filled
    partial = partly_filled_metal(volume, occupancy)
    assert partial[2][occupancy[2]].all() and not partial[2][~occupancy[2]].any()
    assert partial[3].sum() == 6 and not partial[[0, 1, 4]].any()
    result = exclude_ambiguous_layers(occupancy, None, 0.01, 0.15, partial, 0.9)
    assert np.flatnonzero(result.excluded).tolist() == [2]
    assert "partly filled" in result.reasons[2]
    # max_partial_fraction 1 keeps every layer; 0.3 also drops layer 3 (6 of 18 partial)
    assert not exclude_ambiguous_layers(occupancy, None, 0.01, 0.15, partial, 1.0).excluded.any()
    loose = exclude_ambiguous_layers(occupancy, None, 0.01, 0.15, partial, 0.3)
    assert np.flatnonzero(loose.excluded).tolist() == [2, 3]


def test_layer_ranges_split_at_boundaries():
    voxel = 0.25e-6
    z = (np.arange(16) + 0.5) * voxel  # layer centres 0.125 ... 3.875 um
    ranges = layer_ranges(z, [2.75e-6])
    assert [r.name for r in ranges] == ["z < 2.75 um", "z >= 2.75 um"]
    assert ranges[0].layers.tolist() == list(range(11))
    assert ranges[1].layers.tolist() == list(range(11, 16))
    assert [r.name for r in layer_ranges(z, [])] == ["all z"]
    three = layer_ranges(z, [1e-6, 2e-6])
    assert three[1].name == "1 <= z < 2 um" and three[1].layers.tolist() == [4, 5, 6, 7]


def smooth_periodic(shape, seed=7, sigma=2.0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")


def fourier_shift(volume, shift):
    return np.fft.ifftn(ndimage.fourier_shift(np.fft.fftn(volume), shift)).real


@pytest.mark.parametrize("shift", [(2.0, -3.0, 1.0), (2.3, -1.55, 0.71), (-0.4, 0.0, 0.25)])
def test_estimate_shift_integer_and_subvoxel(shift):
    reference = smooth_periodic((24, 28, 32))
    moving = fourier_shift(reference, shift)  # moving[x] = reference[x - shift]
    found, correlation = estimate_shift(reference, moving, max_shift=5)
    np.testing.assert_allclose(found, shift, atol=0.011)
    assert correlation > 0.9


def test_estimate_shift_respects_max_shift():
    reference = smooth_periodic((16, 16, 16), seed=8)
    moving = np.roll(reference, 6, axis=2)
    assert estimate_shift(reference, moving, max_shift=8)[0][2] == pytest.approx(6.0)
    assert abs(estimate_shift(reference, moving, max_shift=3)[0][2]) <= 3.0


def test_center_crop_offsets():
    ref_sl, vol_sl, offset = center_crop_slices((10, 8, 9), (7, 8, 13))
    assert ref_sl == (slice(1, 8), slice(0, 8), slice(0, 9))
    assert vol_sl == (slice(0, 7), slice(0, 8), slice(2, 11))
    # Axis 0: crop centres 1 + 3 - 4.5 = -0.5 and 0 + 3 - 3 = 0 apart by -0.5 voxel.
    np.testing.assert_allclose(offset, [-0.5, 0.0, 0.0])


def test_register_different_shapes_and_a_shift():
    big = smooth_periodic((30, 30, 30), seed=9)
    reference = big[2:26, 3:27, 1:29]  # 24 x 24 x 28, centre at big index (13.5, 14.5, 14.5)
    true_shift = np.array([1.0, -0.5, 0.3])
    moved = fourier_shift(big, true_shift)
    # The reconstruction grid: 22 x 26 x 28 about the same centre (13.5, 14.5, 14.5).
    volume = moved[3:25, 2:28, 1:29]
    reg = register(reference, volume, enabled=True, max_shift=4)
    np.testing.assert_allclose(reg.shift_voxels, true_shift, atol=0.011)
    evaluated = reference[reg.reference_slices]
    assert evaluated.shape == reg.aligned.shape
    assert min(reg.aligned.shape) >= 20
    assert pcc(evaluated, reg.aligned) > 0.99
    # Registration off: only the centre alignment, and the correlation is clearly worse.
    plain = register(reference, volume, enabled=False)
    assert plain.shift_voxels.tolist() == [0.0, 0.0, 0.0]
    assert pcc(reference[plain.reference_slices], plain.aligned) < pcc(evaluated, reg.aligned)


@pytest.mark.parametrize("enabled", [True, False])
def test_register_odd_size_difference_keeps_the_common_centre(enabled):
    big = smooth_periodic((30, 30, 30), seed=9)
    reference = big[2:26, 3:27, 1:29]  # centre (13.5, 14.5, 14.5) of big
    # 23 x 23 x 27 voxels about the same centre: its voxels sit half-way between big's.
    half = fourier_shift(big, (0.5, 0.5, 0.5))  # half[x] = big[x - 0.5]
    volume = half[3:26, 4:27, 2:29]
    reg = register(reference, volume, enabled=enabled)
    assert reg.shift_voxels.tolist() == [0.0, 0.0, 0.0]
    assert reg.reference_slices == (slice(1, 23), slice(1, 23), slice(1, 27))
    assert pcc(reference[reg.reference_slices], reg.aligned) > 0.999


def test_register_integer_shift_is_exact():
    reference = smooth_periodic((12, 14, 16), seed=10)
    volume = np.roll(reference, (1, -2, 0), axis=(0, 1, 2))
    reg = register(reference, volume, max_shift=3)
    assert reg.shift_voxels.tolist() == [1.0, -2.0, 0.0]
    assert reg.reference_slices == (slice(0, 11), slice(2, 14), slice(0, 16))
    np.testing.assert_array_equal(reg.aligned, reference[reg.reference_slices])


def test_affine_fit_recovers_scale_and_offset():
    rng = np.random.default_rng(11)
    estimate = rng.standard_normal(1000)
    scale, offset, rel = affine_fit(2.5 * estimate - 0.3, estimate)
    assert (scale, offset) == (pytest.approx(2.5), pytest.approx(-0.3))
    assert rel == pytest.approx(0.0, abs=1e-12)
    assert affine_fit(rng.standard_normal(1000), estimate)[2] > 0.9


def test_psd_of_a_sinusoid_peaks_at_its_frequency():
    nz, ny, nx = 16, 20, 24
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    voxel = 27.2e-9
    in_plane = np.cos(2 * np.pi * (3 * y / ny + 5 * x / nx))  # kz = 0: in the kx-ky cut
    cuts = psd_cuts(in_plane, voxel, window=True)
    ky_i, kx_i = np.unravel_index(np.argmax(cuts.kx_ky), cuts.kx_ky.shape)
    assert abs(cuts.ky[ky_i]) == pytest.approx(3 / (ny * voxel))
    assert abs(cuts.kx[kx_i]) == pytest.approx(5 / (nx * voxel))
    assert np.sign(cuts.ky[ky_i]) == np.sign(cuts.kx[kx_i])  # the +(3, 5) / -(3, 5) pair
    vertical = np.sin(2 * np.pi * (4 * z / nz - 2 * y / ny))  # kx = 0: in the ky-kz cut
    cuts = psd_cuts(vertical, voxel, window=False)
    kz_i, ky_i = np.unravel_index(np.argmax(cuts.ky_kz), cuts.ky_kz.shape)
    assert abs(cuts.kz[kz_i]) == pytest.approx(4 / (nz * voxel))
    assert abs(cuts.ky[ky_i]) == pytest.approx(2 / (ny * voxel))
    # Unwindowed, a whole-period sinusoid puts all power (Parseval) in its two bins.
    spectrum = power_spectrum(vertical, window=False)
    assert spectrum.sum() == pytest.approx((vertical ** 2).sum(), rel=1e-10)
    assert np.sort(spectrum.ravel())[-2:].sum() == pytest.approx(spectrum.sum(), rel=1e-10)
    assert np.isfinite(cuts.kx_ky).all() and cuts.kx_ky.shape == (ny, nx)


def test_tied_mixture_threshold_ignores_a_narrow_background():
    """A near-noiseless background with a faint halo of dielectric voxels next to the metal
    (the blur of a clean reconstruction) and a broad metal class: the full mixture puts its
    threshold next to the narrow background and calls the halo metal; the tied one does
    not."""
    from hpc_adept.metrics.binarize import fit_gmm

    rng = np.random.default_rng(3)
    kind = rng.choice(3, size=60_000, p=[0.75, 0.10, 0.15])  # background, halo, metal
    values = np.select([kind == 0, kind == 1],
                       [np.abs(rng.normal(0.0, 0.0005, kind.size)),
                        rng.uniform(0.002, 0.005, kind.size)],
                       rng.normal(0.02, 0.006, kind.size))
    truth = kind == 2
    full = fit_gmm(values, seed=0, covariance="full")
    tied = fit_gmm(values, seed=0, covariance="tied")
    assert full.threshold < 0.004 < tied.threshold
    assert np.mean(tied.binarize(values) != truth) < 0.02
    assert np.mean(full.binarize(values) != truth) > 0.05


def test_common_region_cuts_every_registration_to_the_same_voxels():
    reference = smooth_periodic((12, 14, 16), seed=10)
    regs = [register(reference, np.roll(reference, shift, axis=(0, 1, 2)), max_shift=3)
            for shift in ((1, -2, 0), (0, 1, -1), (0, 0, 0))]
    common = common_region(regs)
    assert common == (slice(0, 11), slice(2, 13), slice(1, 16))
    for reg in regs:
        cut = restrict(reg, common)
        assert cut.reference_slices == common
        np.testing.assert_array_equal(cut.aligned, reference[common])
        np.testing.assert_array_equal(cut.shift_voxels, reg.shift_voxels)
    with pytest.raises(ValueError, match="not inside"):
        restrict(regs[2], (slice(0, 12), slice(0, 14), slice(0, 17)))
    with pytest.raises(ValueError, match="no registration"):
        common_region([])
