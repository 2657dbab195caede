"""A procedural Manhattan IC phantom (for tests and quick demos).

The volume holds ``n_layers`` metal layers stacked along z. Layer 0 carries wires
along x, layer 1 along y, and so on alternately; every layer has straight wires
of a few voxels' width on parallel tracks, broken into runs of random lengths.
Where a wire of one layer crosses a wire of the next layer, a square via (the
narrower wire's width) fills the dielectric gap between them with probability
``via_probability``. Everything is drawn from ``numpy.random.default_rng(seed)``,
so a seed gives the same volume on every platform.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class _Track:
    """A wire track: centre index across the wires, width in voxels."""

    centre: int
    width: int


def _layer_bands(nz: int, n_layers: int) -> list[tuple[int, int]]:
    """Half-open z ranges ``[z0, z1)`` of the metal of each layer.

    The stack starts 10 % above the bottom and ends 5 % below the top; each layer
    is about half of its pitch thick, leaving the rest as a via gap.
    """
    bottom = int(round(0.10 * nz))
    top = nz - int(round(0.05 * nz))
    pitch = (top - bottom) / n_layers
    thick = max(1, int(round(0.5 * pitch)))
    bands = []
    for k in range(n_layers):
        z0 = bottom + int(round(k * pitch))
        bands.append((z0, min(nz, z0 + thick)))
    return bands


def _tracks(rng: np.random.Generator, extent: int, w_lo: int, w_hi: int) -> list[_Track]:
    """Parallel tracks across an axis of length ``extent`` with random widths and gaps."""
    tracks = []
    pos = int(rng.integers(0, max(1, w_hi)))
    while True:
        w = int(rng.integers(w_lo, w_hi + 1))
        if pos + w > extent:
            return tracks
        tracks.append(_Track(pos + w // 2, w))
        pos += w + max(1, w_lo) + int(rng.integers(0, 2 * w_hi + 1))


def _runs(rng: np.random.Generator, length: int, fill: float) -> list[tuple[int, int]]:
    """Random ``[a, b)`` wire runs along a track, covering about ``fill`` of it."""
    runs = []
    mean_run = max(2.0, 0.3 * length)
    mean_gap = mean_run * (1.0 - fill) / max(fill, 1e-3)
    pos = int(rng.integers(0, max(1, int(mean_gap) + 1)))
    while pos < length:
        run = max(2, int(rng.exponential(mean_run)))
        runs.append((pos, min(length, pos + run)))
        pos += run + max(1, int(rng.exponential(mean_gap)))
    return runs


def _layer_map(
    rng: np.random.Generator,
    ny: int,
    nx: int,
    along_x: bool,
    widths: tuple[int, int],
    fill: float,
) -> tuple[np.ndarray, list[_Track]]:
    """2D wire map ``[ny, nx]`` bool of one layer and its tracks."""
    mask = np.zeros((ny, nx), bool)
    across, length = (ny, nx) if along_x else (nx, ny)
    tracks = _tracks(rng, across, *widths)
    for t in tracks:
        lo = t.centre - t.width // 2
        for a, b in _runs(rng, length, fill):
            if along_x:
                mask[lo : lo + t.width, a:b] = True
            else:
                mask[a:b, lo : lo + t.width] = True
    return mask, tracks


def _width_range(voxel_size_m: float, wire_width_nm: tuple[float, float]) -> tuple[int, int]:
    d_nm = voxel_size_m * 1e9
    lo = max(1, int(round(wire_width_nm[0] / d_nm)))
    hi = max(lo, int(round(wire_width_nm[1] / d_nm)))
    return lo, hi


def procedural_phantom(
    shape: Sequence[int],
    voxel_size_m: float = 27.2e-9,
    seed: int = 0,
    *,
    n_layers: int | None = None,
    wire_width_nm: tuple[float, float] = (70.0, 140.0),
    fill: float = 0.5,
    via_probability: float = 0.5,
) -> np.ndarray:
    """Procedural Manhattan multilayer interconnect.

    Parameters
    ----------
    shape : (nz, ny, nx)
        Volume shape (z = sample normal).
    voxel_size_m : float
        Voxel edge, metres; sets the wire widths in voxels.
    seed : int
        Random seed; the same seed gives the same volume.
    n_layers : int, optional
        Metal layers; default ``clip(nz // 8, 1, 6)``.
    wire_width_nm : (min, max)
        Wire width range, nm (at least one voxel).
    fill : float
        Approximate fraction of each track covered by wire, in (0, 1].
    via_probability : float
        Probability of a via at each crossing of wires of adjacent layers.

    Returns
    -------
    ndarray, float32, [nz, ny, nx]
        Occupancy: 1 for metal, 0 for dielectric.
    """
    nz, ny, nx = (int(n) for n in shape)
    if min(nz, ny, nx) < 1:
        raise ValueError(f"shape must be positive, got {tuple(shape)}")
    if n_layers is None:
        n_layers = int(np.clip(nz // 8, 1, 6))
    if n_layers < 1 or n_layers > nz:
        raise ValueError(f"n_layers must be in [1, nz={nz}], got {n_layers}")
    rng = np.random.default_rng(seed)
    widths = _width_range(voxel_size_m, wire_width_nm)
    bands = _layer_bands(nz, n_layers)
    vol = np.zeros((nz, ny, nx), bool)
    layers = []
    for k, (z0, z1) in enumerate(bands):
        mask, tracks = _layer_map(rng, ny, nx, k % 2 == 0, widths, fill)
        vol[z0:z1] |= mask
        layers.append((mask, tracks))
    for k in range(n_layers - 1):
        _add_vias(
            rng,
            vol,
            bands[k][1],
            bands[k + 1][0],
            layers[k],
            layers[k + 1],
            k % 2 == 0,
            via_probability,
        )
    return vol.astype(np.float32)


def _add_vias(
    rng: np.random.Generator,
    vol: np.ndarray,
    z0: int,
    z1: int,
    lower: tuple[np.ndarray, list[_Track]],
    upper: tuple[np.ndarray, list[_Track]],
    lower_along_x: bool,
    probability: float,
) -> None:
    """Square vias in ``vol[z0:z1]`` at crossings of wires of two adjacent layers."""
    (mask_lo, tr_lo), (mask_hi, tr_hi) = lower, upper
    if z1 <= z0 or not tr_lo or not tr_hi:
        return
    h_tracks, v_tracks = (tr_lo, tr_hi) if lower_along_x else (tr_hi, tr_lo)
    ys = np.array([t.centre for t in h_tracks])
    xs = np.array([t.centre for t in v_tracks])
    both = mask_lo[np.ix_(ys, xs)] & mask_hi[np.ix_(ys, xs)]
    chosen = both & (rng.random(both.shape) < probability)
    ny, nx = mask_lo.shape
    for a, b in zip(*np.nonzero(chosen), strict=True):
        w = min(h_tracks[a].width, v_tracks[b].width)
        y0 = max(0, ys[a] - w // 2)
        x0 = max(0, xs[b] - w // 2)
        vol[z0:z1, y0 : min(ny, y0 + w), x0 : min(nx, x0 + w)] = True
