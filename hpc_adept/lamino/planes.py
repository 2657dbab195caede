"""Per-projection constant and linear ramp: the part of a phase projection that
ptychography without a vacuum reference leaves undetermined.

:func:`remove_planes` projects every image onto the orthogonal complement of
``span{1, v, u}`` (weighted least squares per image). It is linear, idempotent and
differentiable, so a data term ``||remove_planes(H x - y)||^2`` is exactly blind to any
offset and ramp of the data: the same as fitting three free parameters per projection and
minimising over them in closed form. MPI-free.
"""

from __future__ import annotations

import torch

__all__ = ["plane_basis", "remove_planes"]


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
