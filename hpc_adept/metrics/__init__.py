"""Evaluation kernels (no MPI): GMM binarisation, BER, PCC, registration, PSD, circuit.

Arrays in, arrays out; :mod:`hpc_adept.stages.evaluate` combines them into ``metrics.json``.
"""

from hpc_adept.metrics.binarize import GmmBinarizer, fit_gmm, metal_posterior
from hpc_adept.metrics.circuit import (
    Connectivity,
    ViaScore,
    connectivity_errors,
    layer_errors,
    reference_labels,
    variation_of_information,
    via_scores,
)
from hpc_adept.metrics.psd import PsdCuts, power_spectrum, psd_cuts
from hpc_adept.metrics.register import (
    Registration,
    affine_fit,
    center_crop_slices,
    common_region,
    estimate_shift,
    register,
    restrict,
)
from hpc_adept.metrics.scores import (
    LayerExclusion,
    ZRange,
    ber,
    ber_per_layer,
    exclude_ambiguous_layers,
    layer_ranges,
    partly_filled_metal,
    pcc,
    pcc_per_layer,
)

__all__ = [
    "Connectivity",
    "ViaScore",
    "connectivity_errors",
    "layer_errors",
    "reference_labels",
    "variation_of_information",
    "via_scores",
    "GmmBinarizer",
    "LayerExclusion",
    "PsdCuts",
    "Registration",
    "ZRange",
    "affine_fit",
    "ber",
    "ber_per_layer",
    "center_crop_slices",
    "common_region",
    "estimate_shift",
    "exclude_ambiguous_layers",
    "partly_filled_metal",
    "fit_gmm",
    "layer_ranges",
    "metal_posterior",
    "pcc",
    "pcc_per_layer",
    "power_spectrum",
    "psd_cuts",
    "register",
    "restrict",
]
