"""The filter and the angular weights of filtered backprojection (laminography).

With the geometry of DESIGN.md section 3 the projection slice at angle theta covers
the Fourier plane spanned by u and v; the change of variables from (k_u, k_v, theta)
to 3-D frequencies has Jacobian |k_u| cos(a) = |k_u| sin(L), and over a full turn
every measured frequency is covered twice. So

    f = (1 / 2) int_0^{2 pi} B_theta[ IFT( sin(L) |k_u| G_theta ) ] dtheta,

a 1-D ramp along the detector columns (no k_v dependence), backprojected over 360
degrees. Frequencies inside the double cone of half-angle 90 - L about z are never
measured (REFERENCE.md, "Laminographic FBP and the missing cone").

The backprojection itself is the operator's adjoint
(:meth:`hpc_adept.lamino.LaminoOperator.fbp`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hpc_adept.lamino.geometry import Geometry, _as_tilt


def _ramlak_response(n: int, n_fft: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Real frequency response [n_fft // 2 + 1] of the Ram-Lak kernel truncated to |m| < n.

    Sampling |k| directly gives a wrong DC value (zero) and a cupped result; the
    spatial-domain kernel h[0] = 1/4, h[odd m] = -1 / (pi m)^2, h[even m] = 0 is the
    band-limited ramp (Kak & Slaney, eq. 61), whose DFT approximates |k| in cycles
    per pixel while keeping the right DC term.
    """
    m = np.minimum(np.arange(n_fft), n_fft - np.arange(n_fft)).astype(np.float64)
    h = np.zeros(n_fft, dtype=np.float64)
    h[0] = 0.25
    odd = (m % 2 == 1) & (m < n)
    h[odd] = -1.0 / (math.pi * m[odd]) ** 2
    response = np.fft.rfft(h).real  # h is even on the circle: its DFT is real
    return torch.as_tensor(response, dtype=dtype, device=device)


def as_float_tensor(x: torch.Tensor | np.ndarray, name: str) -> tuple[torch.Tensor, bool]:
    """Return ``x`` as a float tensor and whether it came in as a numpy array."""
    if isinstance(x, np.ndarray):
        dtype = np.float64 if x.dtype == np.float64 else np.float32
        return torch.from_numpy(np.ascontiguousarray(x, dtype=dtype)), True
    if isinstance(x, torch.Tensor):
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
        return x, False
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def ramp_filter(
    projections: torch.Tensor | np.ndarray, tilt_deg: float
) -> torch.Tensor | np.ndarray:
    """Laminographic ramp filter along the detector columns (u).

    Parameters
    ----------
    projections : torch.Tensor or np.ndarray, float32/float64, shape [..., nv, nu]
        Projections; filtered along the last axis (columns).
    tilt_deg : float
        Laminography angle L in degrees, in (0, 90].

    Returns
    -------
    Same type, dtype, device and shape as ``projections``
        ``(sin L / 2) |k_u|`` applied by zero-padded FFT convolution (padding to at least
        twice the width, so no wrap-around). Units: input units per pixel.
    """
    tilt_deg = _as_tilt(tilt_deg)
    p, was_numpy = as_float_tensor(projections, "projections")
    nu = p.shape[-1]
    n_fft = 1 << (2 * nu - 1).bit_length()
    response = _ramlak_response(nu, n_fft, p.dtype, p.device)
    response = response * (math.sin(math.radians(tilt_deg)) / 2.0)
    spectrum = torch.fft.rfft(p, n=n_fft, dim=-1) * response
    out = torch.fft.irfft(spectrum, n=n_fft, dim=-1)[..., :nu]
    return out.numpy() if was_numpy else out.contiguous()


def angular_weights(geometry: Geometry) -> np.ndarray:
    """Quadrature weights of the rotation angles (radians), float64 [n_angles].

    Each angle gets half the gap to its neighbours on the circle, so evenly spaced angles
    over 360 degrees get 2 pi / n_angles and the weights always sum to 2 pi. For
    tomography (tilt 90) the projection at theta + 180 is the mirror image of the one
    at theta, so the gaps are taken modulo 180 degrees (and doubled): a 180-degree scan
    is then weighted correctly too.
    """
    period = 180.0 if geometry.tilt_deg == 90.0 else 360.0
    theta = np.mod(np.asarray(geometry.angles_deg, dtype=np.float64), period)
    order = np.argsort(theta, kind="stable")
    sorted_theta = theta[order]
    gap_next = np.diff(np.append(sorted_theta, sorted_theta[0] + period))
    weights = np.empty_like(theta)
    weights[order] = 0.5 * (gap_next + np.roll(gap_next, 1))
    return np.deg2rad(weights) * (360.0 / period)
