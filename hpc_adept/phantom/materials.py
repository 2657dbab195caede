"""X-ray optical constants of copper interconnect in a SiO2 dielectric.

The phantom's ground truth is the phase contrast of copper against the
dielectric, ``delta_Cu - delta_SiO2`` = 3.0e-5 at 6.2 keV (DESIGN.md, section 4).

Approximation: away from 6.2 keV the contrast is scaled as ``(6200 eV / E)^2``,
the free-electron (far-from-edge) energy dependence of ``delta``. It ignores
absorption edges (Cu K edge at 8.98 keV, Cu L edges near 0.93-1.1 keV, O/Si
edges below 2 keV), so it is only meaningful in roughly 3-8.5 keV; absorption
(``beta``) is not modelled.
"""

from __future__ import annotations

import numpy as np

HC_EV_M = 1.23984e-6
"""Planck constant times speed of light, eV m (lambda[m] = HC_EV_M / E[eV])."""

REFERENCE_ENERGY_EV = 6200.0
"""Energy at which the copper/SiO2 contrast is tabulated, eV."""

REFERENCE_DELTA_CONTRAST = 3.0e-5
"""delta_Cu - delta_SiO2 at REFERENCE_ENERGY_EV (dimensionless)."""


def _check_energy(energy_ev: float) -> float:
    e = float(energy_ev)
    if not e > 0:
        raise ValueError(f"photon energy must be positive, got {energy_ev} eV")
    return e


def wavelength_m(energy_ev: float) -> float:
    """X-ray wavelength.

    Parameters
    ----------
    energy_ev : float
        Photon energy, eV.

    Returns
    -------
    float
        Wavelength, metres (``1.23984e-6 / E``).
    """
    return HC_EV_M / _check_energy(energy_ev)


def copper_delta_contrast(energy_ev: float) -> float:
    """Refractive-index decrement contrast ``delta_Cu - delta_SiO2``.

    Parameters
    ----------
    energy_ev : float
        Photon energy, eV.

    Returns
    -------
    float
        3.0e-5 at 6.2 keV, scaled as ``(6200 / E)^2`` elsewhere (see the module
        docstring for the validity of this approximation).
    """
    e = _check_energy(energy_ev)
    return REFERENCE_DELTA_CONTRAST * (REFERENCE_ENERGY_EV / e) ** 2


def phase_per_voxel(energy_ev: float, voxel_size_m: float) -> float:
    """Phase shift of copper (vs SiO2) over one voxel length.

    Parameters
    ----------
    energy_ev : float
        Photon energy, eV.
    voxel_size_m : float
        Voxel edge, metres.

    Returns
    -------
    float
        ``2 pi / lambda * delta * voxel``, radians (0.0256 at 6.2 keV and 27.2 nm).
    """
    if not voxel_size_m > 0:
        raise ValueError(f"voxel_size_m must be positive, got {voxel_size_m}")
    return 2.0 * np.pi / wavelength_m(energy_ev) * copper_delta_contrast(energy_ev) * voxel_size_m


def ground_truth_volume(occupancy: np.ndarray, energy_ev: float, voxel_size_m: float) -> np.ndarray:
    """Per-voxel phase of a copper-occupancy volume.

    Parameters
    ----------
    occupancy : ndarray, [nz, ny, nx]
        Metal fraction per voxel in [0, 1] (any real or bool dtype).
    energy_ev : float
        Photon energy, eV.
    voxel_size_m : float
        Voxel edge, metres.

    Returns
    -------
    ndarray, float32, [nz, ny, nx]
        Phase per voxel, radians: ``occupancy * phase_per_voxel(energy, voxel)``;
        a line integral along a ray (in voxel units) gives the projection's phase.
    """
    occ = np.asarray(occupancy)
    return (occ.astype(np.float32) * np.float32(phase_per_voxel(energy_ev, voxel_size_m))).astype(
        np.float32
    )
