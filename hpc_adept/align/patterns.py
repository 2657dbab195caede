"""Shift patterns over the rotation angle: the harmonics of the angle, less the
translations that no alignment observes (:func:`hpc_adept.align.drift.rigid_drift_basis`).

Used by the bounds of :mod:`hpc_adept.align.precision` and by the smooth-pattern check of
:mod:`hpc_adept.align.matching`.
"""

from __future__ import annotations

import numpy as np
import torch


def harmonic_patterns(angles_deg: np.ndarray, lowest: int, highest: int,
                      gauge: np.ndarray | None = None) -> torch.Tensor:
    """Orthonormal shift patterns: the harmonics ``lowest`` to ``highest`` of the rotation
    angle (cosine and sine; harmonic 0 the constant), in the row and in the column, less
    the ``gauge`` patterns that no alignment observes. From harmonic 2 on they hold none
    of those translations; harmonics 0 and 1 hold them (six patterns, of which the global
    offset and the lateral rigid drift take four: pass
    :func:`hpc_adept.align.drift.rigid_drift_basis` as ``gauge`` to keep the other two).

    Parameters
    ----------
    angles_deg : ndarray, [n], degrees
    lowest, highest : int
        The harmonics, ``0 <= lowest <= highest``.
    gauge : ndarray, float, [n, 2, g], optional
        Shift patterns (pixels) to remove; the constant row and column shifts (the global
        offset) are removed with them.

    Returns
    -------
    torch.Tensor, float64, [m, n, 2]
        ``m = 4 (highest - lowest + 1)`` (two fewer for harmonic 0) less the dimension of
        the gauge patterns' span inside the harmonics'.

    Raises
    ------
    ValueError
        When the angles cannot tell the harmonics apart (e.g. ``n <= 2 highest`` evenly
        spaced angles, where the highest alias), the range is empty, or the gauge takes
        every pattern.
    """
    if not 0 <= lowest <= highest:
        raise ValueError(f"harmonic_patterns: harmonics {lowest} to {highest}: need "
                         f"0 <= lowest <= highest")
    theta = np.deg2rad(np.asarray(angles_deg, np.float64))
    n = len(theta)
    columns = np.stack([_pattern(wave, component, n) for component in (0, 1)
                        for k in range(lowest, highest + 1)
                        for wave in ((np.ones(n),) if k == 0
                                     else (np.cos(k * theta), np.sin(k * theta)))], axis=1)
    singular = np.linalg.svd(columns, compute_uv=False)
    if singular[-1] <= 1e-8 * singular[0]:
        raise ValueError(f"harmonic_patterns: {n} angles do not tell the harmonics "
                         f"{lowest} to {highest} apart")
    q, _ = np.linalg.qr(columns)
    if gauge is not None:
        q = _without(q, np.concatenate([np.asarray(gauge, np.float64).reshape(2 * n, -1),
                                        _pattern(np.ones(n), 0, n)[:, None],
                                        _pattern(np.ones(n), 1, n)[:, None]], axis=1))
    return torch.as_tensor(np.ascontiguousarray(q.T).reshape(-1, n, 2))


def _pattern(wave: np.ndarray, component: int, n: int) -> np.ndarray:
    """``wave`` [n] in the row (0) or column (1) shifts: a flat [2 n] pattern."""
    pattern = np.zeros((n, 2))
    pattern[:, component] = wave
    return pattern.reshape(-1)


def _without(q: np.ndarray, gauge: np.ndarray) -> np.ndarray:
    """Orthonormal basis [N, m'] of span(``q``) (orthonormal [N, m]) projected onto the
    orthogonal complement of span(``gauge``) [N, g]: what of the patterns the gauge
    cannot mimic (on uneven angles the harmonics and the gauge overlap only in part)."""
    left, strength, _ = np.linalg.svd(gauge, full_matrices=False)
    g = left[:, strength > 1e-8 * strength.max()]  # its span (p_z and the offset coincide)
    rest = q - g @ (g.T @ q)
    basis, singular, _ = np.linalg.svd(rest, full_matrices=False)
    # q is orthonormal: a direction whose part off the gauge is below 1e-6 of it is the
    # gauge's (rounding, once normalised, would be all that is left of it)
    keep = basis[:, singular > 1e-6]
    if keep.shape[1] == 0:
        raise ValueError("harmonic_patterns: the gauge takes every pattern")
    return keep
