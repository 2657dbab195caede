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


# A slice is "two classes" when Otsu's split explains this share of its variance: a
# split of one Gaussian explains 2/pi = 0.64, a slice with a quarter of clean metal ~1.
TWO_CLASS_SHARE = 0.8


def dielectric_level(values: np.ndarray) -> float:
    """The dielectric's level among one slice's ``values`` (any shape, float).

    The slice's median, unless the values fall into two clear classes (Otsu's split
    explains at least ``TWO_CLASS_SHARE`` of their variance): then the median of the lower
    class (dielectric's phase is below copper's), which stays the dielectric where metal
    fills more than half of the slice (a power stripe), where the plain median would be
    the metal.
    """
    v = np.sort(np.asarray(values, np.float64).ravel())
    n = v.size
    if n < 2 or v[0] == v[-1]:
        return float(np.median(v))
    k = np.arange(1, n)  # the lower class is v[:k]
    low_sum = np.cumsum(v)[:-1]
    between = (low_sum / k - (v.sum() - low_sum) / (n - k)) ** 2 * k * (n - k) / n**2
    best = int(np.argmax(between))
    if between[best] < TWO_CLASS_SHARE * v.var():
        return float(np.median(v))
    return float(np.median(v[: best + 1]))


def level_slices(volume: np.ndarray) -> np.ndarray:
    """``volume`` with every z slice shifted so that its dielectric is at 0.

    For a region of a wide slab reconstructed from projections whose offsets are unknown,
    each slice's level is in the null space of the data term (a uniform layer projects to a
    constant); the dielectric's level (:func:`dielectric_level`: the median, or the lower
    class's median in a slice of two clear classes) is the level fixed here.

    Parameters
    ----------
    volume : ndarray, float, [nz, ny, nx]

    Returns
    -------
    ndarray, float32, [nz, ny, nx]
    """
    volume = np.asarray(volume, dtype=np.float32)
    levels = np.array([dielectric_level(layer) for layer in volume], np.float32)
    return volume - levels[:, None, None]
