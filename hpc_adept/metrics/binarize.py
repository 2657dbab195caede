"""Binarisation of a volume into metal / dielectric with a two-component Gaussian mixture.

The paper (section 3.3) binarises the dense reconstruction and every reconstruction with a
Gaussian mixture fitted by expectation-maximisation. Here the mixture is fitted with
scikit-learn on a seeded random subsample of the voxel values (so the fit costs the same at
any volume size and is reproducible), and every voxel is then classified by one threshold:
the value between the two component means where their posteriors are equal. A single
threshold keeps the classification monotone in the value (a wide dielectric component
never claims the brightest metal voxels back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["GmmBinarizer", "fit_gmm", "metal_posterior"]

# Posteriors inside this band count as "uncertain" when judging a layer of the reference.
UNCERTAIN_BAND = (0.1, 0.9)


@dataclass(frozen=True)
class GmmBinarizer:
    """A fitted two-component 1-D Gaussian mixture and its decision threshold.

    Attributes
    ----------
    means : (float, float)
        Component means (dielectric first, metal second), in the volume's units.
    stds : (float, float)
        Component standard deviations, same units.
    weights : (float, float)
        Mixing weights, summing to 1.
    threshold : float
        Voxels with a value ``> threshold`` are metal.
    separation : float
        Ashman's D = sqrt(2) |mu_1 - mu_0| / sqrt(s_0^2 + s_1^2); D > 2 means two cleanly
        separated modes.
    separated : bool
        True when the posteriors cross between the means (a proper two-class split); False
        when one component dominates everywhere, and ``threshold`` is then the mid-point of
        the means (the binarisation is not trustworthy).
    n_samples : int
        Number of voxel values the mixture was fitted on.
    """

    means: tuple[float, float]
    stds: tuple[float, float]
    weights: tuple[float, float]
    threshold: float
    separation: float
    separated: bool
    n_samples: int

    def binarize(self, volume: np.ndarray) -> np.ndarray:
        """Occupancy of ``volume`` (any shape): bool array, True = metal."""
        return np.asarray(volume) > self.threshold

    def posterior(self, volume: np.ndarray) -> np.ndarray:
        """Posterior probability of the metal component per voxel (float64, same shape)."""
        return metal_posterior(np.asarray(volume, dtype=np.float64), self)

    def as_dict(self) -> dict:
        """Plain values for ``metrics.json``."""
        return {
            "threshold": self.threshold,
            "means": list(self.means),
            "stds": list(self.stds),
            "weights": list(self.weights),
            "separation_ashman_d": self.separation,
            "separated": self.separated,
            "n_samples": self.n_samples,
        }


def _log_weighted_pdf(x: np.ndarray | float, mean: float, std: float, weight: float):
    """log(weight * N(x; mean, std^2)), float64."""
    z = (np.asarray(x, dtype=np.float64) - mean) / std
    return math.log(weight) - math.log(std) - 0.5 * math.log(2.0 * math.pi) - 0.5 * z * z


def metal_posterior(values: np.ndarray, model: GmmBinarizer) -> np.ndarray:
    """Posterior of the metal (higher-mean) component for ``values`` (float64 array)."""
    log0 = _log_weighted_pdf(values, model.means[0], model.stds[0], model.weights[0])
    log1 = _log_weighted_pdf(values, model.means[1], model.stds[1], model.weights[1])
    # Why the logistic form: exp of large log-ratios overflows otherwise.
    return 1.0 / (1.0 + np.exp(np.clip(log0 - log1, -700.0, 700.0)))


def _crossing(means, stds, weights) -> tuple[float, bool]:
    """Value between the means where both weighted densities are equal."""
    def log_ratio(x: float) -> float:
        return float(_log_weighted_pdf(x, means[1], stds[1], weights[1])
                     - _log_weighted_pdf(x, means[0], stds[0], weights[0]))

    lo, hi = means
    f_lo, f_hi = log_ratio(lo), log_ratio(hi)
    if not (f_lo < 0.0 < f_hi):
        return 0.5 * (lo + hi), False
    for _ in range(200):  # bisection: the log-ratio is quadratic, one root in [lo, hi]
        mid = 0.5 * (lo + hi)
        if log_ratio(mid) < 0.0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            break
    return 0.5 * (lo + hi), True


def fit_gmm(volume: np.ndarray, n_samples: int = 200_000, seed: int = 0,
            mask: np.ndarray | None = None, covariance: str = "full") -> GmmBinarizer:
    """Fit a two-component Gaussian mixture to the voxel values of ``volume``.

    Parameters
    ----------
    volume : ndarray, any shape, real
        Voxel values (e.g. phase per voxel, radians).
    n_samples : int
        Size of the random subsample (drawn without replacement) the mixture is fitted on;
        all voxels when the volume is smaller.
    seed : int
        Seed of the subsample and of the EM initialisation.
    mask : ndarray of bool, same shape, optional
        Only these voxels are sampled.
    covariance : {'full', 'tied'}
        ``full``: each component its own variance (the textbook mixture); ``tied``: one
        variance for both, so the threshold sits between the means (shifted by the weights)
        instead of hugging a very narrow component, e.g. the near-noiseless background of
        a DIP volume, whose slightly positive voxels a ``full`` fit calls metal.

    Returns
    -------
    GmmBinarizer
        Components ordered dielectric (lower mean), metal (higher mean).

    Raises
    ------
    ValueError
        When fewer than two distinct values are given (no two classes to find).
    """
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    values = np.asarray(volume, dtype=np.float64)
    values = values[mask] if mask is not None else values.ravel()
    rng = np.random.default_rng(seed)
    if values.size > n_samples:
        values = values[rng.choice(values.size, size=n_samples, replace=False)]
    if values.size < 2 or np.ptp(values) == 0.0:
        raise ValueError("cannot fit a two-class mixture: the volume is constant")
    # Why standardise: sklearn's reg_covar (1e-6) is absolute; phase values are ~1e-2.
    centre, scale = float(np.median(values)), float(values.std())
    standard = ((values - centre) / scale)[:, None]
    low, high = np.percentile(standard, [25.0, 99.5])
    gmm = GaussianMixture(
        n_components=2, covariance_type=covariance, random_state=seed, max_iter=300, tol=1e-5,
        means_init=[[low], [high]],  # why: start from "bulk" and "bright tail" (metal is rare)
    )
    # Why one BLAS thread: the products are tiny ([n, 1]); threaded OpenBLAS was 10x slower
    # on a busy node.
    with threadpool_limits(limits=1):
        gmm.fit(standard)
    order = np.argsort(gmm.means_[:, 0])
    means = tuple(float(centre + scale * gmm.means_[i, 0]) for i in order)
    variances = gmm.covariances_ if covariance == "full" else \
        np.broadcast_to(gmm.covariances_, (2, 1, 1))
    stds = tuple(float(scale * math.sqrt(variances[i, 0, 0])) for i in order)
    weights = tuple(float(gmm.weights_[i]) for i in order)
    threshold, separated = _crossing(means, stds, weights)
    separation = math.sqrt(2.0) * abs(means[1] - means[0]) / math.hypot(*stds)
    return GmmBinarizer(means, stds, weights, float(threshold), float(separation),
                        bool(separated), int(values.size))
