"""Projection-matching alignment kernels (no MPI: arrays in, arrays out).

Sign convention (DESIGN section 4): a projection displaced by ``s = (s_r, s_c)`` pixels
holds ``measured[r, c] = ideal[r - s_r, c - s_c]``; shifting it by ``-s`` aligns it.
"""

from hpc_adept.align.drift import fit_rigid_drift, remove_rigid_drift, rigid_drift_basis
from hpc_adept.align.estimate import optical_flow_update, structure_ratio, xcorr_shift
from hpc_adept.align.imaging import (
    bin_images,
    border_taper,
    crop_window,
    fourier_shift,
    highpass,
    highpass_with_gradient,
    lowpass,
    masked_highpass,
    reflected_highpass_with_gradient,
    shift_images,
    unbin_images,
)
from hpc_adept.align.matching import (
    AlignResult,
    LaminoOps,
    LocalLamino,
    SmoothCheck,
    projection_matching,
    working_frame,
)
from hpc_adept.align.precision import direction_bounds_px, shift_information
from hpc_adept.align.support import visible_support

__all__ = [
    "AlignResult",
    "LaminoOps",
    "LocalLamino",
    "SmoothCheck",
    "bin_images",
    "border_taper",
    "crop_window",
    "direction_bounds_px",
    "fit_rigid_drift",
    "fourier_shift",
    "highpass",
    "highpass_with_gradient",
    "lowpass",
    "masked_highpass",
    "optical_flow_update",
    "projection_matching",
    "reflected_highpass_with_gradient",
    "remove_rigid_drift",
    "rigid_drift_basis",
    "shift_images",
    "shift_information",
    "structure_ratio",
    "unbin_images",
    "visible_support",
    "working_frame",
    "xcorr_shift",
]
