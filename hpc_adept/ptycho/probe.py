"""Initial probes and probe-mode algebra for LSQ-ML.

Conventions (DESIGN section 4): a probe is complex ``[N, N]`` (or ``[modes, N, N]``) with its
center at ``(N - 1) / 2``; its intensity is in photons, so that ``sum |P|^2`` over all modes
equals the mean total counts of a frame for a unit-modulus object.

Every function takes and returns arrays of one array module (NumPy or CuPy). The probe
fitted by LSQ-ML trials, which needs the engine, is in :mod:`hpc_adept.ptycho.fitted_probe`
(this module is below the engine: :mod:`hpc_adept.ptycho.lsqml` imports it).
"""

from __future__ import annotations

from typing import Any

from hpc_adept.backend import get_array_module

__all__ = [
    "add_probe_modes",
    "mean_total_counts",
    "orthogonalize_modes",
    "probe_from_data",
    "retrieve_pupil",
    "scale_probe",
]


def mean_total_counts(counts: Any, valid: Any | None = None) -> float:
    """Mean photons per frame, extrapolated over bad pixels.

    Parameters
    ----------
    counts : array, float, [n, N, N]
        Photon counts.
    valid : array, bool or float, [N, N], optional
        1 for good pixels; the masked pixels are assumed to hold the same mean intensity per
        pixel as the good ones (they are few and scattered, or the mask is empty).
    """
    xp = get_array_module(counts)
    if valid is None:
        return float(xp.sum(counts, dtype=xp.float64)) / counts.shape[0]
    good = float(xp.sum(valid, dtype=xp.float64))
    total = float(xp.sum(counts * valid, dtype=xp.float64)) / counts.shape[0]
    return total * valid.size / max(good, 1.0)


def scale_probe(probe: Any, total_intensity: float) -> Any:
    """``probe`` scaled so that ``sum |P|^2`` over all modes equals ``total_intensity``."""
    xp = get_array_module(probe)
    power = float(xp.sum(xp.abs(probe) ** 2, dtype=xp.float64))
    if power <= 0:
        raise ValueError("the probe is zero everywhere")
    return (probe * (total_intensity / power) ** 0.5).astype(probe.dtype)


def mean_pattern_filled(counts: Any, valid: Any | None) -> tuple[Any, Any | None]:
    """Mean diffraction pattern with bad pixels filled from their Friedel mirror.

    Parameters
    ----------
    counts : array, float, [n, N, N]
        Patterns, DC at ``N // 2``.
    valid : array, float, [N, N] or None
        1 = good pixel, 0 = bad.

    Returns
    -------
    mean : array, float64, [N, N]
        Mean pattern; a bad pixel takes its mirror image through DC (a weak object's
        pattern is nearly centro-symmetric), or 0 when that is bad too.
    known : array, float64, [N, N] or None
        1 where the mean is measured directly or through the mirror (None without a mask).
    """
    xp = get_array_module(counts)
    n = counts.shape[-1]
    mean = xp.mean(counts, axis=0, dtype=xp.float64)
    if valid is None:
        return mean, None
    shift = (1 - n % 2, 1 - n % 2)  # mirror through index N // 2
    mirror = xp.roll(mean[::-1, ::-1], shift, axis=(0, 1))
    mirror_valid = xp.roll(valid[::-1, ::-1], shift, axis=(0, 1))
    filled = valid * mean + (1 - valid) * mirror_valid * mirror
    return filled, xp.maximum(valid, mirror_valid)


def probe_from_data(counts: Any, valid: Any | None = None, *, defocus: float | None = None,
                    dtype: str = "complex64") -> Any:
    """Initial probe: the back-propagated mean diffraction pattern with a defocus phase.

    The mean pattern's amplitude ``sqrt(mean_j d_j)`` is the probe's far-field modulus for a
    weakly scattering object. With a flat phase its back-propagation is a tiny spot (all
    the power in phase); a quadratic (defocus) phase spreads it over an area comparable to
    the real probe, which gives LSQ-ML a much better start on the overlap constraint.

    Parameters
    ----------
    counts : array, float32, [n, N, N]
        Photon counts, DC at index ``N // 2``.
    valid : array, bool or float, [N, N], optional
        1 for good pixels, DC at ``N // 2``; bad pixels are filled by the pattern's mirror
        image through DC (Friedel symmetry of a weak object's pattern) or zero.
    defocus : float or None
        ``lambda * z`` of the quadratic phase ``exp(-i pi lambda z |k|^2)`` in pixel units
        (``k`` in cycles per pixel). None chooses it so that the back-propagated probe's
        radius is about a quarter of the frame (:func:`_auto_defocus`).
    dtype : str
        Complex dtype of the result.

    Returns
    -------
    array, complex, [N, N]
        Probe centered at ``(N - 1) / 2`` with ``sum |P|^2`` = the mean total counts.
    """
    xp = get_array_module(counts)
    n = counts.shape[-1]
    if valid is not None:
        valid = xp.asarray(valid, dtype=xp.float64)
    mean_pattern, _ = mean_pattern_filled(counts, valid)
    amplitude = xp.fft.ifftshift(xp.sqrt(xp.maximum(mean_pattern, 0.0)))
    k = xp.fft.fftfreq(n)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    if defocus is None:
        defocus = _auto_defocus(amplitude**2, k2, target_radius=n / 4.0)
    # A ramp that puts the probe's center at (N - 1) / 2 instead of the origin.
    center = (n - 1) / 2.0
    ramp = xp.exp(-2j * xp.pi * center * (k[:, None] + k[None, :]))
    spectrum = amplitude * xp.exp(-1j * xp.pi * defocus * k2) * ramp
    probe = xp.fft.ifft2(spectrum, norm="ortho")
    total = mean_total_counts(counts, valid)
    return scale_probe(probe.astype(dtype), total)


def retrieve_pupil(mean_pattern: Any, known: Any | None = None, *, iterations: int = 300,
                   er_iterations: int = 100, beta: float = 0.9, threshold: float = 0.02,
                   margin: float = 1.15) -> tuple[Any, float]:
    """Real, non-negative pupil whose far-field modulus is ``sqrt(mean_pattern)``.

    A defocused aperture ``P = prop_z(A)`` has the far-field modulus ``|F A|`` of its real,
    non-negative aperture ``A`` whatever ``z`` (propagation is a pure phase in the far
    field), so the mean pattern of a weak object fixes ``A`` but not the defocus. ``A`` is
    retrieved by HIO then error reduction with a disk support and positivity; the disk's
    radius is half that of the pattern's autocorrelation (``ifft`` of the pattern, whose
    support is twice the aperture's), thresholded at ``threshold`` of its peak, times
    ``margin``. Positivity also removes the twin ambiguity (the twin of a real aperture is
    its mirror image, equally good).

    Parameters
    ----------
    mean_pattern : array, float, [N, N]
        Mean diffraction pattern, DC at ``N // 2``.
    known : array, bool or float, [N, N], optional
        1 where the pattern constrains the far field (DC at ``N // 2``); elsewhere the far
        field is left free.
    iterations, er_iterations : int
        HIO and then error-reduction iterations (one N x N FFT pair each).
    beta : float
        HIO feedback.
    threshold, margin : float
        Autocorrelation threshold (fraction of its peak) and support enlargement.

    Returns
    -------
    pupil : array, float64, [N, N]
        The aperture, on the array's center ``(N - 1) / 2`` up to the support's slack.
    radius : float
        Radius of the support used, pixels (``margin`` times the estimated aperture radius).
    """
    xp = get_array_module(mean_pattern)
    n = mean_pattern.shape[-1]
    pattern = xp.fft.ifftshift(xp.maximum(xp.asarray(mean_pattern, dtype=xp.float64), 0.0))
    amplitude = xp.sqrt(pattern)
    free = None
    if known is not None:
        free = xp.fft.ifftshift(xp.asarray(known, dtype=xp.float64)) <= 0
    autocorrelation = xp.abs(xp.fft.ifft2(pattern))
    # The photon noise's flat floor is a spike at the origin: replace it by its neighbours.
    autocorrelation[0, 0] = 0.25 * (autocorrelation[0, 1] + autocorrelation[1, 0]
                                    + autocorrelation[0, -1] + autocorrelation[-1, 0])
    area = float(xp.sum(autocorrelation >= threshold * autocorrelation.max()))
    radius = 0.5 * (area / 3.141592653589793) ** 0.5 * margin
    coords = xp.arange(n) - (n - 1) / 2.0
    support = xp.hypot(coords[:, None], coords[None, :]) <= radius
    pupil = support.astype(xp.float64)
    for iteration in range(iterations + er_iterations):
        spectrum = xp.fft.fft2(pupil)
        projected = amplitude * xp.exp(1j * xp.angle(spectrum))
        if free is not None:
            projected = xp.where(free, spectrum, projected)
        image = xp.fft.ifft2(projected).real
        inside = support & (image >= 0)
        if iteration < iterations:
            pupil = xp.where(inside, image, pupil - beta * image)
        else:
            pupil = xp.where(inside, image, 0.0)
    return pupil, float(radius)


def defocused_probe(pupil: Any, defocus: float) -> Any:
    """The pupil propagated by ``lambda z = defocus``, its intensity centroid at ``(N - 1) / 2``.

    Parameters
    ----------
    pupil : array, [N, N]
        Aperture (real or complex).
    defocus : float
        ``lambda * z`` of ``exp(-i pi lambda z |k|^2)``, pixel units (``k`` in cycles/pixel).

    Returns
    -------
    array, complex128, [N, N]
    """
    xp = get_array_module(pupil)
    n = pupil.shape[-1]
    k = xp.fft.fftfreq(n)
    spectrum = xp.fft.fft2(pupil) * xp.exp(-1j * xp.pi * defocus * (k[:, None] ** 2
                                                                   + k[None, :] ** 2))
    probe = xp.fft.ifft2(spectrum)
    weight = xp.abs(probe) ** 2
    index = xp.arange(n)
    total = float(xp.sum(weight))
    shift_r = (n - 1) / 2.0 - float(xp.sum(weight.sum(1) * index)) / total
    shift_c = (n - 1) / 2.0 - float(xp.sum(weight.sum(0) * index)) / total
    ramp = xp.exp(-2j * xp.pi * (k[:, None] * shift_r + k[None, :] * shift_c))
    return xp.fft.ifft2(xp.fft.fft2(probe) * ramp)


def _auto_defocus(power: Any, k2: Any, target_radius: float) -> float:
    """``lambda z`` that spreads a pupil of rms radius ``k_rms`` to ``target_radius`` pixels.

    Under a quadratic phase ``exp(-i pi lz k^2)`` the far-field point ``k`` lands at
    ``x = lz k`` (stationary phase), so the spot's rms radius is ``lz * k_rms``.
    """
    xp = get_array_module(power)
    k_rms = float(xp.sqrt(xp.sum(power * k2) / xp.sum(power)))
    return target_radius / max(k_rms, 1e-6)


def add_probe_modes(probe: Any, n_modes: int, energy_fraction: float = 0.05) -> Any:
    """Extend a probe to ``n_modes`` incoherent modes.

    The new modes are the first mode times low-order polynomials (x, y, xy, x^2 - y^2, ...),
    like the Hermite-Gauss modes of a partially coherent beam, each carrying
    ``energy_fraction`` of the first mode's power; the set is then orthogonalised.

    Parameters
    ----------
    probe : array, complex, [N, N] or [K, N, N]
    n_modes : int
        Number of modes wanted (>= K).
    energy_fraction : float
        Power of each added mode relative to mode 0.

    Returns
    -------
    array, complex, [n_modes, N, N], same total power as the input plus the added modes.
    """
    xp = get_array_module(probe)
    modes = probe[None] if probe.ndim == 2 else probe
    if modes.shape[0] >= n_modes:
        return modes[:n_modes]
    n = modes.shape[-1]
    coords = (xp.arange(n) - (n - 1) / 2.0) / (n / 4.0)
    y, x = coords[:, None], coords[None, :]
    shapes = [x, y, x * y, x * x - y * y, x * x + y * y - 1.0, x * x * x, y * y * y]
    base = modes[0]
    base_power = float(xp.sum(xp.abs(base) ** 2))
    extra = []
    for index in range(n_modes - modes.shape[0]):
        mode = base * shapes[index % len(shapes)]
        power = float(xp.sum(xp.abs(mode) ** 2))
        extra.append(mode * (energy_fraction * base_power / max(power, 1e-30)) ** 0.5)
    combined = xp.concatenate([modes, xp.stack(extra).astype(modes.dtype)], axis=0)
    return orthogonalize_modes(combined)


def orthogonalize_modes(modes: Any) -> Any:
    """Orthogonal modes spanning the same incoherent mixture, strongest first.

    The mixture's mutual intensity ``sum_k P_k(r) P_k*(r')`` is invariant under a unitary
    mixing of the modes; the eigen-decomposition of the K x K Gram matrix picks the mixing
    that makes the modes orthogonal (the "coherent modes").

    Parameters
    ----------
    modes : array, complex, [K, N, N]

    Returns
    -------
    array, complex, [K, N, N], ``sum_r P_a conj(P_b) = 0`` for ``a != b``, power decreasing.
    """
    xp = get_array_module(modes)
    if modes.shape[0] == 1:
        return modes
    flat = modes.reshape(modes.shape[0], -1).astype(xp.complex128)
    gram = flat.conj() @ flat.T  # [K, K], Hermitian: G[a, b] = <P_a, P_b>
    _, vectors = xp.linalg.eigh(gram)
    vectors = vectors[:, ::-1]  # eigh sorts ascending; strongest mode first
    mixed = vectors.T @ flat
    return mixed.reshape(modes.shape).astype(modes.dtype)
