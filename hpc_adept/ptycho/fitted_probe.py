"""Initial probe for large, structured probes: a retrieved pupil with a defocus fitted by
short LSQ-ML trials on the scan (``ptycho.initial_probe: fitted``).

It sits above both the probe builders (:mod:`hpc_adept.ptycho.probe`) and the engine
(:mod:`hpc_adept.ptycho.lsqml`), which uses the builders: keeping it apart keeps the
import graph acyclic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hpc_adept.backend import get_array_module
from hpc_adept.config import PtychoConfig
from hpc_adept.ptycho.lsqml import reconstruct
from hpc_adept.ptycho.probe import (
    defocused_probe,
    mean_pattern_filled,
    mean_total_counts,
    retrieve_pupil,
    scale_probe,
)

__all__ = ["probe_from_scan"]

RELATIVE_DEFOCUS = (-0.5, -0.25, 0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0)
"""Default candidates of ``lambda z / r^2`` (both signs: the sign is not known)."""


def probe_from_scan(counts: Any, positions_px: Any, field_shape: tuple[int, int],
                    mask: Any | None = None, *, defocus: float | None = None,
                    relative_defocus: tuple[float, ...] = RELATIVE_DEFOCUS,
                    trial_epochs: int = 3, refine_steps: int = 5,
                    options: PtychoConfig | None = None, seed: int = 0,
                    dtype: str = "complex64") -> Any:
    """Retrieved pupil plus a fitted defocus.

    The mean pattern fixes the aperture (:func:`~hpc_adept.ptycho.probe.retrieve_pupil`)
    but not its defocus, and LSQ-ML only converges from a probe with about the right
    defocus (measured at 128^2 and 256^2 frames with N/2 probes, profiling/RESULTS.md).
    Unless ``defocus`` is given, each candidate ``lambda z = f * r^2`` (``r`` the aperture
    radius, ``f`` in ``relative_defocus``; ``f = 1 / F`` for a Fresnel number ``F``) runs
    ``trial_epochs`` LSQ-ML epochs on the scan, and the one with the lowest final Fourier
    error wins (the error is sharply lowest at the true defocus); ``refine_steps``
    bisections around it (two trials each) refine it.

    Parameters
    ----------
    counts : array, float, [n, N, N]
        Photon counts, DC at ``N // 2``.
    positions_px : array, float, [n, 2]
        Positions as for :func:`hpc_adept.ptycho.lsqml.reconstruct`.
    field_shape : (nv, nu)
        Projection grid the positions refer to.
    mask : array, bool, [N, N], optional
        True = bad pixel, DC at ``N // 2``.
    defocus : float, optional
        Known ``lambda z`` (pixel units); skips the trials.
    relative_defocus : tuple of float
        Candidate ``lambda z / r^2``, increasing; both signs (the sign is not known).
    trial_epochs : int
        LSQ-ML epochs per candidate.
    refine_steps : int
        Bisections of the grid's smallest spacing around the best candidate.
    options : PtychoConfig, optional
        Settings of the trials (their ``iterations`` is replaced by ``trial_epochs``,
        position correction is off).
    seed : int
        Batch seed of the trials (as for :func:`~hpc_adept.ptycho.lsqml.reconstruct`).
    dtype : {'complex64', 'complex128'}
        Working precision of the trials and complex dtype of the result.

    Returns
    -------
    array, complex, [N, N]
        Probe centered at ``(N - 1) / 2`` with ``sum |P|^2`` = the mean total counts.
    """
    make, scale = _probe_maker(counts, mask, dtype)
    if defocus is not None:
        return make(defocus)
    trial = replace(options or PtychoConfig(), iterations=trial_epochs,
                    position_correction=False)
    errors: dict[float, float] = {}

    def error_at(fraction: float) -> float:
        if fraction not in errors:
            result = reconstruct(counts, positions_px, field_shape, trial,
                                 probe=make(fraction * scale), mask=mask, seed=seed,
                                 dtype=dtype)
            errors[fraction] = float(result.fourier_error[-1])
        return errors[fraction]

    return make(_best_fraction(error_at, relative_defocus, refine_steps) * scale)


def _probe_maker(counts: Any, mask: Any | None, dtype: str
                 ) -> tuple[Callable[[float], Any], float]:
    """The scan's pupil as ``make(lambda_z) -> probe`` and the defocus unit ``r^2``.

    ``make`` returns the pupil propagated by ``lambda_z`` (pixel units), complex ``dtype``
    ``[N, N]``, scaled to the scan's mean total counts; ``r`` is the aperture radius in
    pixels (the support radius over its 1.15 margin).
    """
    xp = get_array_module(counts)
    valid = None if mask is None else 1.0 - xp.asarray(mask, dtype=xp.float64)
    mean_pattern, known = mean_pattern_filled(counts, valid)
    pupil, radius = retrieve_pupil(mean_pattern, known)
    total = mean_total_counts(counts, valid)

    def make(lz: float) -> Any:
        return scale_probe(defocused_probe(pupil, lz).astype(dtype), total)

    return make, (radius / 1.15) ** 2


def _best_fraction(error_at: Callable[[float], float], grid: tuple[float, ...],
                   refine_steps: int) -> float:
    """The candidate of ``grid`` with the lowest ``error_at``, refined by bisection.

    The error has a cusp at the true defocus (a parabola through three grid points lands
    ~7 % short at 256^2, enough to stall LSQ-ML): bisect around the best point instead.
    """
    fraction = min(grid, key=error_at)
    ordered = sorted(grid)
    step = min((b - a for a, b in zip(ordered[:-1], ordered[1:], strict=True)), default=0.125)
    for _ in range(refine_steps):
        step /= 2
        fraction = min((fraction - step, fraction, fraction + step), key=error_at)
    return fraction
