"""Far-field ptychography forward model: probe, scan positions, diffraction patterns.

Conventions (DESIGN section 4): the object is ``O = exp(i * projection)`` (times a weak
absorption); a frame is ``|fftshift(fft2(P * O_patch, norm="ortho"))|^2`` with DC at index
``N // 2``; the probe's center is at ``(N - 1) / 2`` of its N x N frame; a probe at offset
``p`` (object pixels, from the projection center ``(m - 1) / 2``) illuminates projection
pixels ``(m - 1) / 2 + p + i - (N - 1) / 2`` for frame pixel ``i``.

All functions are NumPy kernels (no MPI).
"""

from __future__ import annotations

import numpy as np


def make_probe(frame_size: int, diameter_px: float, fresnel_number: float = 4.0,
               dtype: type = np.complex128) -> np.ndarray:
    """A structured, focused-beam-like probe: a soft circular aperture propagated a little.

    The near-field propagation of a sharp aperture gives the ring structure and phase
    curvature that make ptychography well conditioned, like a slightly defocused focus.

    Parameters
    ----------
    frame_size : int
        N; the probe is N x N.
    diameter_px : float
        Aperture diameter, object pixels.
    fresnel_number : float
        ``radius^2 / (wavelength * distance)`` of the propagation (larger = less spread).

    Returns
    -------
    ndarray, complex, [N, N]
        Probe with unit total intensity ``sum |P|^2 = 1``, centered at ``(N - 1) / 2``.
    """
    n = frame_size
    coords = np.arange(n) - (n - 1) / 2.0
    radius = np.hypot(coords[:, None], coords[None, :])
    r0 = diameter_px / 2.0
    aperture = 0.5 * (1.0 - np.tanh((radius - r0) / 0.7))
    # Angular-spectrum propagation by lambda*z = r0^2 / F (pixel units).
    lambda_z = r0**2 / fresnel_number
    k = np.fft.fftfreq(n)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    kernel = np.exp(-1j * np.pi * lambda_z * k2)
    probe = np.fft.ifft2(np.fft.fft2(np.fft.ifftshift(aperture)) * kernel)
    probe = np.fft.fftshift(probe)
    probe /= np.sqrt(np.sum(np.abs(probe) ** 2))
    return probe.astype(dtype)


def raster_positions(field_shape: tuple[int, int], step_px: float, jitter_px: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Probe positions covering a field on a jittered raster.

    Parameters
    ----------
    field_shape : (nv, nu)
        Size of the projection field, pixels.
    step_px : float
        Raster step, pixels (``diameter * (1 - overlap)``).
    jitter_px : float
        Uniform jitter in [-jitter, jitter] on each axis (breaks the raster grid pathology).
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, float64, [n_positions, 2]
        (row, col) offsets from the field center, pixels; the centers span the whole field.
    """
    axes = []
    for extent in field_shape:
        half = (extent - 1) / 2.0
        count = int(np.ceil(2 * half / step_px)) + 1
        axes.append(np.linspace(-half, half, count) if count > 1 else np.zeros(1))
    rows, cols = np.meshgrid(axes[0], axes[1], indexing="ij")
    positions = np.stack([rows.ravel(), cols.ravel()], axis=1)
    if jitter_px > 0:
        positions = positions + rng.uniform(-jitter_px, jitter_px, positions.shape)
    return positions


def shift_image(image: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """Sub-pixel circular shift by the Fourier shift theorem: ``out[i] = image[i - shift]``."""
    ky = np.fft.fftfreq(image.shape[0])[:, None]
    kx = np.fft.fftfreq(image.shape[1])[None, :]
    ramp = np.exp(-2j * np.pi * (ky * shift[0] + kx * shift[1]))
    return np.fft.ifft2(np.fft.fft2(image) * ramp)


def object_from_projection(projection: np.ndarray, absorption_ratio: float,
                           pad: int) -> np.ndarray:
    """Complex transmission ``exp((i - beta/delta) * projection)`` padded with free space.

    Returns
    -------
    ndarray, complex128, [nv + 2 pad, nu + 2 pad]
    """
    phase = np.pad(np.asarray(projection, dtype=np.float64), pad)
    return np.exp((1j - absorption_ratio) * phase)


def linear_phase(field_shape: tuple[int, int], offset_rad: float,
                 ramp_rad: np.ndarray | tuple[float, float], pad: int = 0) -> np.ndarray:
    """A phase offset plus a linear ramp over a field and ``pad`` pixels around it.

    Parameters
    ----------
    field_shape : (nv, nu)
        The field (window) whose centre ``((nv - 1) / 2, (nu - 1) / 2)`` is the ramp's zero.
    offset_rad : float, rad
        The phase at the centre.
    ramp_rad : (row, col), rad
        The ramp's phase change from the centre to the field's edge (``nv / 2`` rows,
        ``nu / 2`` columns away) along each axis.
    pad : int
        Pixels on every side beyond the field, where the ramp continues.

    Returns
    -------
    ndarray, float64, [nv + 2 pad, nu + 2 pad]
    """
    nv, nu = field_shape
    rows = (np.arange(nv + 2 * pad) - pad - (nv - 1) / 2.0) / (nv / 2.0)
    cols = (np.arange(nu + 2 * pad) - pad - (nu - 1) / 2.0) / (nu / 2.0)
    return offset_rad + ramp_rad[0] * rows[:, None] + ramp_rad[1] * cols[None, :]


def diffraction_patterns(obj: np.ndarray, pad: int, field_shape: tuple[int, int],
                         probe: np.ndarray, positions_px: np.ndarray) -> np.ndarray:
    """Noiseless far-field intensities of a probe scanned over an object.

    Parameters
    ----------
    obj : ndarray, complex, [nv + 2 pad, nu + 2 pad]
        Padded object from :func:`object_from_projection`.
    pad : int
        Padding of ``obj`` on every side (>= N/2 + max |position| beyond the field).
    field_shape : (nv, nu)
        Unpadded projection size.
    probe : ndarray, complex, [N, N]
    positions_px : ndarray, float, [n, 2]
        (row, col) probe offsets from the projection center, pixels.

    Returns
    -------
    ndarray, float64, [n, N, N]
        ``|fftshift(fft2(P * O_patch, norm="ortho"))|^2``, DC at ``N // 2``.
    """
    n = probe.shape[0]
    out = np.empty((len(positions_px), n, n))
    for idx, (pr, pc) in enumerate(positions_px):
        # Frame pixel i sees object pixel pad + (m-1)/2 + p + i - (N-1)/2.
        start_r = pad + (field_shape[0] - n) / 2.0 + pr
        start_c = pad + (field_shape[1] - n) / 2.0 + pc
        r0, c0 = int(np.floor(start_r)), int(np.floor(start_c))
        if r0 < 0 or c0 < 0 or r0 + n > obj.shape[0] or c0 + n > obj.shape[1]:
            raise ValueError(f"position {idx} ({pr:.1f}, {pc:.1f}) leaves the padded object")
        frac = (start_r - r0, start_c - c0)
        # Shifting the probe by +frac against the integer patch is the same exit wave up
        # to a translation, which leaves the far-field intensity unchanged.
        shifted = probe if frac == (0.0, 0.0) else shift_image(probe, frac)
        wave = shifted * obj[r0:r0 + n, c0:c0 + n]
        far = np.fft.fftshift(np.fft.fft2(wave, norm="ortho"))
        out[idx] = far.real**2 + far.imag**2
    return out


def detector_distance_m(object_pixel_m: float, wavelength_m: float, frame_size: int,
                        detector_pixel_m: float) -> float:
    """Distance that makes the object pixel ``wavelength * z / (N * p)`` equal a target."""
    return object_pixel_m * frame_size * detector_pixel_m / wavelength_m
