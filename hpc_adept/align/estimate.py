"""Per-projection shift estimates: linearised optical flow and a bounded cross-correlation.

Both compare aligned projections ``data`` with reprojections ``model`` of the current
reconstruction and return the remaining displacement ``e`` (pixels, (row, col)) with
``data[r] ~ model[r - e]``: adding ``e`` to the shift estimate of a projection aligns it.
"""

from __future__ import annotations

import math

import torch

from hpc_adept.align.imaging import (
    highpass_with_gradient,
    lowpass,
    masked_highpass,
    reflected_highpass_with_gradient,
)


def optical_flow_update(data: torch.Tensor, model: torch.Tensor, weights: torch.Tensor,
                        highpass_sigma_px: float, max_update_px: float,
                        eigen_floor: float = 0.0, fitted: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift update by linearised optical flow on high-pass filtered images.

    With ``r = HP(data) - HP(model)`` and ``g = grad HP(model)``, ``data = model(x - e)``
    linearises to ``r = -e.g``; the weighted least-squares solution is
    ``e = -(sum w g g^T)^-1 sum w g r`` per projection (a 2 x 2 solve, so correlated row and
    column gradients are handled). Each component is clamped to ``+-max_update_px`` so one
    step stays inside the range where the linearisation holds. With ``eigen_floor`` > 0 the
    smaller eigenvalue of ``sum w g g^T`` is raised to ``eigen_floor`` times the larger
    (along its eigenvector only): a projection whose structure runs mostly one way (wires)
    barely determines its shift along that way (the aperture problem), and a full step
    there follows noise and model bias; the step across the structure is unchanged.

    Parameters
    ----------
    data, model : torch.Tensor, float, [n, h, w]
        Aligned projections and reprojections (same units).
    weights : torch.Tensor, float, [h, w] or [n, h, w]
        Non-negative pixel weights (zero where the data cannot be trusted).
    highpass_sigma_px : float
        Gaussian high-pass scale, pixels (0 = no filter).
    max_update_px : float
        Clamp of each update component, pixels.
    eigen_floor : float, in [0, 1)
        Smallest ratio of the normal matrix's eigenvalues (0: the plain solve).
    fitted : torch.Tensor, float in [0, 1], [h, w] or [n, h, w], optional
        The pixels the model was fitted to (a window cut out of a wide sample). Given, the
        residual is high-passed by :func:`~hpc_adept.align.imaging.masked_highpass` over
        them and the model's gradient is taken on mirrored edges: the unfitted pixels'
        residual and the periodic filter's wrap-around across the window's edges would
        otherwise enter the filtered residual near the edges and bias every step
        (docs/extended_samples.md, "Alignment"). None: periodic filters (an isolated
        sample in vacuum).

    Returns
    -------
    (update, residual_rms) : torch.Tensor [n, 2] float64, torch.Tensor [n] float64
        The update ``e`` (row, col) in pixels and the weighted RMS of ``r`` per projection.
    """
    if fitted is None:
        model_hp, d_row, d_col = highpass_with_gradient(model, highpass_sigma_px)
        data_hp, _, _ = highpass_with_gradient(data, highpass_sigma_px)
        residual = (data_hp - model_hp).double()
    else:
        _, d_row, d_col = reflected_highpass_with_gradient(model, highpass_sigma_px)
        residual = masked_highpass((data - model).double(), fitted.double(),
                                   highpass_sigma_px)
    w = weights.double().expand_as(residual)
    g_r, g_c = d_row.double(), d_col.double()
    a_rr, a_rc, a_cc = structure_tensor(g_r, g_c, w)
    b_r = (w * g_r * residual).sum(dim=(-2, -1))
    b_c = (w * g_c * residual).sum(dim=(-2, -1))
    # a tiny ridge keeps featureless projections (all gradients ~0) at a zero update
    ridge = 1e-9 * (a_rr + a_cc) + torch.finfo(torch.float64).tiny
    a_rr, a_cc = a_rr + ridge, a_cc + ridge
    if eigen_floor > 0:
        a_rr, a_rc, a_cc = raise_small_eigenvalue(a_rr, a_rc, a_cc, eigen_floor)
    det = a_rr * a_cc - a_rc * a_rc
    # a projection without weight (or gradient) has det 0 after underflow: no update
    solvable = det > 0
    det = torch.where(solvable, det, torch.ones_like(det))
    e_r = torch.where(solvable, -(a_cc * b_r - a_rc * b_c) / det, torch.zeros_like(det))
    e_c = torch.where(solvable, -(a_rr * b_c - a_rc * b_r) / det, torch.zeros_like(det))
    update = torch.stack([e_r, e_c], dim=-1).clamp(-max_update_px, max_update_px)
    residual_rms = torch.sqrt((w * residual ** 2).sum(dim=(-2, -1))
                              / w.sum(dim=(-2, -1)).clamp_min(1e-30))
    return update, residual_rms


def structure_tensor(d_row: torch.Tensor, d_col: torch.Tensor,
                     weights: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a_rr, a_rc, a_cc)``, each [n]: the sums over each image of ``w g g^T`` with
    ``g = (d_row, d_col)`` [n, h, w] (``w`` [n, h, w] or none: 1), the normal matrix of the
    optical-flow solve."""
    def total(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        product = u * v if weights is None else weights * u * v
        return product.sum(dim=(-2, -1))

    return total(d_row, d_row), total(d_row, d_col), total(d_col, d_col)


def _eigenvalues(a_rr: torch.Tensor, a_rc: torch.Tensor, a_cc: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Larger and smaller eigenvalue of the symmetric 2 x 2 matrices
    ``[[a_rr, a_rc], [a_rc, a_cc]]`` (batched)."""
    half_trace = 0.5 * (a_rr + a_cc)
    spread = torch.sqrt((0.5 * (a_rr - a_cc)) ** 2 + a_rc ** 2)
    return half_trace + spread, half_trace - spread


def structure_ratio(images: torch.Tensor, highpass_sigma_px: float, chunk: int = 16
                    ) -> torch.Tensor:
    """How much each image fixes its shift in every direction: the smaller over the larger
    eigenvalue of its structure tensor ``sum g g^T`` (``g`` the gradient of the high-passed
    image, on mirrored edges), the normal matrix of :func:`optical_flow_update`.

    Near 0 for wires running one way (the shift along them is not determined: the aperture
    problem), near 1 for structure in every direction; 0 for an image without structure.

    Parameters
    ----------
    images : torch.Tensor, float, [n, h, w]
    highpass_sigma_px : float, pixels
    chunk : int
        Images filtered at a time (the padded float64 spectra of a whole stack would set
        the memory peak of an alignment).

    Returns
    -------
    torch.Tensor, float64, [n], values in [0, 1]
    """
    sums = []
    for start in range(0, images.shape[0], max(1, chunk)):
        part = images[start:start + max(1, chunk)].double()
        _, d_row, d_col = reflected_highpass_with_gradient(part, highpass_sigma_px)
        sums.append(torch.stack(structure_tensor(d_row, d_col)))
    large, small = _eigenvalues(*torch.cat(sums, dim=1))
    small = small.clamp_min(0.0)
    return torch.where(large > 0, small / large.clamp_min(torch.finfo(large.dtype).tiny),
                       torch.zeros_like(large))


def raise_small_eigenvalue(a_rr: torch.Tensor, a_rc: torch.Tensor, a_cc: torch.Tensor,
                           floor: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric 2 x 2 matrices ``[[a_rr, a_rc], [a_rc, a_cc]]`` (batched, [n]) with their
    smaller eigenvalue raised to at least ``floor`` times the larger; the larger eigenvalue
    and both eigenvectors are kept."""
    large, small = _eigenvalues(a_rr, a_rc, a_cc)
    added = (floor * large - small).clamp_min(0.0)
    # the small eigenvalue's eigenvector: of the two null vectors of A - small I, the longer
    # (one of them vanishes for a diagonal A)
    u_r, u_c = a_rc, small - a_rr
    v_r, v_c = small - a_cc, a_rc
    first = u_r ** 2 + u_c ** 2 >= v_r ** 2 + v_c ** 2
    e_r, e_c = torch.where(first, u_r, v_r), torch.where(first, u_c, v_c)
    norm = torch.sqrt(e_r ** 2 + e_c ** 2).clamp_min(torch.finfo(e_r.dtype).tiny)
    e_r, e_c = e_r / norm, e_c / norm
    return a_rr + added * e_r * e_r, a_rc + added * e_r * e_c, a_cc + added * e_c * e_c


def _parabola_vertex(left: torch.Tensor, mid: torch.Tensor, right: torch.Tensor
                     ) -> torch.Tensor:
    """Sub-sample offset in [-0.5, 0.5] of the vertex of the parabola through 3 samples."""
    denom = left - 2.0 * mid + right
    offset = torch.where(denom < 0, 0.5 * (left - right) / denom.clamp(max=-1e-30),
                         torch.zeros_like(mid))
    return offset.clamp(-0.5, 0.5)


def xcorr_shift(data: torch.Tensor, model: torch.Tensor, weights: torch.Tensor | None = None,
                lowpass_sigma_px: float = 0.0, window_px: float | None = None
                ) -> torch.Tensor:
    """Displacement of ``data`` relative to ``model`` from the peak of their (circular,
    FFT) cross-correlation, with optional low-pass and a bounded search window.

    Integrated circuits are periodic: the cross-correlation of two views of a grating has
    peaks one period apart, and an unrestricted search can pick the wrong one. Low-pass
    filtering with ``lowpass_sigma_px`` about the period removes the grating and leaves the
    aperiodic coarse structure, and ``window_px`` confines the peak to plausible shifts.
    ``lowpass_sigma_px = 0`` and ``window_px = None`` give plain FFT cross-correlation.

    Parameters
    ----------
    data, model : torch.Tensor, float, [n, h, w]
    weights : torch.Tensor, float, [h, w], optional
        Applied after mean removal (e.g. a border taper).
    lowpass_sigma_px : float
        Gaussian low-pass of both inputs, pixels.
    window_px : float, optional
        Largest ``|e|`` searched along each axis, pixels.

    Returns
    -------
    torch.Tensor, float64, [n, 2]
        ``e`` (row, col) in pixels with ``data[r] ~ model[r - e]``; sub-pixel by a
        parabola through the peak and its neighbours along each axis.
    """
    n, h, w = data.shape
    a = lowpass(data.double(), lowpass_sigma_px)
    b = lowpass(model.double(), lowpass_sigma_px)
    a = a - a.mean(dim=(-2, -1), keepdim=True)
    b = b - b.mean(dim=(-2, -1), keepdim=True)
    if weights is not None:
        a, b = a * weights.double(), b * weights.double()
    corr = torch.fft.ifft2(torch.fft.fft2(a) * torch.fft.fft2(b).conj()).real
    lag_r = torch.fft.fftfreq(h, 1.0 / h, dtype=torch.float64, device=data.device)
    lag_c = torch.fft.fftfreq(w, 1.0 / w, dtype=torch.float64, device=data.device)
    if window_px is not None:
        allowed = (lag_r.abs()[:, None] <= window_px) & (lag_c.abs()[None, :] <= window_px)
        corr_search = torch.where(allowed, corr, torch.full_like(corr, -math.inf))
    else:
        corr_search = corr
    flat = corr_search.reshape(n, -1).argmax(dim=1)
    ir, ic = flat // w, flat % w
    rows = torch.arange(n, device=data.device)
    mid = corr[rows, ir, ic]
    off_r = _parabola_vertex(corr[rows, (ir - 1) % h, ic], mid, corr[rows, (ir + 1) % h, ic])
    off_c = _parabola_vertex(corr[rows, ir, (ic - 1) % w], mid, corr[rows, ir, (ic + 1) % w])
    return torch.stack([lag_r[ir] + off_r, lag_c[ic] + off_c], dim=-1)
