"""Image kernels of the alignment: sub-pixel shifts, binning, Gaussian filters, cropping.

Every function works on torch tensors of any float dtype on any device and treats the last
two axes as image ``[row, col]``; leading axes are a batch (e.g. ``[n_angles, nv, nu]``).
Shifts follow DESIGN section 4: shifting an image ``x`` by ``s = (s_r, s_c)`` pixels gives
``y[r, c] = x[r - s_r, c - s_c]`` (content moves by ``+s``).
"""

from __future__ import annotations

import math

import torch


def _frequencies(n: int, like: torch.Tensor) -> torch.Tensor:
    """FFT sample frequencies [n] in cycles per pixel, real dtype of ``like``."""
    return torch.fft.fftfreq(n, dtype=like.real.dtype if like.is_complex() else like.dtype,
                             device=like.device)


def fourier_shift(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Circular sub-pixel shift by a phase ramp in Fourier space.

    Parameters
    ----------
    images : torch.Tensor, float, [..., h, w]
        Images (pixels).
    shifts : torch.Tensor, float, [..., 2]
        ``(row, col)`` shift of each image in pixels; leading axes as ``images``.

    Returns
    -------
    torch.Tensor, like ``images``
        ``out[r, c] = images[r - s_r, c - s_c]`` (band-limited interpolation, periodic).

    Notes
    -----
    The operator is ``Re(F^-1 diag(exp(-2 pi i k.s)) F)``; its exact adjoint on real images
    is the shift by ``-s`` (tested by a dot product), and shifts compose additively.
    """
    h, w = images.shape[-2:]
    kr = _frequencies(h, images)
    kc = _frequencies(w, images)
    sr = shifts[..., 0].to(images.dtype)[..., None, None]
    sc = shifts[..., 1].to(images.dtype)[..., None, None]
    phase = -2.0 * math.pi * (kr[:, None] * sr + kc[None, :] * sc)
    spectrum = torch.fft.fft2(images) * torch.polar(torch.ones_like(phase), phase)
    return torch.fft.ifft2(spectrum).real.contiguous()


def shift_images(images: torch.Tensor, shifts: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """:func:`fourier_shift` on images extended by ``pad`` edge-replicated pixels.

    The padding keeps content that leaves one edge from wrapping onto the other (the
    replicated border enters instead), for shifts up to ``pad`` pixels.

    Parameters
    ----------
    images : torch.Tensor, float, [n, h, w]
    shifts : torch.Tensor, float, [n, 2], pixels (row, col)
    pad : int
        Pixels added on every side before shifting and removed afterwards.

    Returns
    -------
    torch.Tensor, [n, h, w]
    """
    if pad <= 0:
        return fourier_shift(images, shifts)
    h, w = images.shape[-2:]
    padded = torch.nn.functional.pad(images[:, None], (pad, pad, pad, pad), mode="replicate")
    moved = fourier_shift(padded[:, 0], shifts)
    return moved[:, pad:pad + h, pad:pad + w].contiguous()


def bin_images(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Average over ``factor`` x ``factor`` blocks.

    Parameters
    ----------
    images : torch.Tensor, float, [..., h, w]
        ``h`` and ``w`` must be multiples of ``factor``.
    factor : int

    Returns
    -------
    torch.Tensor, [..., h // factor, w // factor]
        Block means. The center ``(h - 1) / 2`` of the input maps onto the center of the
        output, so the detector geometry stays centred.
    """
    if factor == 1:
        return images
    h, w = images.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"bin_images: image shape {(h, w)} is not a multiple of {factor}")
    lead = images.shape[:-2]
    blocks = images.reshape(*lead, h // factor, factor, w // factor, factor)
    return blocks.mean(dim=(-3, -1))


def unbin_images(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Adjoint of :func:`bin_images`: replicate every pixel into a block, divided by
    ``factor**2``.

    Returns
    -------
    torch.Tensor, [..., h * factor, w * factor]
    """
    if factor == 1:
        return images
    up = images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    return up / float(factor * factor)


def gaussian_transfer(shape: tuple[int, int], sigma_px: float, like: torch.Tensor
                      ) -> torch.Tensor:
    """Fourier transfer function [h, w] of a Gaussian blur of standard deviation
    ``sigma_px`` pixels (real, even, value 1 at DC; 1 everywhere for sigma 0)."""
    kr = _frequencies(shape[0], like)
    kc = _frequencies(shape[1], like)
    k2 = kr[:, None] ** 2 + kc[None, :] ** 2
    return torch.exp(-2.0 * math.pi ** 2 * sigma_px ** 2 * k2)


def lowpass(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Periodic Gaussian blur (self-adjoint) of the last two axes; identity for sigma 0."""
    if sigma_px <= 0:
        return images
    transfer = gaussian_transfer(images.shape[-2:], sigma_px, images)
    return torch.fft.ifft2(torch.fft.fft2(images) * transfer).real.contiguous()


def highpass(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """``images - lowpass(images, sigma_px)`` (self-adjoint): removes the slowly varying
    phase offsets and ramps of ptychographic projections. Identity for sigma 0."""
    if sigma_px <= 0:
        return images
    return images - lowpass(images, sigma_px)


def highpass_with_gradient(images: torch.Tensor, sigma_px: float
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """High-passed images and their spectral row/column derivatives, from one FFT.

    Returns
    -------
    (filtered, d_row, d_col) : three torch.Tensor like ``images``
        Derivatives in image units per pixel (the Nyquist terms of even sizes dropped, so
        the derivative of a real image is real).
    """
    h, w = images.shape[-2:]
    spectrum = torch.fft.fft2(images)
    if sigma_px > 0:
        spectrum = spectrum * (1.0 - gaussian_transfer((h, w), sigma_px, images))
    kr = _frequencies(h, images)
    kc = _frequencies(w, images)
    if h % 2 == 0:
        kr = kr.clone()
        kr[h // 2] = 0.0
    if w % 2 == 0:
        kc = kc.clone()
        kc[w // 2] = 0.0
    filtered = torch.fft.ifft2(spectrum).real
    d_row = torch.fft.ifft2(spectrum * (2j * math.pi * kr[:, None])).real
    d_col = torch.fft.ifft2(spectrum * (2j * math.pi * kc[None, :])).real
    return filtered.contiguous(), d_row.contiguous(), d_col.contiguous()


def masked_highpass(images: torch.Tensor, mask: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """High-pass of ``images`` that only listens to the pixels of ``mask``.

    ``x - G(m x) / G(m)`` (normalised convolution) with a Gaussian ``G`` of ``sigma_px``,
    on images padded with zeros by ``3 sigma``, so that neither pixels outside ``mask`` (a
    residual the reconstruction was not fitted to) nor the opposite edge (a periodic
    filter's wrap-around) leak into the local mean. With ``mask`` all ones away from the
    edges it equals :func:`highpass`.

    Parameters
    ----------
    images : torch.Tensor, float, [..., h, w]
    mask : torch.Tensor, float in [0, 1], broadcastable to ``images``
    sigma_px : float, pixels (0: identity)

    Returns
    -------
    torch.Tensor like ``images``; where ``G(m)`` is below 1e-3 of its peak (no fitted pixel
    near) it is divided by that floor instead, so the local mean stays near 0.
    """
    if sigma_px <= 0:
        return images
    pad = int(math.ceil(3.0 * sigma_px))
    weight = mask.to(images.dtype)
    padded = _zero_pad(images * weight, pad)
    support = lowpass(_zero_pad(weight, pad), sigma_px)  # at the mask's own shape
    # no host sync: the floor stays a tensor on the images' device (and > 0 for a zero mask)
    floor = (1e-3 * support.amax()).clamp_min(torch.finfo(support.dtype).tiny)
    local = lowpass(padded, sigma_px) / torch.maximum(support, floor)
    h, w = images.shape[-2:]
    return images - local[..., pad:pad + h, pad:pad + w]


def reflected_highpass_with_gradient(images: torch.Tensor, sigma_px: float
                                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`highpass_with_gradient` of ``images`` extended by mirror images of their
    edges (``3 sigma`` pixels, at least 2, at most the image size less one), cropped back:
    a window cut out of a wide sample has different content at opposite edges, and the
    periodic filter and derivative would ring at that jump. The derivative across an edge
    is zero at its outermost pixel (the mirror); weights taper the edges out anyway."""
    pad = max(2, int(math.ceil(3.0 * sigma_px)))
    h, w = images.shape[-2:]
    pad_r, pad_c = min(pad, h - 1), min(pad, w - 1)
    lead = images.shape[:-2]
    flat = images.reshape(-1, 1, h, w)
    mirrored = torch.nn.functional.pad(flat, (pad_c, pad_c, pad_r, pad_r), mode="reflect")
    parts = highpass_with_gradient(mirrored[:, 0], sigma_px)
    return tuple(part[:, pad_r:pad_r + h, pad_c:pad_c + w].reshape(*lead, h, w).contiguous()
                 for part in parts)


def _zero_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    return torch.nn.functional.pad(images, (pad, pad, pad, pad))


def crop_window(size: int, out: int) -> tuple[int, float]:
    """Start index and centre offset of a centred crop of ``out`` from ``size`` pixels.

    Returns
    -------
    (start, offset) : int, float
        ``images[start:start + out]``; ``offset`` (0 or 0.5 pixel) is how far the input
        centre ``(size - 1) / 2`` lies beyond the crop centre ``start + (out - 1) / 2``:
        shift the images by ``-offset`` before cropping to keep the centres on each other.
    """
    if not 0 < out <= size:
        raise ValueError(f"crop of {out} from {size} pixels")
    start = (size - out) // 2
    return start, (size - 1) / 2.0 - (start + (out - 1) / 2.0)


def border_taper(shape: tuple[int, int], width_px: int, like: torch.Tensor) -> torch.Tensor:
    """Weights [h, w] that rise from 0 at the image border to 1 over ``width_px`` pixels
    (raised cosine), so wrapped-around content of periodic shifts and filters does not
    count."""
    def ramp(n: int) -> torch.Tensor:
        idx = torch.arange(n, dtype=like.dtype, device=like.device)
        dist = torch.minimum(idx, n - 1 - idx)
        if width_px <= 0:
            return torch.ones(n, dtype=like.dtype, device=like.device)
        t = torch.clamp(dist / float(width_px), 0.0, 1.0)
        return 0.5 - 0.5 * torch.cos(math.pi * t)

    return ramp(shape[0])[:, None] * ramp(shape[1])[None, :]
