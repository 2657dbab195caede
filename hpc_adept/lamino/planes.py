"""Per-projection constant and linear ramp: the part of a phase projection that
ptychography without a vacuum reference leaves undetermined.

:func:`remove_planes` projects every image onto the orthogonal complement of
``span{1, v, u}`` (weighted least squares per image). It is linear, idempotent and
differentiable, so a data term ``||remove_planes(H x - y)||^2`` is exactly blind to any
offset and ramp of the data: the same as fitting three free parameters per projection and
minimising over them in closed form. MPI-free.

The price: a uniform z layer of a wide slab projects to a constant in every projection, so
such a data term cannot see each slice's level either. :func:`level_slices` fixes that
level after the reconstruction (the dielectric at 0).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["dielectric_level", "level_slices", "plane_basis", "remove_planes"]


def plane_basis(shape: tuple[int, int], dtype: torch.dtype = torch.float64,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The images ``1``, ``v`` and ``u`` (centred, scaled to [-0.5, 0.5]) as ``[3, nv, nu]``."""
    nv, nu = shape
    v = (torch.arange(nv, dtype=dtype, device=device) - (nv - 1) / 2.0) / max(nv, 1)
    u = (torch.arange(nu, dtype=dtype, device=device) - (nu - 1) / 2.0) / max(nu, 1)
    return torch.stack([torch.ones(nv, nu, dtype=dtype, device=device),
                        v[:, None].expand(nv, nu), u[None, :].expand(nv, nu)])


def remove_planes(images: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``images`` minus their weighted least-squares plane, image by image.

    Parameters
    ----------
    images : torch.Tensor, float, [n, nv, nu]
    weights : torch.Tensor, float, [n, nv, nu] or [nv, nu], optional
        Non-negative pixel weights of the fit (default 1); where they leave part of the
        plane undetermined (all zero, one lit column), only the determined part is fitted.

    Returns
    -------
    torch.Tensor, same shape, dtype and device
        The residual of the fit (differentiable in ``images``).
    """
    basis = plane_basis(tuple(images.shape[-2:]), images.dtype, images.device)
    w = torch.ones_like(images) if weights is None else weights.to(images.dtype).expand_as(
        images)
    weighted = basis[None] * w[:, None]                       # [n, 3, nv, nu]
    gram = torch.einsum("nkij,lij->nkl", weighted, basis)     # [n, 3, 3]
    rhs = torch.einsum("nkij,nij->nk", weighted, images)      # [n, 3]
    # the pseudo-inverse: exact for a full image, finite for an image whose weights leave
    # the plane undetermined (e.g. one lit column: only what is determined is removed)
    coef = (torch.linalg.pinv(gram, hermitian=True) @ rhs.unsqueeze(-1)).squeeze(-1)
    return images - torch.einsum("nk,kij->nij", coef, basis)


# The lower of two classes is the dielectric when their means lie this many pooled
# within-class standard deviations apart: Otsu's split of one Gaussian gives 2.7.
MIN_SEPARATION = 3.0
# ... and at least this share of the widest slice's range apart (see level_slices).
MIN_STEP_SHARE = 0.3


def dielectric_level(values: np.ndarray, min_step: float = 0.0) -> float:
    """The dielectric's level among one slice's ``values``.

    The slice's median, which is the dielectric wherever metal fills less than half of
    the slice; where Otsu's split of the values leaves more than half of them in the upper
    class and the two classes are separated (means ``MIN_SEPARATION`` pooled standard
    deviations and at least ``min_step`` apart), the median of the lower class:
    dielectric's phase is below copper's, and there the plain median would be the metal
    (a power stripe).

    Parameters
    ----------
    values : ndarray, float, any shape
        One z slice of a reconstruction.
    min_step : float
        Smallest difference of the two classes' means that counts as metal against
        dielectric, in the values' units (a DIP slice of dielectric alone can hold two
        populations a few per cent of the copper contrast apart).

    Returns
    -------
    float
        The level, in the values' units; NaN when a value is not finite or there is none.
    """
    v = np.sort(np.asarray(values, np.float64).ravel())
    n = v.size
    if n == 0 or not np.isfinite(v).all():
        return float("nan")
    median = float(np.median(v))
    if n < 4 or v[0] == v[-1]:
        return median
    centred = v - median  # sums of centred values: no cancellation for a large offset
    k = np.arange(1, n)  # the lower class is v[:k]
    low_sum = np.cumsum(centred)[:-1]
    high_sum = centred.sum() - low_sum
    between = (low_sum / k - high_sum / (n - k)) ** 2 * k * (n - k)
    low = int(np.argmax(between)) + 1
    if low >= n / 2:
        return median
    lower, upper = v[:low], v[low:]
    pooled = np.sqrt((lower.var() * low + upper.var() * (n - low)) / n)
    if upper.mean() - lower.mean() < max(MIN_SEPARATION * pooled, min_step):
        return median
    return float(np.median(lower))


def level_slices(volume: np.ndarray) -> np.ndarray:
    """``volume`` with every z slice shifted so that its dielectric is at 0.

    For a region of a wide slab reconstructed from projections whose offsets are unknown,
    each slice's level is in the null space of the data term (a uniform layer projects to a
    constant); the dielectric's level (:func:`dielectric_level`: the median, or the lower
    class's median where metal fills most of the slice) is the level fixed here.

    Parameters
    ----------
    volume : ndarray, float, [nz, ny, nx]

    Returns
    -------
    ndarray, float32, [nz, ny, nx]
    """
    volume = np.asarray(volume, dtype=np.float32)
    # Metal against dielectric: at least 0.3 of the widest slice's 1-99 % range (noise
    # widens a range by a few sigma); per slice, as the slices' offsets are unknown.
    ranges = [np.subtract(*np.percentile(layer, [99.0, 1.0])) for layer in volume
              if layer.size]
    min_step = MIN_STEP_SHARE * float(max(ranges, default=0.0))
    levels = np.array([dielectric_level(layer, min_step) for layer in volume], np.float32)
    return volume - levels[:, None, None]
