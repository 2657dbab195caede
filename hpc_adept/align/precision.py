"""How precisely the data can fix each projection's shift: a Cramer-Rao bound.

With white Gaussian noise of standard deviation ``sigma`` on a projection ``p`` and the
projection of the volume known exactly, the Fisher information of its shift ``s`` is
``F = sum_pixels w g g^T / sigma^2`` (``g`` the gradient of ``p``); unknown nuisance
parameters (the per-projection phase offset and ramp) enter as further columns of the
Jacobian and are profiled out. ``inv(F)`` bounds the covariance of any unbiased estimate;
with a Gaussian prior of ``prior_px`` per component added (the Bayesian, Van Trees form)
it bounds every estimate's mean squared error. A method that must also estimate the
volume does worse; a projection whose structure runs one way (wires that cross its whole
window) has no information along the wires: its bound there is the prior, or infinite.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from hpc_adept.linop import LinearOperator


def stencil_gradient(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) derivative by the five-point stencil.

    ``(-f[i+2] + 8 f[i+1] - 8 f[i-1] + f[i-2]) / 12`` (exact for cubics), the images
    continued past each edge by their point reflection about the edge value
    (``f[-k] = 2 f[0] - f[k]``: a ramp stays a ramp, so no edge effect fakes information
    that a phase ramp or the window's edge does not hold).

    Parameters
    ----------
    images : torch.Tensor, float, [..., h, w], h and w at least 3

    Returns
    -------
    (d_row, d_col) : torch.Tensor, [..., h, w]
        Per pixel.
    """
    if min(images.shape[-2:]) < 3:
        raise ValueError(f"stencil_gradient: images of at least 3 x 3 pixels, got "
                         f"{list(images.shape[-2:])}")

    def along_last(x: torch.Tensor) -> torch.Tensor:
        first, last = x[..., :1], x[..., -1:]
        head = 2 * first - x[..., 1:3].flip(-1)
        tail = 2 * last - x[..., -3:-1].flip(-1)
        wide = torch.cat([head, x, tail], dim=-1)
        return (-wide[..., 4:] + 8 * wide[..., 3:-1] - 8 * wide[..., 1:-3]
                + wide[..., :-4]) / 12.0

    return along_last(images.transpose(-1, -2)).transpose(-1, -2), along_last(images)


def shift_information(projections: torch.Tensor, noise_sd: torch.Tensor | float,
                      weights: torch.Tensor | None = None, planes: bool = False,
                      prior_px: float | None = None, chunk: int = 16) -> torch.Tensor:
    """Fisher information of each projection's (row, col) shift, nuisance profiled out:
    its inverse is the Cramer-Rao bound on the shift's covariance.

    Parameters
    ----------
    projections : torch.Tensor, float, [n, h, w]
        The noise-free projections (or the best stand-in: the reprojection of a fitted
        volume), aligned.
    noise_sd : float or torch.Tensor [n]
        Standard deviation of the white noise on each pixel (units of ``projections``).
    weights : torch.Tensor, float in [0, 1], [h, w] or [n, h, w], optional
        Which pixels are measured (0: none; default all).
    planes : bool
        Each projection's offset and row / column ramp are unknown too (profiled out).
    prior_px : float, optional
        Standard deviation of the shifts a priori, pixels (the Bayesian bound; default
        none: a direction without information keeps information 0).
    chunk : int
        Projections differentiated at a time (memory).

    Returns
    -------
    torch.Tensor, float64, [n, 2, 2]
        Information, 1 / px^2; a direction whose information is below 1e-10 of the
        trace before the nuisance was profiled out (rounding) holds exactly 0 before the
        prior is added.
    """
    n, h, w = projections.shape
    device = projections.device
    sd = torch.as_tensor(noise_sd, dtype=torch.float64, device=device).expand(n)
    rows = torch.arange(h, dtype=torch.float64, device=device)[:, None] - (h - 1) / 2
    cols = torch.arange(w, dtype=torch.float64, device=device)[None, :] - (w - 1) / 2
    plane_columns = [torch.ones(h, w, dtype=torch.float64, device=device),
                     rows.expand(h, w), cols.expand(h, w)] if planes else []
    size = 2 + len(plane_columns)
    fisher = torch.empty(n, size, size, dtype=torch.float64, device=device)
    for first in range(0, n, chunk):  # chunks: the float64 gradients of a whole stack
        part = slice(first, min(first + chunk, n))
        d_row, d_col = stencil_gradient(projections[part].double())
        weight = torch.ones_like(d_row) if weights is None else \
            weights.to(device=device, dtype=torch.float64).expand(n, h, w)[part]
        columns = [d_row, d_col] + plane_columns
        for i in range(size):
            for j in range(i, size):
                value = (weight * columns[i] * columns[j]).sum(dim=(-2, -1))
                fisher[part, i, j] = fisher[part, j, i] = value / sd[part] ** 2
    shift_block = fisher[:, :2, :2]
    profiled = shift_block
    if planes:  # the Schur complement: the information left once offset and ramps are fitted
        cross = fisher[:, :2, 2:]
        profiled = shift_block - cross @ torch.linalg.pinv(
            fisher[:, 2:, 2:], hermitian=True) @ cross.transpose(1, 2)
    # what is left of a direction without information (or one the nuisance explains) is
    # rounding: exactly 0, so that only the prior can make it finite
    values, vectors = torch.linalg.eigh(0.5 * (profiled + profiled.transpose(1, 2)))
    floor = 1e-10 * shift_block.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)
    values = torch.where(values > floor, values, torch.zeros_like(values))
    shift_block = vectors @ torch.diag_embed(values) @ vectors.transpose(1, 2)
    if prior_px is not None:
        shift_block = shift_block + torch.eye(2, dtype=torch.float64,
                                              device=device) / prior_px ** 2
    return 0.5 * (shift_block + shift_block.transpose(1, 2))


def direction_bounds_px(information: torch.Tensor) -> torch.Tensor:
    """Bounds on the standard deviation of each shift along its best- and worst-determined
    direction.

    Parameters
    ----------
    information : torch.Tensor, float64, [n, 2, 2], 1 / px^2
        From :func:`shift_information`.

    Returns
    -------
    torch.Tensor, float64, [n, 2], px
        ``[:, 0]`` the best-determined direction, ``[:, 1]`` the worst: one over the
        square root of the larger and the smaller eigenvalue; ``inf`` where a direction
        holds no information (never with a prior).
    """
    values = torch.linalg.eigvalsh(information)  # ascending: worst direction first
    sd = torch.where(values > 0, values.clamp_min(1e-300).rsqrt(),
                     torch.full_like(values, math.inf))
    return sd.flip(-1)


def pattern_information(op: LinearOperator, d_row: torch.Tensor, d_col: torch.Tensor,
                        patterns: torch.Tensor, noise_sd: float, iterations: int,
                        blind: Callable[[torch.Tensor], torch.Tensor] | None = None
                        ) -> torch.Tensor:
    """Fisher information of the amplitudes of shift ``patterns`` when the volume is
    unknown too (profiled out), with the other shifts known.

    A pattern moves every projection at once (e.g. a smooth function of the angle); its
    data-space derivative ``g`` is each projection's gradient along its part of the
    pattern. A volume that reproduces ``g`` hides the pattern, so only the part of ``g``
    outside the range of ``op`` (and of ``blind``'s complement) informs:
    ``F_ij = <e_i, e_j> / sigma^2`` with ``e = P (g - A x)`` and ``x`` the least-squares
    (CGLS) fit of ``P A x`` to ``P g``. A wide volume seen by few angles reproduces
    nearly any smooth pattern: its information can be orders of magnitude below that of
    the same pattern with the volume known (:func:`shift_information`). With the other
    shifts known the bound is optimistic; with the CGLS stopped early ``x`` explains less
    than it could, so ``F`` is too large and the bound too low (it rises to the true one
    with ``iterations``): either way a lower bound on any method's error.

    Parameters
    ----------
    op : LinearOperator
        The projector of the nuisance volume: ``forward`` [nz, ny, nx] -> [n, h, w].
    d_row, d_col : torch.Tensor, float, [n, h, w]
        Gradients of the noise-free projections (e.g. :func:`stencil_gradient`), per pixel.
    patterns : torch.Tensor, float64, [m, n, 2]
        Shift patterns, pixels (row, col) per projection.
    noise_sd : float
        Standard deviation of the white noise per pixel (units of the projections).
    iterations : int
        CGLS iterations of each volume fit.
    blind : callable, optional
        An orthogonal projector on projection stacks (e.g. the removal of each
        projection's offset and ramp: those are unknown too).

    Returns
    -------
    torch.Tensor, float64, [m, m], 1 / px^2
    """
    from hpc_adept.align.matching import least_squares  # a CGLS: no import cycle here

    project = (lambda images: images) if blind is None else blind
    volume = torch.zeros(op.domain_shape, dtype=d_row.dtype, device=d_row.device)
    support = torch.ones(op.domain_shape, dtype=torch.bool, device=d_row.device)
    unexplained = []
    for pattern in patterns.to(device=d_row.device, dtype=d_row.dtype):
        g = pattern[:, 0, None, None] * d_row + pattern[:, 1, None, None] * d_col
        target = project(g)
        _, fitted = least_squares(op, target, volume, support, iterations, blind=blind)
        unexplained.append(project(target - fitted).double().reshape(-1))
    stack = torch.stack(unexplained)
    information = stack @ stack.T / noise_sd ** 2
    return 0.5 * (information + information.T)
