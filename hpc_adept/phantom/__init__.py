"""IC phantoms: a procedural Manhattan interconnect, and crops of a real DEF/LEF layout.

Public API
----------
``read_lef(path) -> Technology``; ``read_def(path, tech) -> Layout``;
``rasterise_layout(layout, tech, origin_um, shape, voxel_size_m, supersample=4)``;
``layer_z_ranges(tech)``; ``procedural_phantom(shape, voxel_size_m, seed)``;
``make_phantom(kind, shape, voxel_size_m, ...)``; and the optical constants in
:mod:`hpc_adept.phantom.materials`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpc_adept.phantom.defparse import (
    KIND_SHAPE,
    KIND_SPECIAL_VIA,
    KIND_SPECIAL_WIRE,
    KIND_VIA,
    KIND_WIRE,
    Layout,
    read_def,
)
from hpc_adept.phantom.layout import (
    centred_crop_origin,
    crop_problem,
    layer_z_ranges,
    layout_boxes_3d,
    load_layout,
    rasterise_boxes,
    rasterise_layout,
)
from hpc_adept.phantom.lef import (
    CutLayer,
    LayoutError,
    RoutingLayer,
    Technology,
    ViaDef,
    read_lef,
)
from hpc_adept.phantom.materials import (
    copper_delta_contrast,
    ground_truth_volume,
    phase_per_voxel,
    wavelength_m,
)
from hpc_adept.phantom.procedural import procedural_phantom

__all__ = [
    "KIND_SHAPE",
    "KIND_SPECIAL_VIA",
    "KIND_SPECIAL_WIRE",
    "KIND_VIA",
    "KIND_WIRE",
    "CutLayer",
    "Layout",
    "LayoutError",
    "RoutingLayer",
    "Technology",
    "ViaDef",
    "centred_crop_origin",
    "copper_delta_contrast",
    "crop_problem",
    "ground_truth_volume",
    "layer_z_ranges",
    "layout_boxes_3d",
    "load_layout",
    "make_phantom",
    "phase_per_voxel",
    "procedural_phantom",
    "rasterise_boxes",
    "rasterise_layout",
    "read_def",
    "read_lef",
    "wavelength_m",
]


def make_phantom(
    kind: str,
    shape: Sequence[int],
    voxel_size_m: float,
    *,
    layout_def: str | Path | None = None,
    layout_lef: str | Path | None = None,
    crop_origin_um: Sequence[float] | None = None,
    seed: int = 0,
    supersample: int = 4,
) -> np.ndarray:
    """Metal occupancy of a phantom.

    Parameters
    ----------
    kind : {"layout", "procedural"}
        ``layout``: a crop of the DEF/LEF layout; ``procedural``: see
        :func:`procedural_phantom`.
    shape : (nz, ny, nx)
    voxel_size_m : float
        Voxel edge, metres.
    layout_def, layout_lef : str or Path
        Required for ``layout``.
    crop_origin_um : (x, y), optional
        DEF coordinates (um) of the corner of voxel ``[:, 0, 0]``; default: the
        crop is centred on the die.
    seed : int
        Seed of the procedural phantom (ignored for ``layout``).
    supersample : int
        Anti-aliasing factor of the layout rasteriser.

    Returns
    -------
    ndarray, float32, [nz, ny, nx]
        Metal occupancy fraction in [0, 1].

    Raises
    ------
    ValueError
        Unknown kind or no layout files given.
    LayoutError
        Unreadable or malformed layout files (a DataError naming the file and line).
    """
    if kind == "procedural":
        return procedural_phantom(shape, voxel_size_m, seed)
    if kind != "layout":
        raise ValueError(f"phantom kind must be 'layout' or 'procedural', got {kind!r}")
    if layout_def is None or layout_lef is None:
        raise ValueError("a layout phantom needs layout_def and layout_lef")
    layout, tech = load_layout(layout_def, layout_lef)
    if crop_origin_um is None:
        crop_origin_um = centred_crop_origin(layout, shape, voxel_size_m)
    return rasterise_layout(layout, tech, crop_origin_um, shape, voxel_size_m, supersample)
