"""Misaligned projections of a region inside an extended chip, for the alignment tests and
``profiling/align_extended.py`` (issue 18).

The chip is a slab far wider than the region: its projections through the region's
detector window also hold the material around the region (out to
:func:`hpc_adept.lamino.region.window_reach_px`). The data are built as a measurement
would be: the widened slab is projected (float64, ``torch`` kernel) onto the window grown
by a few pixels, each projection is displaced by a known shift (content enters from
outside the window, nothing wraps around), cut to the window, and given 2 % Gaussian noise
and, optionally, the unknown phase offset and linear ramp that ptychography leaves without
a vacuum reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hpc_adept.align import fourier_shift, remove_rigid_drift
from hpc_adept.lamino import Geometry, LaminoOperator
from hpc_adept.lamino.region import extended_shape, lateral_margin_px
from hpc_adept.phantom import make_phantom
from hpc_adept.stages.simulate import auto_projection_shape

from .conftest import IC_DEF, IC_LEF

TILT = 61.0
VOXEL_M = 2.72e-8
PHASE_PER_VOXEL = 0.026  # rad per voxel of metal (as the other alignment tests)
# the layout's first slice full of metal1 at VOXEL_M (metal1 starts at 0.37 um, 13.6
# slices; slices 14-37 hold metal1-metal3 around (40, 28) um): small regions start here
METAL_SLICE = 14


@dataclass(frozen=True)
class Sample:
    """One misaligned data set.

    Attributes
    ----------
    measured : torch.Tensor, float32, [n, nv, nu]
        Shifted projections of the detector window (phase, rad) with noise (and planes).
    angles : ndarray, [n], degrees
    shifts : ndarray, float64, [n, 2], pixels (row, col): ``measured = ideal(r - s)``
    region : (nz, ny, nx)
        The region the alignment reconstructs (``align.volume_shape``).
    window : (nv, nu)
        The region's detector window.
    planes : ndarray, float64, [n, 3]
        Offset (rad) and row / column slopes (rad per pixel, about the window centre).
    """

    measured: torch.Tensor
    angles: np.ndarray
    shifts: np.ndarray
    region: tuple[int, int, int]
    window: tuple[int, int]
    planes: np.ndarray


def phantom(shape: tuple[int, int, int], kind: str, seed: int,
            corner_um: tuple[float, float], bottom_slice: int = 0) -> np.ndarray:
    """Phase per voxel [nz, ny, nx] float64: the real layout with its corner at
    ``corner_um`` and its first slice ``bottom_slice`` slices above the substrate
    (procedural with ``seed`` when the layout is absent or ``kind`` says so)."""
    if kind == "layout" and IC_DEF.is_file() and IC_LEF.is_file():
        tall = (shape[0] + bottom_slice, shape[1], shape[2])
        occ = make_phantom("layout", tall, VOXEL_M, layout_def=IC_DEF, layout_lef=IC_LEF,
                           crop_origin_um=corner_um)[bottom_slice:]
    else:
        occ = make_phantom("procedural", shape, VOXEL_M, seed=seed)
    return occ.astype(np.float64) * PHASE_PER_VOXEL


def _planes(n: int, window: tuple[int, int], amplitude_rad: float,
            rng: np.random.Generator) -> np.ndarray:
    """Offsets up to +-amplitude and slopes that reach +-amplitude at the window edge."""
    planes = rng.uniform(-amplitude_rad, amplitude_rad, (n, 3))
    planes[:, 1] /= window[0] / 2.0
    planes[:, 2] /= window[1] / 2.0
    return planes


def plane_images(planes: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """``c0 + c1 r + c2 c`` [n, nv, nu] with ``(r, c)`` about the window centre."""
    r = np.arange(window[0]) - (window[0] - 1) / 2.0
    c = np.arange(window[1]) - (window[1] - 1) / 2.0
    return (planes[:, 0, None, None] + planes[:, 1, None, None] * r[None, :, None]
            + planes[:, 2, None, None] * c[None, None, :])


def extended_sample(region: tuple[int, int, int], n_angles: int, seed: int, *,
                    extended: bool = True, kind: str = "layout",
                    corner_um: tuple[float, float] = (40.0, 28.0), shift_sigma_px: float = 2.0,
                    noise: float = 0.02, plane_rad: float = 0.0,
                    bottom_slice: int = 0) -> Sample:
    """Misaligned projections of ``region`` inside a chip (``extended``) or alone.

    Parameters
    ----------
    region : (nz, ny, nx), voxels
    n_angles : int
        Angles evenly over 360 degrees.
    seed : int
        Shifts, noise, planes (and the procedural phantom).
    extended : bool
        The chip around the region (else the region floats in vacuum).
    kind : {'layout', 'procedural'}
    corner_um : (x, y), um
        Layout coordinates of the region's corner voxel.
    shift_sigma_px : float, pixels
        Standard deviation of the shifts (clipped at 3 sigma).
    noise : float
        Gaussian noise, relative to the RMS of the projections.
    plane_rad : float, rad
        Largest per-projection offset and ramp (0: none).
    bottom_slice : int
        Slices of the layout's stack below the region (0: it starts at the substrate,
        whose lowest 0.33 um hold no metal: a region of 12 slices there is empty;
        :data:`METAL_SLICE` starts one at metal1).
    """
    rng = np.random.default_rng(seed)
    window = auto_projection_shape(region, TILT)
    shifts = np.clip(rng.normal(0.0, shift_sigma_px, (n_angles, 2)),
                     -3 * shift_sigma_px, 3 * shift_sigma_px)
    pad = int(math.ceil(np.abs(shifts).max())) + 2
    grown = (window[0] + 2 * pad, window[1] + 2 * pad)
    margin = lateral_margin_px(region, grown, TILT) if extended else 0
    wide = extended_shape(region, margin)
    corner = (corner_um[0] - margin * VOXEL_M * 1e6, corner_um[1] - margin * VOXEL_M * 1e6)
    volume = phantom(wide, kind, seed, corner, bottom_slice)
    angles = np.arange(n_angles) * 360.0 / n_angles
    op = LaminoOperator(Geometry(angles, TILT, wide, grown), kernel="torch")
    with torch.no_grad():
        ideal = op.forward(torch.from_numpy(volume))
        moved = fourier_shift(ideal, torch.from_numpy(shifts))
    measured = moved[:, pad:pad + window[0], pad:pad + window[1]].numpy()
    rms = float(np.sqrt(np.mean(measured ** 2)))
    measured = measured + noise * rms * rng.standard_normal(measured.shape)
    planes = _planes(n_angles, window, plane_rad, rng) if plane_rad else np.zeros((n_angles, 3))
    measured = measured + plane_images(planes, window)
    return Sample(torch.from_numpy(measured.astype(np.float32)), angles, shifts, region, window,
                  planes)


def shift_error(estimate: np.ndarray, truth: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """The shift error [n, 2] px with the global offset and the rigid drift removed (the
    translations of the object that no alignment can observe)."""
    err = estimate - truth
    for _ in range(3):  # alternate: the drift basis holds a row offset, the mean a column one
        err = err - err.mean(axis=0)
        err, _ = remove_rigid_drift(err, angles, TILT)
    return err


def shift_error_px(estimate: np.ndarray, truth: np.ndarray, angles: np.ndarray) -> float:
    """RMS (px) of :func:`shift_error`."""
    return float(np.sqrt(np.mean(shift_error(estimate, truth, angles) ** 2)))
