"""The fixed oblique projection P0 shared by both projector kernels.

Both kernels (:mod:`hpc_adept.lamino.projector`, torch; :mod:`hpc_adept.lamino.fused`,
Triton) compute ``M R_theta``: an in-plane rotation of every z slice, then ``M``, the
oblique Joseph projection of the rotated slices, the same for every angle. This module
builds what they share: the sample layout of the rotated slices (:class:`Layout`), the
nonzeros of ``M`` (:func:`oblique_entries`) and ``M^T`` in ELLPACK form
(:func:`ell_transpose`), as NumPy arrays; each kernel turns them into its own device
tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hpc_adept.lamino.geometry import Geometry

#: On CPU, ``grid_sample`` sees the z slices in batch entries of this many channels:
#: its CPU backward runs in parallel over the batch only, and few channels per entry
#: keep the gathered (and scattered) input planes in cache.
CPU_SLICES_PER_BATCH: int = 8

#: On CPU, z slices are processed in groups of this many (rounded to a multiple of
#: CPU_SLICES_PER_BATCH), so that a chunk holds many angles within its byte budget.
CPU_SLICES_PER_GROUP: int = 32


@dataclass(frozen=True)
class Layout:
    """How the rotated volume is sampled, grouped and laid out in memory.

    In-plane samples: rows y_j = j - y_center (j < n_rows, covering the volume's
    circumscribed circle) and detector columns ``col_start .. col_start + n_cols - 1``
    (the others see only zeros). The z slices, zero-padded to ``nz_pad``, are processed
    in groups of ``group`` slices (the last one may be shorter). Within a group,
    ``grid_sample`` sees them as [n_b, batch, ny, nx] (entries of ``batch`` slices, all
    with the same grid), so its rotated output [n_b, batch, n_rows, W] is the row-major
    matrix [n_slices * n_rows, W] with row ``k * n_rows + j``, and the scatter of the
    adjoint writes disjoint slices from each batch entry.
    """

    n_rows: int
    y_center: float
    col_start: int
    n_cols: int
    nz_pad: int
    batch: int
    group: int

    def groups(self) -> list[tuple[int, int]]:
        """Slice ranges (k0, k1) of the groups, covering 0 .. nz_pad."""
        return [(k0, min(k0 + self.group, self.nz_pad))
                for k0 in range(0, self.nz_pad, self.group)]


def sample_layout(geometry: Geometry, device: torch.device) -> Layout:
    """Choose the in-plane samples and the slice grouping for ``geometry`` on ``device``."""
    nz, ny, nx = geometry.volume_shape
    nu = geometry.detector_shape[1]
    # bilinear interpolation with zero padding reaches (n + 1) / 2 voxels from the center
    radius = math.hypot((nx + 1) / 2, (ny + 1) / 2)
    col_start = max(0, math.floor((nu - 1) / 2 - radius) + 1)
    col_stop = min(nu, math.ceil((nu - 1) / 2 + radius))
    n_rows = 2 * math.ceil(radius) + 1
    if n_rows % 2 != ny % 2:
        # same parity as ny: at theta = 0 the samples hit voxel centers exactly
        n_rows += 1
    if device.type == "cpu":
        batch = max(1, min(CPU_SLICES_PER_BATCH, nz))
        nz_pad = math.ceil(nz / batch) * batch
        group = min(nz_pad, max(1, CPU_SLICES_PER_GROUP // batch) * batch)
    else:  # GPUs parallelise over every output sample: all slices at once
        batch = group = nz_pad = nz
    return Layout(n_rows, (n_rows - 1) / 2, col_start, col_stop - col_start, nz_pad,
                   batch, group)


def _linear_taps(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights of linear interpolation at fractional positions ``pos``.

    Returns
    -------
    index : np.ndarray, int64, shape [2, *pos.shape]
        floor(pos) and floor(pos) + 1.
    weight : np.ndarray, float64, shape [2, *pos.shape]
        1 - frac and frac.
    """
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    return np.stack([lo, lo + 1]), np.stack([1.0 - frac, frac])


def oblique_entries(
    tilt_deg: float, nz: int, nv: int, layout: Layout, z_offset: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nonzero entries of the fixed oblique projection P0 (Joseph interpolation).

    P0 integrates the rotated volume along d0 = (0, -cos a, sin a): detector row r
    (offset v_r = r - (nv - 1) / 2) sees the line {v_r v0 + s d0}. On it,
    z = v_r / cos a - y tan a and y = v_r / sin a - z cot a. We step along the axis the
    ray is closer to (one sample per voxel plane, linear interpolation along the other
    axis, weight = path length per step), so every voxel plane is sampled once per ray.
    Samples outside the volume read zero. Slice k sits at height
    ``z = k - (nz - 1) / 2 + z_offset``; the taps of each slice do not depend on the other
    slices, so slabs of a volume project to parts that sum to the whole.

    Returns
    -------
    rows, cols, vals : np.ndarray, shape [nnz]
        int64 detector rows, int64 columns of the [nz * n_rows] rotated-chunk matrix
        (see :class:`Layout`), float64 weights (voxel units).
    """
    a = math.radians(90.0 - tilt_deg)
    sin_a, cos_a = math.sin(a), math.cos(a)
    v = (np.arange(nv, dtype=np.float64) - (nv - 1) / 2)[:, None]
    y = np.arange(layout.n_rows, dtype=np.float64) - layout.y_center
    z = np.arange(nz, dtype=np.float64) - (nz - 1) / 2 + z_offset
    if cos_a >= sin_a:  # step along y, interpolate between z slices: taps over k
        k, w = _linear_taps(v / cos_a - y * (sin_a / cos_a) - z_offset + (nz - 1) / 2)
        j = np.broadcast_to(np.arange(layout.n_rows), k.shape)
        w, valid = w / cos_a, (k >= 0) & (k < nz)
    else:  # step along z, interpolate between sample rows: taps over j
        j, w = _linear_taps(v / sin_a - z * (cos_a / sin_a) + layout.y_center)
        k = np.broadcast_to(np.arange(nz), j.shape)
        w, valid = w / sin_a, (j >= 0) & (j < layout.n_rows)
    r = np.broadcast_to(np.arange(nv)[:, None], k.shape)
    valid &= w != 0.0
    r, k, j, w = r[valid], k[valid], j[valid], w[valid]
    return r, k * layout.n_rows + j, w


def ell_transpose(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, n_cols: int
) -> tuple[np.ndarray, np.ndarray]:
    """ELLPACK of the transpose: per column, its rows and weights in slots 0 .. count - 1.

    Returns
    -------
    index : np.ndarray, int64, [n_cols, K]
        Row indices, padded with ``n_rows`` (points at an appended zero row).
    weight : np.ndarray, float64, [n_cols, K]
        Matching weights, padded with 0.
    """
    count = np.bincount(cols, minlength=n_cols)
    order = np.argsort(cols, kind="stable")
    sorted_cols = cols[order]
    slot = np.arange(cols.size) - (np.cumsum(count) - count)[sorted_cols]
    width = max(1, int(count.max(initial=0)))
    index = np.full((n_cols, width), n_rows, dtype=np.int64)
    weight = np.zeros((n_cols, width), dtype=np.float64)
    index[sorted_cols, slot] = rows[order]
    weight[sorted_cols, slot] = vals[order]
    return index, weight
