"""Simulation kernels: far-field ptychography of a laminography projection."""

from hpc_adept.sim.ptychography import (
    detector_distance_m,
    diffraction_patterns,
    linear_phase,
    make_probe,
    object_from_projection,
    raster_positions,
    shift_image,
)

__all__ = [
    "detector_distance_m",
    "diffraction_patterns",
    "linear_phase",
    "make_probe",
    "object_from_projection",
    "raster_positions",
    "shift_image",
]
