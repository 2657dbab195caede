"""Per-projection phase offset and linear ramp (a plane) fitted against a reprojection.

Ptychography of a sample without vacuum in its field leaves each phase projection with an
unknown constant and linear ramp. Projection matching fits them against the reprojection
of its current volume and removes them from the data, so that neither the reconstruction
nor the shift estimate has to explain them.

Planes are ``c0 + c1 r + c2 c`` with ``(r, c)`` measured in full-resolution pixels from the
image centre: binning by block means (:func:`hpc_adept.align.imaging.bin_images`) maps a
plane onto the same coefficients at every level.
"""

from __future__ import annotations

import torch


def plane_basis(shape: tuple[int, int], factor: int, like: torch.Tensor) -> torch.Tensor:
    """The three plane images ``[3, h, w]`` (1, r, c) of a level binned by ``factor``.

    Parameters
    ----------
    shape : (h, w)
        Image shape of the level, pixels.
    factor : int
        Binning of the level; ``r`` and ``c`` are in full-resolution pixels.
    like : torch.Tensor
        Supplies dtype and device.
    """
    h, w = shape
    r = (torch.arange(h, dtype=like.dtype, device=like.device) - (h - 1) / 2.0) * factor
    c = (torch.arange(w, dtype=like.dtype, device=like.device) - (w - 1) / 2.0) * factor
    return torch.stack([torch.ones(h, w, dtype=like.dtype, device=like.device),
                        r[:, None].expand(h, w), c[None, :].expand(h, w)])


def plane_images(coefficients: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``[n, h, w]`` planes of ``coefficients`` ``[n, 3]`` (rad, rad per full-resolution
    pixel) on ``basis`` ``[3, h, w]`` from :func:`plane_basis`."""
    return torch.einsum("nk,khw->nhw", coefficients.to(basis.dtype), basis)


def fit_planes(residual: torch.Tensor, weights: torch.Tensor, basis: torch.Tensor
               ) -> torch.Tensor:
    """Weighted least-squares plane of every image of ``residual``.

    Parameters
    ----------
    residual : torch.Tensor, float, [n, h, w]
        Data minus reprojection (rad).
    weights : torch.Tensor, float, [h, w] or [n, h, w]
        Non-negative pixel weights (zero where the reprojection cannot be trusted).
    basis : torch.Tensor, [3, h, w]
        From :func:`plane_basis`.

    Returns
    -------
    torch.Tensor, float64, [n, 3]
        Offset (rad) and row / column slopes (rad per full-resolution pixel) minimising
        ``sum w (residual - plane)**2`` per image; zero for an image without weight.
    """
    w = weights.double().expand_as(residual)
    b = basis.double()
    normal = torch.einsum("nhw,khw,lhw->nkl", w, b, b)
    rhs = torch.einsum("nhw,khw,nhw->nk", w, b, residual.double())
    # a tiny ridge keeps an image without weight (or a degenerate basis) at zero
    scale = normal.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-300)
    ridge = 1e-12 * scale[:, None, None] * torch.eye(3, dtype=torch.float64,
                                                     device=residual.device)
    return torch.linalg.solve(normal + ridge, rhs[..., None])[..., 0]


def orthonormal_planes(basis: torch.Tensor) -> torch.Tensor:
    """Orthonormal images ``[3, h, w]`` spanning ``basis`` (QR of the flattened basis)."""
    k, h, w = basis.shape
    q, _ = torch.linalg.qr(basis.double().reshape(k, h * w).T)
    return q.T.reshape(k, h, w).to(basis.dtype).contiguous()


def remove_planes(images: torch.Tensor, orthonormal: torch.Tensor) -> torch.Tensor:
    """``images`` ``[n, h, w]`` less their least-squares planes: the orthogonal projector
    onto the complement of the planes (self-adjoint, idempotent).

    Parameters
    ----------
    images : torch.Tensor, float, [n, h, w]
    orthonormal : torch.Tensor, [3, h, w]
        From :func:`orthonormal_planes`.
    """
    q = orthonormal.to(images.dtype)
    coefficients = torch.einsum("nhw,khw->nk", images, q)
    return images - torch.einsum("nk,khw->nhw", coefficients, q)
