"""Bit-error rate (BER) and Pearson correlation (PCC): overall, per z layer, per z range.

All arrays are ``[nz, ny, nx]`` on one common grid (after registration); a "layer" is one
z index. Sums are accumulated in float64 / int64, so the results do not depend on the
volume's dtype or size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hpc_adept.metrics.binarize import UNCERTAIN_BAND

__all__ = [
    "LayerExclusion",
    "ZRange",
    "ber",
    "ber_per_layer",
    "exclude_ambiguous_layers",
    "layer_ranges",
    "pcc",
    "pcc_per_layer",
]


def ber(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Bit-error rate: the fraction of voxels whose occupancy differs.

    Parameters
    ----------
    reference, estimate : ndarray of bool (or 0/1), same shape
        Occupancies (True = metal).

    Returns
    -------
    float
        In [0, 1]; NaN for empty input.
    """
    reference, estimate = np.asarray(reference, bool), np.asarray(estimate, bool)
    if reference.shape != estimate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {estimate.shape}")
    if reference.size == 0:
        return math.nan
    return int(np.count_nonzero(reference != estimate)) / reference.size


def pcc(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Pearson correlation coefficient of two arrays over all their elements (float64).

    Returns NaN when either array is constant (the correlation is undefined).
    """
    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(estimate, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {estimate.shape}")
    a = a - a.mean()
    b = b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    if denominator == 0.0:
        return math.nan
    return float(a @ b) / denominator


def ber_per_layer(reference: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """BER of every z layer: ``[nz]`` float64."""
    reference, estimate = np.asarray(reference, bool), np.asarray(estimate, bool)
    if reference.shape != estimate.shape or reference.ndim != 3:
        raise ValueError(f"need two 3-D arrays of one shape, got {reference.shape}, "
                         f"{estimate.shape}")
    errors = np.count_nonzero(reference != estimate, axis=(1, 2))
    return errors / float(reference.shape[1] * reference.shape[2])


def pcc_per_layer(reference: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """PCC of every z layer: ``[nz]`` float64, NaN where a layer of either is constant."""
    if reference.shape != estimate.shape or reference.ndim != 3:
        raise ValueError(f"need two 3-D arrays of one shape, got {reference.shape}, "
                         f"{estimate.shape}")
    return np.array([pcc(reference[k], estimate[k]) for k in range(reference.shape[0])])


@dataclass(frozen=True)
class LayerExclusion:
    """Layers of the reference whose binarisation is ambiguous.

    Attributes
    ----------
    excluded : ndarray of bool, [nz]
        True for an excluded layer.
    reasons : dict of int to str
        Why each excluded layer (index) was excluded.
    metal_fraction : ndarray of float64, [nz]
        Metal fraction of each reference layer.
    uncertain_fraction : ndarray of float64, [nz] or None
        Fraction of each layer's voxels whose metal posterior lies inside
        :data:`~hpc_adept.metrics.binarize.UNCERTAIN_BAND` (None for a binary reference).
    """

    excluded: np.ndarray
    reasons: dict[int, str]
    metal_fraction: np.ndarray
    uncertain_fraction: np.ndarray | None


def exclude_ambiguous_layers(occupancy: np.ndarray, posterior: np.ndarray | None = None,
                             min_class_fraction: float = 1e-3,
                             max_uncertain_fraction: float = 0.15,
                             partial_metal: np.ndarray | None = None,
                             max_partial_fraction: float = 0.9) -> LayerExclusion:
    """Find the z layers of the reference whose binarisation cannot be trusted.

    A layer is excluded when

    * one class is (nearly) absent: metal or dielectric below ``min_class_fraction`` of
      the layer's voxels (an all-dielectric layer has no features to get right, and its
      BER says only how much noise the estimate has), or
    * (GMM reference only) more than ``max_uncertain_fraction`` of the layer's voxels have
      a metal posterior in the uncertain band 0.1..0.9: values between the two modes, as
      in a layer cut through the blurred top or bottom of a metal line.
    * (binary reference with its phase) more than ``max_partial_fraction`` of the layer's
      metal voxels are only partly filled (``partial_metal``): a layer cut through the top
      or bottom of the lines, where "metal" is the convention fill >= 0.5.

    Parameters
    ----------
    occupancy : ndarray of bool, [nz, ny, nx]
        Reference occupancy.
    posterior : ndarray of float, [nz, ny, nx], optional
        Metal posterior of the reference voxels (when binarised by a GMM).
    min_class_fraction, max_uncertain_fraction : float
        Thresholds above, fractions of a layer's voxels.
    partial_metal : ndarray of bool, [nz, ny, nx], optional
        Metal voxels of the reference that are only partly filled (see
        :func:`partly_filled_metal`).
    max_partial_fraction : float
        Threshold above, a fraction of the layer's metal voxels.
    """
    occupancy = np.asarray(occupancy, bool)
    per_layer = float(occupancy.shape[1] * occupancy.shape[2])
    metal = np.count_nonzero(occupancy, axis=(1, 2)) / per_layer
    excluded = np.zeros(occupancy.shape[0], bool)
    reasons: dict[int, str] = {}
    for k, fraction in enumerate(metal):
        if min(fraction, 1.0 - fraction) < min_class_fraction:
            excluded[k] = True
            which = "metal" if fraction < 0.5 else "dielectric"
            reasons[k] = (f"{which} fraction {min(fraction, 1.0 - fraction):.2e} < "
                          f"{min_class_fraction:g}")
    uncertain = None
    if posterior is not None:
        lo, hi = UNCERTAIN_BAND
        uncertain = np.count_nonzero((posterior > lo) & (posterior < hi), axis=(1, 2)) / per_layer
        for k, fraction in enumerate(uncertain):
            if fraction > max_uncertain_fraction and not excluded[k]:
                excluded[k] = True
                reasons[k] = (f"{fraction:.3f} of voxels have an uncertain GMM posterior "
                              f"(> {max_uncertain_fraction:g})")
    if partial_metal is not None:
        n_metal = np.count_nonzero(occupancy, axis=(1, 2))
        n_partial = np.count_nonzero(np.asarray(partial_metal, bool) & occupancy, axis=(1, 2))
        for k in np.flatnonzero(n_metal):
            share = n_partial[k] / n_metal[k]
            if share > max_partial_fraction and not excluded[k]:
                excluded[k] = True
                reasons[k] = (f"{share:.2f} of its metal voxels are only partly filled "
                              f"(> {max_partial_fraction:g})")
    return LayerExclusion(excluded, reasons, metal, uncertain)


def partly_filled_metal(volume: np.ndarray, occupancy: np.ndarray,
                        full_level: float = 0.9) -> np.ndarray:
    """Metal voxels of a binary reference whose value says they are only partly metal.

    Parameters
    ----------
    volume : ndarray, [nz, ny, nx]
        Reference phase (or any quantity linear in the metal fill).
    occupancy : ndarray of bool, [nz, ny, nx]
        Reference binarisation (metal fill >= 0.5).
    full_level : float
        A metal voxel is partly filled below this fraction of the way from the dielectric's
        median value to the metal's.

    Returns
    -------
    ndarray of bool, [nz, ny, nx]
    """
    occupancy = np.asarray(occupancy, bool)
    if occupancy.all() or not occupancy.any():
        return np.zeros(occupancy.shape, bool)
    dielectric = float(np.median(volume[~occupancy]))
    metal = float(np.median(volume[occupancy]))
    return occupancy & (volume < dielectric + full_level * (metal - dielectric))


@dataclass(frozen=True)
class ZRange:
    """A range of heights ``[z_min_m, z_max_m)`` and the layers whose centres lie in it."""

    name: str
    z_min_m: float
    z_max_m: float
    layers: np.ndarray  # int indices into the evaluated stack


def layer_ranges(layer_z_m: np.ndarray, boundaries_m: list[float]) -> list[ZRange]:
    """Split layers into height ranges at ``boundaries_m``.

    Parameters
    ----------
    layer_z_m : ndarray, [nz]
        Height of each layer's centre, metres (z = 0 at the bottom face of the reference
        volume: reference layer k covers [k d, (k+1) d)).
    boundaries_m : list of float
        Increasing heights, metres; ``n`` boundaries give ``n + 1`` ranges, the first from
        0 and the last open-ended.

    Returns
    -------
    list of ZRange
        Ranges named like ``"z < 2.75 um"``, ``"2.75 <= z < 3.5 um"``, ``"z >= 3.5 um"``.
    """
    edges = [0.0, *boundaries_m, math.inf]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if lo == 0.0 and math.isfinite(hi):
            name = f"z < {hi * 1e6:g} um"
        elif not math.isfinite(hi):
            name = f"z >= {lo * 1e6:g} um" if lo > 0 else "all z"
        else:
            name = f"{lo * 1e6:g} <= z < {hi * 1e6:g} um"
        inside = np.flatnonzero((layer_z_m >= lo) & (layer_z_m < hi))
        out.append(ZRange(name, lo, hi, inside))
    return out
