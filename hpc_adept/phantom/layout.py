"""Rasterise a parsed DEF/LEF layout into a 3D metal-occupancy volume.

Geometry contract (DESIGN.md, ``simulate.crop_origin_um``): voxel ``[k, j, i]`` of
a volume of voxel size ``d`` covers ``x in [x0 + i d, x0 + (i+1) d)``,
``y in [y0 + j d, y0 + (j+1) d)`` and heights ``[k d, (k+1) d)`` above the
substrate, where ``(x0, y0)`` is the crop origin in DEF coordinates (um).

Vertical extent of the metal: a routing layer occupies heights
``[HEIGHT, HEIGHT + THICKNESS]`` (LEF); a cut layer (via) fills the dielectric gap
from the top of the routing layer below it to the bottom of the one above it.

Anti-aliasing: each voxel is split into ``s^3`` sub-voxels; a sub-voxel is metal
when its centre lies inside any box (union, so overlapping boxes are not counted
twice), and a voxel's occupancy is the fraction of its metal sub-voxels. The
supersampled grid is built one z slab at a time, so memory stays bounded by
``max_slab_bytes`` plus the float32 output.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpc_adept.phantom.defparse import Layout, read_def
from hpc_adept.phantom.lef import LayoutError, Technology, read_lef

DEFAULT_MAX_SLAB_BYTES = 32 * 2**20
"""Default memory bound (bytes) for the boolean supersampled slab."""


def layer_z_ranges(tech: Technology) -> dict[str, tuple[float, float]]:
    """Height range of every layer's metal above the substrate.

    Parameters
    ----------
    tech : Technology

    Returns
    -------
    dict of str to (z_bottom_um, z_top_um)
        Routing layers: ``(HEIGHT, HEIGHT + THICKNESS)``; cut layers: from the top of
        the routing layer below to the bottom of the routing layer above. Layers
        whose heights are not known (missing HEIGHT/THICKNESS, no neighbour) are
        omitted.
    """
    out: dict[str, tuple[float, float]] = {}
    for name, layer in tech.routing.items():
        if layer.height_um is not None and layer.thickness_um is not None:
            out[name] = (layer.height_um, layer.height_um + layer.thickness_um)
    for name, cut in tech.cuts.items():
        if cut.below in out and cut.above in out:
            out[name] = (out[cut.below][1], out[cut.above][0])
    return out


def layout_boxes_3d(layout: Layout, tech: Technology) -> np.ndarray:
    """All boxes of a layout as 3D boxes.

    Parameters
    ----------
    layout : Layout
    tech : Technology

    Returns
    -------
    ndarray, float64, [n, 6]
        ``(x0, y0, z0, x1, y1, z1)`` in um (x, y in DEF coordinates, z above the
        substrate).

    Raises
    ------
    LayoutError
        If a layer holding boxes has no known height range (a DataError naming the LEF).
    """
    zr = layer_z_ranges(tech)
    parts = []
    for layer, boxes in layout.boxes.items():
        if len(boxes) == 0:
            continue
        if layer not in zr:
            raise LayoutError(f"{tech.path}: layer {layer} (used in {layout.path}) has no "
                              f"HEIGHT/THICKNESS")
        z0, z1 = zr[layer]
        part = np.empty((len(boxes), 6))
        part[:, [0, 1, 3, 4]] = boxes
        part[:, 2], part[:, 5] = z0, z1
        parts.append(part)
    return np.concatenate(parts) if parts else np.zeros((0, 6))


def layout_boxes_voxels(layout: Layout, tech: Technology, origin_um: Sequence[float],
                        voxel_size_m: float) -> np.ndarray:
    """:func:`layout_boxes_3d` in the voxel units of a crop whose voxel ``[:, 0, 0]`` starts
    at ``origin_um`` (DEF coordinates, um), ``[n, 6]`` float64 ``(x0, y0, z0, x1, y1, z1)``."""
    d_um = voxel_size_m * 1e6
    boxes = layout_boxes_3d(layout, tech)
    vox = np.empty_like(boxes)
    x0, y0 = float(origin_um[0]), float(origin_um[1])
    vox[:, [0, 3]] = (boxes[:, [0, 3]] - x0) / d_um
    vox[:, [1, 4]] = (boxes[:, [1, 4]] - y0) / d_um
    vox[:, [2, 5]] = boxes[:, [2, 5]] / d_um
    return vox


def _subvoxel_ranges(boxes_vox: np.ndarray, shape: Sequence[int], s: int) -> np.ndarray:
    """Sub-voxel index ranges covered by boxes (centre-inside rule), clipped.

    Parameters
    ----------
    boxes_vox : ndarray, float64, [n, 6]
        ``(x0, y0, z0, x1, y1, z1)`` in voxel units.
    shape : (nz, ny, nx)
    s : int
        Supersampling factor.

    Returns
    -------
    ndarray, int64, [m, 6]
        ``(ilo, jlo, klo, ihi, jhi, khi)`` half-open sub-voxel ranges of the boxes
        that cover at least one sub-voxel of the volume.
    """
    nz, ny, nx = shape
    limits = np.array([nx, ny, nz, nx, ny, nz]) * s
    # sub-voxel a has its centre at (a + 0.5) / s; covered when lo <= centre < hi
    idx = np.ceil(boxes_vox * s - 0.5).astype(np.int64)
    idx = np.clip(idx, 0, limits)
    keep = np.all(idx[:, 3:] > idx[:, :3], axis=1)
    return idx[keep]


def _downsample(hi: np.ndarray, s: int) -> np.ndarray:
    """Fraction of True sub-voxels per voxel: bool ``[a*s, b*s, c*s]`` -> float32 ``[a, b, c]``."""
    a, b, c = (n // s for n in hi.shape)
    counts = hi.view(np.uint8).reshape(a * s * b * s * c, s).sum(axis=1, dtype=np.uint16)
    counts = counts.reshape(a * s * b, s, c).sum(axis=1, dtype=np.uint16)
    counts = counts.reshape(a, s, b * c).sum(axis=1, dtype=np.uint32)
    return (counts.reshape(a, b, c) * np.float32(1.0 / s**3)).astype(np.float32)


def rasterise_boxes(
    boxes_vox: np.ndarray,
    shape: Sequence[int],
    supersample: int = 4,
    max_slab_bytes: int = DEFAULT_MAX_SLAB_BYTES,
) -> np.ndarray:
    """Occupancy fraction of the union of axis-aligned boxes.

    Parameters
    ----------
    boxes_vox : ndarray, float, [n, 6]
        ``(x0, y0, z0, x1, y1, z1)`` in voxel units: voxel ``[k, j, i]`` is the cube
        ``[i, i+1) x [j, j+1) x [k, k+1)``.
    shape : (nz, ny, nx)
    supersample : int
        Sub-voxels per voxel and axis, ``s >= 1``.
    max_slab_bytes : int
        Bound on the boolean supersampled slab (at least one voxel layer is used).

    Returns
    -------
    ndarray, float32, [nz, ny, nx]
        Fraction of each voxel's ``s^3`` sub-voxel centres inside any box, in [0, 1].
    """
    s = int(supersample)
    if s < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    nz, ny, nx = (int(n) for n in shape)
    out = np.zeros((nz, ny, nx), np.float32)
    idx = _subvoxel_ranges(np.asarray(boxes_vox, np.float64).reshape(-1, 6), (nz, ny, nx), s)
    if len(idx) == 0 or out.size == 0:
        return out
    layer_bytes = s * (ny * s) * (nx * s)
    slab = int(max(1, min(nz, max_slab_bytes // layer_bytes)))
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        sel = idx[(idx[:, 2] < z1 * s) & (idx[:, 5] > z0 * s)]
        if len(sel) == 0:
            continue
        hi = np.zeros(((z1 - z0) * s, ny * s, nx * s), bool)
        sel = sel.copy()
        sel[:, [2, 5]] = np.clip(sel[:, [2, 5]] - z0 * s, 0, (z1 - z0) * s)
        for i0, j0, k0, i1, j1, k1 in sel.tolist():
            hi[k0:k1, j0:j1, i0:i1] = True
        out[z0:z1] = _downsample(hi, s)
    return out


def rasterise_layout(
    layout: Layout,
    tech: Technology,
    origin_um: Sequence[float],
    shape: Sequence[int],
    voxel_size_m: float,
    supersample: int = 4,
    max_slab_bytes: int = DEFAULT_MAX_SLAB_BYTES,
) -> np.ndarray:
    """Metal occupancy of a crop of a layout.

    Parameters
    ----------
    layout : Layout
        From :func:`hpc_adept.phantom.defparse.read_def`.
    tech : Technology
        From :func:`hpc_adept.phantom.lef.read_lef` (layer heights).
    origin_um : (x0, y0)
        DEF coordinates (um) of the corner of voxel ``[:, 0, 0]``.
    shape : (nz, ny, nx)
    voxel_size_m : float
        Cubic voxel edge, metres.
    supersample : int
        Sub-voxels per voxel and axis for anti-aliasing.
    max_slab_bytes : int
        Memory bound of the supersampled working slab.

    Returns
    -------
    ndarray, float32, [nz, ny, nx]
        Metal occupancy fraction in [0, 1]; voxel ``[k, j, i]`` covers
        ``x in [x0 + i d, x0 + (i+1) d)``, ``y in [y0 + j d, y0 + (j+1) d)``, heights
        ``[k d, (k+1) d)`` above the substrate.
    """
    if voxel_size_m <= 0:
        raise ValueError(f"voxel_size_m must be positive, got {voxel_size_m}")
    if len(shape) != 3 or len(origin_um) != 2:
        raise ValueError("shape must be (nz, ny, nx) and origin_um (x, y)")
    vox = layout_boxes_voxels(layout, tech, origin_um, voxel_size_m)
    return rasterise_boxes(vox, shape, supersample, max_slab_bytes)


@functools.lru_cache(maxsize=4)
def _load_cached(def_path: str, lef_path: str, _stamp: tuple) -> tuple[Layout, Technology]:
    tech = read_lef(lef_path)
    return read_def(def_path, tech), tech


def load_layout(def_path: str | Path, lef_path: str | Path) -> tuple[Layout, Technology]:
    """Read a DEF and its technology LEF (cached while the files are unchanged).

    Parameters
    ----------
    def_path, lef_path : str or Path

    Returns
    -------
    (Layout, Technology)

    Raises
    ------
    LayoutError
        A file is unreadable or malformed (``"<file>:<line>: ..."``).
    """
    stamp = []
    for p in (def_path, lef_path):
        try:
            st = os.stat(p)
        except OSError as exc:
            raise LayoutError(f"{p}: cannot read file: {exc.strerror}") from None
        stamp.append((st.st_mtime_ns, st.st_size))
    return _load_cached(str(def_path), str(lef_path), tuple(stamp))


def crop_problem(layout: Layout, tech: Technology, origin_um: Sequence[float],
                 shape: Sequence[int], voxel_size_m: float) -> str | None:
    """Why a crop of ``layout`` would be an empty phantom, or None when it holds metal.

    Checks the crop's box ``[x0, x0 + nx d) x [y0, y0 + ny d) x [0, nz d)`` against the
    die area and the layout's boxes (no rasterisation: cheap enough for the plan phase).

    Raises
    ------
    LayoutError
        A layer holding boxes has no height range in the LEF.
    """
    nz, ny, nx = (int(n) for n in shape)
    d_um = voxel_size_m * 1e6
    x0, y0 = float(origin_um[0]), float(origin_um[1])
    crop = (x0, y0, 0.0, x0 + nx * d_um, y0 + ny * d_um, nz * d_um)
    where = (f"the crop x {crop[0]:g}..{crop[3]:g} um, y {crop[1]:g}..{crop[4]:g} um")
    dx0, dy0, dx1, dy1 = layout.die_area_um
    if crop[3] <= dx0 or crop[0] >= dx1 or crop[4] <= dy0 or crop[1] >= dy1:
        return (f"{where} lies outside the die area x {dx0:g}..{dx1:g} um, "
                f"y {dy0:g}..{dy1:g} um of {layout.path}")
    boxes = layout_boxes_3d(layout, tech)
    lo, hi = np.asarray(crop[:3]), np.asarray(crop[3:])
    inside = np.all((boxes[:, 3:] > lo) & (boxes[:, :3] < hi), axis=1)
    if not inside.any():
        return f"{where}, heights 0..{crop[5]:g} um holds no metal of {layout.path}"
    return None


def centred_crop_origin(layout: Layout, shape: Sequence[int], voxel_size_m: float) -> tuple:
    """Crop origin (um) that centres a ``shape`` crop on the die.

    Returns
    -------
    (x0_um, y0_um)
    """
    x0, y0, x1, y1 = layout.die_area_um
    d_um = voxel_size_m * 1e6
    return (0.5 * (x0 + x1) - 0.5 * shape[2] * d_um, 0.5 * (y0 + y1) - 0.5 * shape[1] * d_um)


def _layout_labels(layout: Layout, tech: Technology) -> tuple[np.ndarray, np.ndarray]:
    """``[n]`` net ids and via instance ids of the boxes of :func:`layout_boxes_3d`, in its
    order (zeros where the layout carries no labels)."""
    nets, vias = [], []
    for layer, boxes in layout.boxes.items():
        if len(boxes) == 0:
            continue
        zeros = np.zeros(len(boxes), np.int32)
        nets.append(layout.nets.get(layer, zeros))
        vias.append(layout.vias.get(layer, zeros))
    if not nets:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    return np.concatenate(nets), np.concatenate(vias)


def paint_labels(boxes_vox: np.ndarray, labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """int32 ``[nz, ny, nx]``: the label of the box holding each voxel's centre (0: none;
    where boxes overlap, the later one).

    Parameters
    ----------
    boxes_vox : ndarray, float, [n, 6]
        ``(x0, y0, z0, x1, y1, z1)`` in voxel units (as :func:`rasterise_boxes`).
    labels : ndarray, int, [n]
        Label of each box; boxes labelled 0 are skipped.
    """
    out = np.zeros(tuple(int(n) for n in shape), np.int32)
    nz, ny, nx = out.shape
    idx = np.ceil(np.asarray(boxes_vox, np.float64).reshape(-1, 6) - 0.5).astype(np.int64)
    idx = np.clip(idx, 0, np.array([nx, ny, nz, nx, ny, nz]))
    keep = np.all(idx[:, 3:] > idx[:, :3], axis=1) & (np.asarray(labels) > 0)
    for (i0, j0, k0, i1, j1, k1), label in zip(idx[keep].tolist(),
                                               np.asarray(labels)[keep].tolist(), strict=True):
        out[k0:k1, j0:j1, i0:i1] = label
    return out


def rasterise_circuit(layout: Layout, tech: Technology, origin_um: Sequence[float],
                      shape: Sequence[int], voxel_size_m: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The circuit truth of a crop (same voxels as :func:`rasterise_layout`).

    Returns
    -------
    nets : ndarray, int32, [nz, ny, nx]
        Net id (``layout.net_names[id - 1]``) of the metal at each voxel centre, 0 where
        there is none.
    vias : ndarray, int32, [nz, ny, nx]
        Via instance id of the cut metal at each voxel centre, 0 elsewhere.
    """
    vox = layout_boxes_voxels(layout, tech, origin_um, voxel_size_m)
    net_ids, via_ids = _layout_labels(layout, tech)
    return paint_labels(vox, net_ids, shape), paint_labels(vox, via_ids, shape)


def layer_slices(tech: Technology, voxel_size_m: float, nz: int
                 ) -> dict[str, tuple[int, int]]:
    """Every layer's slices ``(start, stop)`` in a volume of ``nz`` slices: the voxels whose
    centre height lies in the layer's range (:func:`layer_z_ranges`); layers outside the
    volume are left out."""
    d_um = voxel_size_m * 1e6
    out = {}
    for name, (z0, z1) in layer_z_ranges(tech).items():
        k0 = int(np.clip(np.ceil(z0 / d_um - 0.5), 0, nz))
        k1 = int(np.clip(np.ceil(z1 / d_um - 0.5), 0, nz))
        if k1 > k0:
            out[name] = (k0, k1)
    return out
